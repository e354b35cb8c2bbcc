// The bench target over deltaserve's gRPC API: Models.GetModel/ListModels for the limits, a streamed
// TextGeneration.Generate of token ids per request.
#ifndef DELTASERVE_CLIENT_GRPC_BENCH_TARGET_H_
#define DELTASERVE_CLIENT_GRPC_BENCH_TARGET_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "client/bench_target.h"

namespace deltaserve::client {

std::unique_ptr<BenchTarget> MakeGrpcBenchTarget(std::shared_ptr<grpc::Channel> channel, std::string label);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_GRPC_BENCH_TARGET_H_
