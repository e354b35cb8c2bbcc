// bench_linear: the small-batch linear kernel (kernels::Linear) against at::linear (cuBLAS) on the
// projections of a Qwen3.5-0.8B decode step, for the row counts it takes, in the same process: GPU time
// per call, the weight bytes read per second, and the ratio. Each side runs `reps` calls captured in one
// CUDA graph (as in the decode step, so host launch cost is not measured) over enough copies of the
// weight that they are read from HBM, not L2. With the norm folded in ("+norm" rows), the baseline is
// the norm kernel then cuBLAS. CUDA only (on the CPU both are at::linear).
//   bench_linear [--reps R]      JSON lines on stdout, a table on stderr
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "deltaserve/kernels/linear.h"
#include "deltaserve/kernels/rms_norm.h"

#ifdef DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

int main(int argc, char** argv) {
  int reps = 200;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_linear [--reps R]\n");
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
#ifdef DELTASERVE_WITH_CUDA
  if (c10::cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_linear: no CUDA device; nothing to compare\n");
    return 0;
  }
  using deltaserve::kernels::Linear;
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  // (name, N, K) of the 0.8B model: GDN in/out projections, attention q/kv/o, MLP gate-up/down, lm_head.
  const std::vector<std::tuple<const char*, int64_t, int64_t>> shapes = {
      {"gdn_in_proj", 8224, 1024}, {"gdn_out_proj", 1024, 2048}, {"attn_q_proj", 4096, 1024},
      {"attn_kv_proj", 1024, 1024}, {"attn_o_proj", 1024, 2048}, {"mlp_gate_up", 7168, 1024},
      {"mlp_down", 1024, 3584},     {"lm_head", 248320, 1024}};
  // Microseconds per call of f(i), i = 0 .. reps-1, replayed from one CUDA graph on a side stream.
  auto time_us = [&](const std::function<void(int)>& f) {
    const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
    const c10::cuda::CUDAStreamGuard guard(stream);
    for (int i = 0; i < 3; ++i) f(i);
    at::cuda::CUDAGraph graph;
    graph.capture_begin();
    for (int i = 0; i < reps; ++i) f(i);
    graph.capture_end();
    graph.replay();
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record(stream);
    graph.replay();
    stop.record(stream);
    stop.synchronize();
    return start.elapsed_time(stop) * 1000.0 / reps;
  };
  constexpr int64_t kRotateBytes = int64_t{512} << 20;  // well past the L2 (50 MB on an H100)
  std::fprintf(stderr, "%-14s %6s %6s %4s %12s %12s %8s %10s\n", "shape", "N", "K", "rows", "small us", "cublas us",
               "ratio", "GB/s");
  auto report = [&](const char* name, int64_t n, int64_t k, int64_t rows, double ours, double base) {
    const double gbs = static_cast<double>(n * k * 2) / (ours * 1e3);
    std::printf(
        "{\"bench\": \"linear\", \"shape\": \"%s\", \"n\": %lld, \"k\": %lld, \"rows\": %lld, \"small_batch_us\": "
        "%.2f, \"cublas_us\": %.2f, \"ratio\": %.3f, \"weight_gb_s\": %.0f}\n",
        name, static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(rows), ours, base,
        base / ours, gbs);
    std::fprintf(stderr, "%-14s %6lld %6lld %4lld %12.2f %12.2f %7.2fx %10.0f\n", name, static_cast<long long>(n),
                 static_cast<long long>(k), static_cast<long long>(rows), ours, base, base / ours, gbs);
  };
  for (const auto& [name, n, k] : shapes) {
    const int64_t copies = std::max<int64_t>(1, std::min<int64_t>(reps, kRotateBytes / (n * k * 2)));
    std::vector<at::Tensor> ws;
    for (int64_t c = 0; c < copies; ++c) ws.push_back(at::randn({n, k}, bf16));
    auto w_of = [&](int i) -> const at::Tensor& { return ws[i % copies]; };
    for (int64_t rows = 1; rows <= deltaserve::kernels::kSmallBatchLinearMaxRows; ++rows) {
      at::Tensor x = at::randn({rows, k}, bf16);
      report(name, n, k, rows, time_us([&](int i) { (void)Linear(x, w_of(i)); }),
             time_us([&](int i) { (void)at::linear(x, w_of(i)); }));
      if (k == 1024) {  // the projections that read the normalised residual stream
        at::Tensor norm_w = at::randn({k}, bf16) * 0.1;
        const std::string fused = std::string(name) + "+norm";
        report(fused.c_str(), n, k, rows,
               time_us([&](int i) { (void)deltaserve::kernels::RmsNormLinear(x, norm_w, 1e-6, w_of(i)); }),
               time_us([&](int i) {
                 (void)at::linear(*deltaserve::kernels::RmsNorm(x, norm_w, 1e-6), w_of(i));
               }));
      }
    }
  }
  return 0;
#else
  (void)reps;
  std::fprintf(stderr, "bench_linear: built without CUDA; nothing to compare\n");
  return 0;
#endif
}
