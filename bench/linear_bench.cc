// bench_linear: the small-batch linear kernel (kernels::Linear) against at::linear (cuBLAS) on the
// projections of a Qwen3.5-0.8B decode step, 1 to 8 rows of bf16, in the same process: time per call,
// the weight bytes read per second, and the ratio. CUDA only (on the CPU both are at::linear).
//   bench_linear [--reps R]      JSON lines on stdout, a table on stderr
#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "deltaserve/kernels/linear.h"

#ifdef DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
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
  auto time_us = [&](const std::function<void()>& f) {
    for (int i = 0; i < 10; ++i) f();
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    start.record();
    for (int i = 0; i < reps; ++i) f();
    stop.record();
    stop.synchronize();
    return start.elapsed_time(stop) * 1000.0 / reps;
  };
  std::fprintf(stderr, "%-14s %6s %6s %4s %12s %12s %8s %10s\n", "shape", "N", "K", "rows", "small us", "cublas us",
               "ratio", "GB/s");
  for (const auto& [name, n, k] : shapes) {
    at::Tensor w = at::randn({n, k}, bf16);
    for (int64_t rows : {1, 2, 4, 8}) {
      at::Tensor x = at::randn({rows, k}, bf16);
      const double ours = time_us([&] { (void)Linear(x, w); });
      const double cublas = time_us([&] { (void)at::linear(x, w); });
      const double gbs = static_cast<double>(n * k * 2) / (ours * 1e3);
      std::printf(
          "{\"bench\": \"linear\", \"shape\": \"%s\", \"n\": %lld, \"k\": %lld, \"rows\": %lld, \"small_batch_us\": "
          "%.2f, \"cublas_us\": %.2f, \"ratio\": %.3f, \"weight_gb_s\": %.0f}\n",
          name, static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(rows), ours, cublas,
          cublas / ours, gbs);
      std::fprintf(stderr, "%-14s %6lld %6lld %4lld %12.2f %12.2f %7.2fx %10.0f\n", name, static_cast<long long>(n),
                   static_cast<long long>(k), static_cast<long long>(rows), ours, cublas, cublas / ours, gbs);
    }
  }
  return 0;
#else
  (void)reps;
  std::fprintf(stderr, "bench_linear: built without CUDA; nothing to compare\n");
  return 0;
#endif
}
