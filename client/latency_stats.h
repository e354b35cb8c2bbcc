// Summaries of latency samples as serving benchmarks report them: mean and percentiles with linear
// interpolation between order statistics (numpy's default), so figures compare with vLLM's benchmark.
#ifndef DELTASERVE_CLIENT_LATENCY_STATS_H_
#define DELTASERVE_CLIENT_LATENCY_STATS_H_

#include <cstdint>
#include <vector>

namespace deltaserve::client {

// The q-th percentile (0..100) of `samples`; 0 for no samples.
double Percentile(std::vector<double> samples, double q);

struct LatencySummary {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
  int64_t count = 0;
};
LatencySummary Summarize(const std::vector<double>& samples);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_LATENCY_STATS_H_
