// bench_linear: the small-batch linear kernels (kernels::Linear) against at::linear on the projections of
// a Qwen3.5-0.8B decode step, for the row counts they take, in the same process: time per call, the
// weight bytes read per second, and the ratio.
//   CUDA (default when a GPU is present): the bf16 kernel against cuBLAS, each side `reps` calls captured in
//   one CUDA graph (as in the decode step, so host launch cost is not measured) over enough copies of the
//   weight that they are read from HBM, not L2; with the norm folded in ("+norm" rows), the baseline is the
//   norm kernel then cuBLAS.
//   CPU (--device cpu): the CPU GEMV against at::linear (MKL), fp32 and bf16 weights, with --threads
//   intra-op threads, wall time per call over copies of the weight that overflow the caches, for the row
//   counts of --rows (a decode step of that many sequences; past the GEMV's limit both sides are at::linear).
//   bench_linear [--device cpu|cuda] [--reps R] [--threads T] [--rows 1,2,4,8,16]
//   JSON lines on stdout, a table on stderr
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>

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

namespace {

// (name, N, K) of the 0.8B model: GDN in/out projections, attention q/kv/o, MLP gate-up/down, lm_head.
const std::vector<std::tuple<const char*, int64_t, int64_t>>& Shapes() {
  static const std::vector<std::tuple<const char*, int64_t, int64_t>> shapes = {
      {"gdn_in_proj", 8224, 1024}, {"gdn_out_proj", 1024, 2048}, {"attn_q_proj", 4096, 1024},
      {"attn_kv_proj", 1024, 1024}, {"attn_o_proj", 1024, 2048}, {"mlp_gate_up", 7168, 1024},
      {"mlp_down", 1024, 3584},     {"lm_head", 248320, 1024}};
  return shapes;
}

// The CPU GEMV against at::linear (MKL): microseconds per call, alternating the two sides in rounds so
// that drift in the machine's speed lands on both.
int RunCpu(int reps, const std::vector<int64_t>& row_counts) {
  using deltaserve::kernels::Linear;
  constexpr int64_t kRotateBytes = int64_t{256} << 20;  // past any L3 of a CPU this runs on
  std::fprintf(stderr, "%-14s %5s %6s %6s %4s %10s %10s %8s %8s (threads %d)\n", "shape", "dtype", "N", "K", "rows",
               "gemv us", "aten us", "ratio", "GB/s", at::get_num_threads());
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const int64_t bytes = dtype == at::kFloat ? 4 : 2;
    for (const auto& [name, n, k] : Shapes()) {
      const int64_t copies = std::max<int64_t>(2, kRotateBytes / (n * k * bytes));
      std::vector<at::Tensor> ws;
      for (int64_t c = 0; c < copies; ++c) ws.push_back(at::randn({n, k}).to(dtype));
      const int calls = static_cast<int>(std::max<int64_t>(copies, std::min<int64_t>(reps, 4 * copies)));
      for (int64_t rows : row_counts) {
        at::Tensor x = at::randn({rows, k}).to(dtype);
        auto time_us = [&](bool ours) {
          const auto start = std::chrono::steady_clock::now();
          for (int i = 0; i < calls; ++i) {
            const at::Tensor& w = ws[static_cast<size_t>(i) % ws.size()];
            if (ours) {
              (void)*Linear(x, w);
            } else {
              (void)at::linear(x, w);
            }
          }
          return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / calls;
        };
        time_us(true);
        time_us(false);  // warm both
        double ours = 0, base = 0;
        for (int round = 0; round < 3; ++round) {
          ours += time_us(true) / 3;
          base += time_us(false) / 3;
        }
        const double gbs = static_cast<double>(n * k * bytes) / (ours * 1e3);
        const char* dt = dtype == at::kFloat ? "fp32" : "bf16";
        std::printf(
            "{\"bench\": \"linear\", \"device\": \"cpu\", \"threads\": %d, \"dtype\": \"%s\", \"shape\": \"%s\", "
            "\"n\": %lld, \"k\": %lld, \"rows\": %lld, \"gemv_us\": %.1f, \"aten_us\": %.1f, \"ratio\": %.3f, "
            "\"weight_gb_s\": %.1f}\n",
            at::get_num_threads(), dt, name, static_cast<long long>(n), static_cast<long long>(k),
            static_cast<long long>(rows), ours, base, base / ours, gbs);
        std::fprintf(stderr, "%-14s %5s %6lld %6lld %4lld %10.1f %10.1f %7.2fx %8.1f\n", name, dt,
                     static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(rows), ours, base,
                     base / ours, gbs);
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 200;
  int threads = 0;
  std::vector<int64_t> cpu_rows = {1, 2, 4, 8, 16};
  std::string device;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) {
      cpu_rows.clear();
      for (const char* p = argv[++i]; *p;) {
        cpu_rows.push_back(std::max<int64_t>(1, std::strtoll(p, const_cast<char**>(&p), 10)));
        if (*p != ',') break;
        ++p;
      }
    } else if (!std::strcmp(argv[i], "--device") && i + 1 < argc) {
      device = argv[++i];
    } else {
      std::fprintf(stderr, "usage: bench_linear [--device cpu|cuda] [--reps R] [--threads T] [--rows 1,2,4,8,16]\n");
      return std::strcmp(argv[i], "--help") ? 2 : 0;
    }
  }
  if (device != "" && device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "bench_linear: --device must be cpu or cuda, got %s\n", device.c_str());
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
#ifdef DELTASERVE_WITH_CUDA
  if (device == "cpu" || (device.empty() && c10::cuda::device_count() == 0)) return RunCpu(reps, cpu_rows);
  if (c10::cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_linear: --device cuda: no CUDA device here\n");
    return 1;
  }
  using deltaserve::kernels::Linear;
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto& shapes = Shapes();
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
  if (device == "cuda") {
    std::fprintf(stderr, "bench_linear: --device cuda: built without CUDA\n");
    return 1;
  }
  return RunCpu(reps, cpu_rows);
#endif
}
