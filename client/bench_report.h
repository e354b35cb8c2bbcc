// The figures of a `deltaserve-cli bench` run, named and computed as vLLM's serving benchmark does
// (throughputs, TTFT, TPOT, ITL and end-to-end latency in ms), printed as a table or written as JSON.
#ifndef DELTASERVE_CLIENT_BENCH_REPORT_H_
#define DELTASERVE_CLIENT_BENCH_REPORT_H_

#include <nlohmann/json.hpp>
#include <string>

#include "client/latency_stats.h"
#include "client/load_generator.h"

namespace deltaserve::client {

struct BenchReport {
  int completed = 0, failed = 0;
  int64_t total_input_tokens = 0, total_output_tokens = 0;
  double duration_s = 0;
  double request_throughput = 0, output_throughput = 0, total_token_throughput = 0;  // per second
  // Milliseconds. TPOT: per request, (e2e - ttft) / (output tokens - 1), requests of 2+ tokens.
  LatencySummary ttft_ms, tpot_ms, itl_ms, e2el_ms;
  std::string first_error;  // of the first failed request, to show why
};

BenchReport MakeReport(const BenchResult& result);
std::string FormatTable(const BenchReport& report, const BenchOptions& options);
// Flat keys as vLLM writes them (mean_ttft_ms, p99_itl_ms, ...), plus the run's options.
nlohmann::json ToJson(const BenchReport& report, const BenchOptions& options);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_BENCH_REPORT_H_
