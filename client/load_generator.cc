// The load generator (see load_generator.h). One thread per concurrent stream, each taking the next
// request index; with a request rate, a request also waits for its precomputed Poisson arrival time.
#include "client/load_generator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"

namespace deltaserve::client {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct PlannedRequest {
  v1::GenerateRequest request;
  double arrival = 0;  // seconds after the start
};

int DrawLength(std::mt19937_64& rng, int mean, double ratio, int cap) {
  const int lo = std::max(1, static_cast<int>(std::floor(mean * (1 - ratio))));
  const int hi = std::max(lo, static_cast<int>(std::ceil(mean * (1 + ratio))));
  return std::min(cap, std::uniform_int_distribution<int>(lo, hi)(rng));
}

absl::StatusOr<v1::ModelInfo> LookUpModel(const std::shared_ptr<grpc::Channel>& channel, const std::string& name) {
  auto stub = v1::Models::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetModelRequest req;
  req.set_name(name);
  if (name.empty()) {
    v1::ListModelsResponse list;
    const grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &list);
    if (!s.ok()) return absl::UnavailableError(absl::StrCat("ListModels failed: ", s.error_message()));
    for (const v1::ModelInfo& m : list.models())
      if (m.name() == list.default_model()) return m;
    return absl::NotFoundError("the server serves no models");
  }
  v1::ModelInfo info;
  const grpc::Status s = stub->GetModel(&ctx, req, &info);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return info;
}

std::vector<PlannedRequest> Plan(const BenchOptions& o, const v1::ModelInfo& model, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int max_prompt = std::max(1, model.limits().max_prompt_tokens() > 0 ? model.limits().max_prompt_tokens()
                                                                             : model.max_model_len() - 1);
  std::vector<PlannedRequest> plan(static_cast<size_t>(count));
  std::exponential_distribution<double> gap(o.request_rate > 0 ? o.request_rate : 1.0);
  double t = 0;
  for (PlannedRequest& p : plan) {
    const int in = DrawLength(rng, o.input_len, o.range_ratio, max_prompt);
    const int out = DrawLength(rng, o.output_len, o.range_ratio, std::max(1, model.max_model_len() - in));
    std::uniform_int_distribution<int32_t> id(0, std::max(1, model.vocab_size()) - 1);
    p.request.set_model(model.name());
    for (int i = 0; i < in; ++i) p.request.mutable_token_ids()->add_ids(id(rng));
    v1::SamplingParams* s = p.request.mutable_sampling();
    s->set_temperature(o.temperature);
    s->set_max_tokens(out);
    s->set_ignore_eos(true);
    s->set_seed(rng());
    if (o.request_rate > 0) t += gap(rng);
    p.arrival = t;
  }
  return plan;
}

RequestRecord RunOne(v1::TextGeneration::Stub& stub, const v1::GenerateRequest& request, double timeout) {
  RequestRecord r;
  r.prompt_tokens = request.token_ids().ids_size();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::microseconds(static_cast<int64_t>(timeout * 1e6)));
  const Clock::time_point start = Clock::now();
  Clock::time_point last = start;
  auto reader = stub.Generate(&ctx, request);
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

}  // namespace

absl::StatusOr<BenchResult> RunBench(const std::shared_ptr<grpc::Channel>& channel, const BenchOptions& options) {
  if (options.num_requests < 1) return absl::InvalidArgumentError("num_requests must be at least 1");
  if (options.concurrency < 1) return absl::InvalidArgumentError("concurrency must be at least 1");
  if (options.input_len < 1 || options.output_len < 1)
    return absl::InvalidArgumentError("input_len and output_len must be at least 1");
  if (options.range_ratio < 0 || options.range_ratio >= 1)
    return absl::InvalidArgumentError("range_ratio must be in [0, 1)");
  if (options.request_rate < 0) return absl::InvalidArgumentError("request_rate must be >= 0");
  absl::StatusOr<v1::ModelInfo> model = LookUpModel(channel, options.model);
  if (!model.ok()) return model.status();

  auto stub = v1::TextGeneration::NewStub(channel);
  for (const PlannedRequest& w : Plan(options, *model, options.warmup_requests, options.seed ^ 0x5eedULL)) {
    const RequestRecord r = RunOne(*stub, w.request, options.timeout_seconds);
    if (!r.ok) return absl::UnavailableError(absl::StrCat("the warm-up request failed: ", r.error));
  }

  const std::vector<PlannedRequest> plan = Plan(options, *model, options.num_requests, options.seed);
  BenchResult result;
  result.options = options;
  result.requests.resize(plan.size());
  std::atomic<int> next{0};
  int done = 0;
  std::mutex progress_mu;
  const Clock::time_point start = Clock::now();
  auto worker = [&] {
    for (int i = next++; i < static_cast<int>(plan.size()); i = next++) {
      std::this_thread::sleep_until(start + std::chrono::microseconds(static_cast<int64_t>(plan[i].arrival * 1e6)));
      result.requests[static_cast<size_t>(i)] = RunOne(*stub, plan[i].request, options.timeout_seconds);
      std::lock_guard<std::mutex> lock(progress_mu);
      ++done;
      if (options.on_progress) options.on_progress(done, static_cast<int>(plan.size()));
    }
  };
  std::vector<std::thread> threads;
  const int n = std::min(options.concurrency, options.num_requests);
  for (int t = 0; t < n; ++t) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  result.duration_seconds = Seconds(Clock::now() - start);
  return result;
}

}  // namespace deltaserve::client
