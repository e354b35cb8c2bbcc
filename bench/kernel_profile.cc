// See kernel_profile.h.
#include "kernel_profile.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

namespace deltaserve::bench {

std::unique_ptr<torch::autograd::profiler::ProfilerResult> ProfileWindow(bool cuda, const std::function<void()>& work) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  std::set<ActivityType> activities{ActivityType::CPU};
  if (cuda) activities.insert(ActivityType::CUDA);
  const prof::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  work();
  return prof::disableProfiler();
}

std::string ProfileSummaryFields(const torch::autograd::profiler::ProfilerResult& result, int top) {
  std::vector<std::pair<uint64_t, uint64_t>> gpu;
  std::map<std::string, std::pair<int, double>> by_kernel;  // name -> (count, microseconds)
  int runtime_calls = 0, graph_launches = 0, cpu_ops = 0;
  double kernel_us = 0;
  for (const auto& e : result.events()) {
    if (e.deviceType() == c10::DeviceType::CUDA) {
      gpu.emplace_back(e.startNs(), e.endNs());
      kernel_us += e.durationNs() / 1e3;
      auto& k = by_kernel[e.name().substr(0, 80)];
      k.first += 1;
      k.second += e.durationNs() / 1e3;
    } else if (e.name().rfind("cuda", 0) == 0) {
      ++runtime_calls;
      if (e.name().rfind("cudaGraphLaunch", 0) == 0) ++graph_launches;
    } else if (e.name().rfind("aten::", 0) == 0) {
      ++cpu_ops;  // ATen operators dispatched on the host (nested ones counted too)
    }
  }
  // Busy time: the union of the GPU events' intervals; the gaps are the rest of their span.
  std::sort(gpu.begin(), gpu.end());
  double busy_us = 0, span_us = 0;
  uint64_t cur_s = 0, cur_e = 0;
  for (const auto& [a, b] : gpu) {
    if (cur_e == 0 || a > cur_e) {
      busy_us += (cur_e - cur_s) / 1e3;
      cur_s = a;
      cur_e = b;
    } else {
      cur_e = std::max(cur_e, b);
    }
  }
  busy_us += (cur_e - cur_s) / 1e3;
  if (!gpu.empty()) span_us = (cur_e - gpu.front().first) / 1e3;
  std::vector<std::tuple<double, int, std::string>> ranked;  // (us, count, name)
  for (const auto& [name, v] : by_kernel) ranked.emplace_back(v.second, v.first, name);
  std::sort(ranked.rbegin(), ranked.rend());
  std::string top_json;
  for (size_t i = 0; i < ranked.size() && static_cast<int>(i) < top; ++i) {
    auto [us, count, name] = ranked[i];
    for (char& c : name)
      if (c == '"' || c == '\\') c = '\'';
    top_json += (i ? ", " : "") + std::string("[\"") + name + "\", " + std::to_string(count) + ", " +
                std::to_string(us) + "]";
  }
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "\"gpu_events\": %zu, \"gpu_time_us\": %.1f, \"gpu_busy_us\": %.1f, \"gpu_span_us\": %.1f, "
                "\"gpu_gaps_us\": %.1f, \"cuda_runtime_calls\": %d, \"graph_launches\": %d, \"aten_ops\": %d, ",
                gpu.size(), kernel_us, busy_us, span_us, span_us - busy_us, runtime_calls, graph_launches, cpu_ops);
  return std::string(buf) + "\"top_kernels\": [" + top_json + "]";
}

}  // namespace deltaserve::bench
