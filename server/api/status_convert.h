// Conversions between Abseil's absl::Status (what the engine, model and tokenizer return) and
// grpc::Status (what the services send); the canonical codes share their numeric values.
#ifndef DELTASERVE_SERVER_API_STATUS_CONVERT_H_
#define DELTASERVE_SERVER_API_STATUS_CONVERT_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace deltaserve::api {

grpc::StatusCode ToGrpcCode(absl::StatusCode code);
absl::StatusCode ToAbslCode(grpc::StatusCode code);

// Code and message carried over; payloads are dropped.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status ToAbslStatus(const grpc::Status& status);

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_STATUS_CONVERT_H_
