// See grpc_bench_target.h.
#include "client/grpc_bench_target.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"

namespace deltaserve::client {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

class GrpcBenchTarget : public BenchTarget {
 public:
  GrpcBenchTarget(std::shared_ptr<grpc::Channel> channel, std::string label)
      : channel_(std::move(channel)), stub_(v1::TextGeneration::NewStub(channel_)), label_(std::move(label)) {}

  absl::StatusOr<ServedModel> Describe(const std::string& name) override {
    absl::StatusOr<v1::ModelInfo> info = LookUp(name);
    if (!info.ok()) return info.status();
    ServedModel m;
    m.name = info->name();
    m.vocab_size = info->vocab_size();
    m.max_model_len = info->max_model_len();
    m.max_prompt_tokens = info->limits().max_prompt_tokens();
    return m;
  }

  RequestRecord Run(const BenchRequest& request, double timeout) override {
    v1::GenerateRequest req;
    req.set_model(request.model);
    for (int32_t id : request.prompt_ids) req.mutable_token_ids()->add_ids(id);
    v1::SamplingParams* s = req.mutable_sampling();
    s->set_temperature(request.temperature);
    s->set_max_tokens(request.max_tokens);
    s->set_ignore_eos(true);
    s->set_seed(request.seed);

    RequestRecord r;
    r.prompt_tokens = static_cast<int>(request.prompt_ids.size());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<int64_t>(timeout * 1e6)));
    const Clock::time_point start = Clock::now();
    Clock::time_point last = start;
    auto reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      if (resp.token_ids_size() == 0) continue;
      const Clock::time_point now = Clock::now();
      if (r.output_tokens == 0) {
        r.ttft = Seconds(now - start);
      } else {
        r.itl.push_back(Seconds(now - last));
      }
      last = now;
      r.output_tokens += resp.token_ids_size();
    }
    const grpc::Status status = reader->Finish();
    r.e2e = Seconds(Clock::now() - start);
    r.ok = status.ok();
    if (!r.ok) r.error = absl::StrCat("code ", static_cast<int>(status.error_code()), ": ", status.error_message());
    return r;
  }

  std::string Label() const override { return label_; }

 private:
  absl::StatusOr<v1::ModelInfo> LookUp(const std::string& name) {
    auto stub = v1::Models::NewStub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (name.empty()) {
      v1::ListModelsResponse list;
      const grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &list);
      if (!s.ok()) return absl::UnavailableError(absl::StrCat("ListModels failed: ", s.error_message()));
      for (const v1::ModelInfo& m : list.models())
        if (m.name() == list.default_model()) return m;
      return absl::NotFoundError("the server serves no models");
    }
    v1::GetModelRequest req;
    req.set_name(name);
    v1::ModelInfo info;
    const grpc::Status s = stub->GetModel(&ctx, req, &info);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return info;
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::TextGeneration::Stub> stub_;
  std::string label_;
};

}  // namespace

std::unique_ptr<BenchTarget> MakeGrpcBenchTarget(std::shared_ptr<grpc::Channel> channel, std::string label) {
  return std::make_unique<GrpcBenchTarget>(std::move(channel), std::move(label));
}

}  // namespace deltaserve::client
