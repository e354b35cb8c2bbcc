// The serving load generator behind `deltaserve-cli bench`: replays N requests with random token
// prompts of given length distributions against a BenchTarget, at a fixed concurrency and optional
// Poisson request rate.
#ifndef DELTASERVE_CLIENT_LOAD_GENERATOR_H_
#define DELTASERVE_CLIENT_LOAD_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/bench_target.h"

namespace deltaserve::client {

struct BenchOptions {
  std::string model;           // "" = the server's default model
  int num_requests = 64;
  int concurrency = 4;         // requests in flight at most
  double request_rate = 0;     // requests/s with Poisson arrivals; 0 = send as fast as concurrency allows
  int input_len = 128;         // prompt tokens (mean)
  int output_len = 64;         // generated tokens (mean); ignore_eos makes it exact per request
  double range_ratio = 0;      // lengths uniform in [len * (1 - r), len * (1 + r)], as vLLM's random set
  uint64_t seed = 0;           // prompts, lengths and arrival times
  double temperature = 0;
  double timeout_seconds = 600;  // per request deadline
  int warmup_requests = 1;       // run (untimed) before the measured ones
  // Called after each finished measured request with (done, total), one call at a time; for progress.
  std::function<void(int, int)> on_progress;
};

struct BenchResult {
  BenchOptions options;
  double duration_seconds = 0;  // first send to last finish
  std::vector<RequestRecord> requests;
};

// Asks the target for the model's limits (prompts are random ids below its vocabulary), then runs the
// load. Fails only when the server cannot be reached, the model is unknown or the warm-up request
// fails; failed measured requests are recorded.
absl::StatusOr<BenchResult> RunBench(BenchTarget& target, const BenchOptions& options);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_LOAD_GENERATOR_H_
