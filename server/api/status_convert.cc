#include "api/status_convert.h"

#include <string>

namespace deltaserve::api {

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  const int c = static_cast<int>(code);
  // Both follow google.rpc.Code: 0 (OK) .. 16 (UNAUTHENTICATED).
  if (c < 0 || c > 16) return grpc::StatusCode::UNKNOWN;
  return static_cast<grpc::StatusCode>(c);
}

absl::StatusCode ToAbslCode(grpc::StatusCode code) {
  const int c = static_cast<int>(code);
  if (c < 0 || c > 16) return absl::StatusCode::kUnknown;
  return static_cast<absl::StatusCode>(c);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()));
}

absl::Status ToAbslStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(ToAbslCode(status.error_code()), status.error_message());
}

}  // namespace deltaserve::api
