// Benchmark figures from the per-request records (see bench_report.h).
#include "client/bench_report.h"

#include "absl/strings/str_format.h"

namespace deltaserve::client {
namespace {

std::vector<double> Ms(std::vector<double> seconds) {
  for (double& s : seconds) s *= 1e3;
  return seconds;
}

void AddSummary(nlohmann::json& j, const std::string& name, const LatencySummary& s) {
  j["mean_" + name + "_ms"] = s.mean;
  j["median_" + name + "_ms"] = s.p50;
  j["p90_" + name + "_ms"] = s.p90;
  j["p99_" + name + "_ms"] = s.p99;
  j["max_" + name + "_ms"] = s.max;
}

}  // namespace

BenchReport MakeReport(const BenchResult& result) {
  BenchReport r;
  std::vector<double> ttft, tpot, itl, e2el;
  for (const RequestRecord& q : result.requests) {
    if (!q.ok) {
      ++r.failed;
      if (r.first_error.empty()) r.first_error = q.error;
      continue;
    }
    ++r.completed;
    r.total_input_tokens += q.prompt_tokens;
    r.total_output_tokens += q.output_tokens;
    ttft.push_back(q.ttft);
    e2el.push_back(q.e2e);
    itl.insert(itl.end(), q.itl.begin(), q.itl.end());
    if (q.output_tokens > 1) tpot.push_back((q.e2e - q.ttft) / (q.output_tokens - 1));
  }
  r.duration_s = result.duration_seconds;
  if (r.duration_s > 0) {
    r.request_throughput = r.completed / r.duration_s;
    r.output_throughput = static_cast<double>(r.total_output_tokens) / r.duration_s;
    r.total_token_throughput = static_cast<double>(r.total_input_tokens + r.total_output_tokens) / r.duration_s;
  }
  r.ttft_ms = Summarize(Ms(ttft));
  r.tpot_ms = Summarize(Ms(tpot));
  r.itl_ms = Summarize(Ms(itl));
  r.e2el_ms = Summarize(Ms(e2el));
  return r;
}

std::string FormatTable(const BenchReport& r, const BenchOptions& o) {
  std::string out = absl::StrFormat(
      "============ Serving Benchmark Result ============\n"
      "%-40s %10d\n%-40s %10d\n%-40s %10d\n%-40s %10s\n%-40s %10.2f\n%-40s %10d\n%-40s %10d\n"
      "%-40s %10.2f\n%-40s %10.2f\n%-40s %10.2f\n",
      "Successful requests:", r.completed, "Failed requests:", r.failed, "Maximum concurrency:", o.concurrency,
      "Request rate (req/s):", o.request_rate > 0 ? absl::StrFormat("%.2f", o.request_rate) : "inf",
      "Benchmark duration (s):", r.duration_s, "Total input tokens:", r.total_input_tokens,
      "Total generated tokens:", r.total_output_tokens, "Request throughput (req/s):", r.request_throughput,
      "Output token throughput (tok/s):", r.output_throughput,
      "Total token throughput (tok/s):", r.total_token_throughput);
  auto block = [&out](const char* title, const char* key, const LatencySummary& s) {
    out += absl::StrFormat("%s\n", std::string("---------------") + title + std::string("---------------"));
    out += absl::StrFormat("%-40s %10.2f\n%-40s %10.2f\n%-40s %10.2f\n%-40s %10.2f\n",
                           absl::StrFormat("Mean %s (ms):", key), s.mean, absl::StrFormat("P50 %s (ms):", key),
                           s.p50, absl::StrFormat("P90 %s (ms):", key), s.p90,
                           absl::StrFormat("P99 %s (ms):", key), s.p99);
  };
  block("Time to First Token", "TTFT", r.ttft_ms);
  block("Time per Output Token (excl. 1st token)", "TPOT", r.tpot_ms);
  block("Inter-token Latency", "ITL", r.itl_ms);
  block("End-to-end Latency", "E2EL", r.e2el_ms);
  out += "==================================================\n";
  if (!r.first_error.empty()) out += "First failure: " + r.first_error + "\n";
  return out;
}

nlohmann::json ToJson(const BenchReport& r, const BenchOptions& o) {
  nlohmann::json j;
  j["model"] = o.model;
  j["num_prompts"] = o.num_requests;
  j["max_concurrency"] = o.concurrency;
  j["request_rate"] = o.request_rate > 0 ? nlohmann::json(o.request_rate) : nlohmann::json("inf");
  j["input_len"] = o.input_len;
  j["output_len"] = o.output_len;
  j["range_ratio"] = o.range_ratio;
  j["seed"] = o.seed;
  j["completed"] = r.completed;
  j["failed"] = r.failed;
  j["duration"] = r.duration_s;
  j["total_input_tokens"] = r.total_input_tokens;
  j["total_output_tokens"] = r.total_output_tokens;
  j["request_throughput"] = r.request_throughput;
  j["output_throughput"] = r.output_throughput;
  j["total_token_throughput"] = r.total_token_throughput;
  AddSummary(j, "ttft", r.ttft_ms);
  AddSummary(j, "tpot", r.tpot_ms);
  AddSummary(j, "itl", r.itl_ms);
  AddSummary(j, "e2el", r.e2el_ms);
  if (!r.first_error.empty()) j["first_error"] = r.first_error;
  return j;
}

}  // namespace deltaserve::client
