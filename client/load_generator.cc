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

namespace deltaserve::client {
namespace {

using Clock = std::chrono::steady_clock;

struct PlannedRequest {
  BenchRequest request;
  double arrival = 0;  // seconds after the start
};

int DrawLength(std::mt19937_64& rng, int mean, double ratio, int cap) {
  const int lo = std::max(1, static_cast<int>(std::floor(mean * (1 - ratio))));
  const int hi = std::max(lo, static_cast<int>(std::ceil(mean * (1 + ratio))));
  return std::min(cap, std::uniform_int_distribution<int>(lo, hi)(rng));
}

std::vector<PlannedRequest> Plan(const BenchOptions& o, const ServedModel& model, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int max_prompt = std::max(1, model.max_prompt_tokens > 0 ? model.max_prompt_tokens : model.max_model_len - 1);
  std::vector<PlannedRequest> plan(static_cast<size_t>(count));
  std::exponential_distribution<double> gap(o.request_rate > 0 ? o.request_rate : 1.0);
  double t = 0;
  for (PlannedRequest& p : plan) {
    const int in = DrawLength(rng, o.input_len, o.range_ratio, max_prompt);
    const int out = DrawLength(rng, o.output_len, o.range_ratio, std::max(1, model.max_model_len - in));
    std::uniform_int_distribution<int32_t> id(0, std::max(1, model.vocab_size) - 1);
    p.request.model = model.name;
    p.request.prompt_ids.resize(static_cast<size_t>(in));
    for (int32_t& t_id : p.request.prompt_ids) t_id = id(rng);
    p.request.temperature = o.temperature;
    p.request.max_tokens = out;
    p.request.seed = rng();
    if (o.request_rate > 0) t += gap(rng);
    p.arrival = t;
  }
  return plan;
}

}  // namespace

absl::StatusOr<BenchResult> RunBench(BenchTarget& target, const BenchOptions& options) {
  if (options.num_requests < 1) return absl::InvalidArgumentError("num_requests must be at least 1");
  if (options.concurrency < 1) return absl::InvalidArgumentError("concurrency must be at least 1");
  if (options.input_len < 1 || options.output_len < 1)
    return absl::InvalidArgumentError("input_len and output_len must be at least 1");
  if (options.range_ratio < 0 || options.range_ratio >= 1)
    return absl::InvalidArgumentError("range_ratio must be in [0, 1)");
  if (options.request_rate < 0) return absl::InvalidArgumentError("request_rate must be >= 0");
  absl::StatusOr<ServedModel> model = target.Describe(options.model);
  if (!model.ok()) return model.status();
  if (model->vocab_size < 1 || model->max_model_len < 2)
    return absl::FailedPreconditionError(absl::StrCat("the server reports vocab_size ", model->vocab_size,
                                                      " and max_model_len ", model->max_model_len,
                                                      " for model ", model->name));

  for (const PlannedRequest& w : Plan(options, *model, options.warmup_requests, options.seed ^ 0x5eedULL)) {
    const RequestRecord r = target.Run(w.request, options.timeout_seconds);
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
      result.requests[static_cast<size_t>(i)] = target.Run(plan[i].request, options.timeout_seconds);
      std::lock_guard<std::mutex> lock(progress_mu);
      ++done;
      if (options.on_progress) options.on_progress(done, static_cast<int>(plan.size()));
    }
  };
  std::vector<std::thread> threads;
  const int n = std::min(options.concurrency, options.num_requests);
  for (int t = 0; t < n; ++t) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  result.duration_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace deltaserve::client
