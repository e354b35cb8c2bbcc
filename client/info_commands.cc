// models and health, and the helpers every command shares (channel, timeout, one-line failures).
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "client/channel.h"
#include "client/commands.h"
#include "client/flags.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "health_probe.grpc.pb.h"

namespace deltaserve::client {
namespace {

constexpr double kInfoTimeout = 10;

double InfoTimeout() {
  const double t = absl::GetFlag(FLAGS_timeout);
  return t > 0 ? t : kInfoTimeout;
}

std::string ToJsonText(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

}  // namespace

std::string BearerToken() {
  std::string token = absl::GetFlag(FLAGS_token);
  if (token.empty() && !absl::GetFlag(FLAGS_token_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_token_file));
    if (!in || !std::getline(in, token) || token.empty()) {
      std::fprintf(stderr, "deltaserve-cli: --token-file: cannot read a token from %s\n",
                   absl::GetFlag(FLAGS_token_file).c_str());
      std::exit(2);
    }
  }
  return token;
}

std::shared_ptr<grpc::Channel> ServerChannel() {
  ChannelOptions o;
  o.target = absl::GetFlag(FLAGS_server);
  o.tls = absl::GetFlag(FLAGS_tls);
  o.ca = absl::GetFlag(FLAGS_tls_ca);
  o.cert = absl::GetFlag(FLAGS_tls_cert);
  o.key = absl::GetFlag(FLAGS_tls_key);
  o.token = BearerToken();
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(o);
  if (!channel.ok()) {
    std::fprintf(stderr, "deltaserve-cli: %s\n", std::string(channel.status().message()).c_str());
    std::exit(2);
  }
  return *channel;
}

void SetTimeout(grpc::ClientContext& ctx, double seconds) {
  if (seconds > 0)
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
}

int ReportFailure(const std::string& what, const grpc::Status& status) {
  // gRPC's codes share absl's numeric values; the name is "" for a value outside both.
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  if (name.empty()) name = "UNKNOWN";
  std::fprintf(stderr, "deltaserve-cli %s: %s: %s%s\n", what.c_str(), name.c_str(), status.error_message().c_str(),
               status.error_code() == grpc::StatusCode::UNAVAILABLE
                   ? absl::StrFormat(" (is a server listening on %s?)", absl::GetFlag(FLAGS_server)).c_str()
                   : "");
  return 1;
}

int RunModels(const std::vector<std::string>& args) {
  auto stub = v1::Models::NewStub(ServerChannel());
  grpc::ClientContext ctx;
  SetTimeout(ctx, InfoTimeout());
  if (args.size() > 1) {
    std::fprintf(stderr, "deltaserve-cli models: at most one model name\n");
    return 2;
  }
  if (args.size() == 1) {
    v1::GetModelRequest req;
    req.set_name(args[0]);
    v1::ModelInfo info;
    const grpc::Status s = stub->GetModel(&ctx, req, &info);
    if (!s.ok()) return ReportFailure("models", s);
    std::printf("%s\n", ToJsonText(info).c_str());
    return 0;
  }
  v1::ListModelsResponse list;
  const grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &list);
  if (!s.ok()) return ReportFailure("models", s);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", ToJsonText(list).c_str());
    return 0;
  }
  std::printf("%-20s %-20s %-15s %-9s %-7s %-17s %-11s %8s %6s %s\n", "NAME", "ARCH", "LAYERS lin/full", "DTYPE",
              "DEVICE", "INVERSE", "STATE", "MAX_LEN", "SLOTS", "READY");
  for (const v1::ModelInfo& m : list.models()) {
    std::printf("%-20s %-20s %6d/%-8d %-9s %-7s %-17s %-11s %8d %6d %s%s\n", m.name().c_str(),
                m.architecture().c_str(), m.layer_types().linear_attention(), m.layer_types().full_attention(),
                m.dtype().c_str(), m.device().c_str(), m.inverse_method().c_str(), m.state_dtype().c_str(),
                m.max_model_len(), m.max_num_seqs(), m.ready() ? "yes" : "no",
                m.name() == list.default_model() ? "  (default)" : "");
  }
  return 0;
}

int RunHealth(const std::vector<std::string>& args) {
  const auto channel = ServerChannel();
  std::vector<std::string> services = args;
  if (services.empty()) {
    services.push_back("");
    auto models = v1::Models::NewStub(channel);
    grpc::ClientContext ctx;
    SetTimeout(ctx, InfoTimeout());
    v1::ListModelsResponse list;
    if (models->ListModels(&ctx, v1::ListModelsRequest(), &list).ok())
      for (const v1::ModelInfo& m : list.models()) services.push_back(m.name());
  }
  auto health = grpc::health::v1::Health::NewStub(channel);
  bool all_serving = true;
  for (const std::string& service : services) {
    grpc::ClientContext ctx;
    SetTimeout(ctx, InfoTimeout());
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    const grpc::Status s = health->Check(&ctx, req, &resp);
    const std::string label = service.empty() ? "server" : "model " + service;
    if (!s.ok()) {
      all_serving = false;
      ReportFailure("health (" + label + ")", s);
      continue;
    }
    const bool serving = resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    all_serving = all_serving && serving;
    std::printf("%-30s %s\n", label.c_str(), grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  }
  return all_serving ? 0 : 1;
}

}  // namespace deltaserve::client
