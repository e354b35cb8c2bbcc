// A profiled window (LibTorch's Kineto profiler, CUPTI on CUDA) summarised for the benchmarks' JSON lines:
// GPU events, their summed and busy time, gaps, host runtime calls, graph launches and the top kernels.
#ifndef DELTASERVE_BENCH_KERNEL_PROFILE_H_
#define DELTASERVE_BENCH_KERNEL_PROFILE_H_

#include <torch/csrc/autograd/profiler_kineto.h>

#include <functional>
#include <memory>
#include <string>

namespace deltaserve::bench {

// Runs `work` under the Kineto profiler (CPU activity, plus CUDA's when `cuda`) and returns what it recorded.
// Whatever `work` leaves running on the device should be waited for inside it.
std::unique_ptr<torch::autograd::profiler::ProfilerResult> ProfileWindow(bool cuda, const std::function<void()>& work);

// The summary as the fields of a JSON object, without braces: "gpu_events": N, ..., "top_kernels":
// [[name, count, us], ...] (the `top` kernels taking the most time, names cut to 80 characters).
std::string ProfileSummaryFields(const torch::autograd::profiler::ProfilerResult& result, int top = 10);

}  // namespace deltaserve::bench

#endif  // DELTASERVE_BENCH_KERNEL_PROFILE_H_
