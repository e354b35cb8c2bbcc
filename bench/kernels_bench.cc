// Kernel benchmark: triangular-inverse methods, whole chunked prefill, and the decode step per state
// dtype, at Qwen3.5-like sizes (Hv = 32, Hk = 16, dk = dv = 128). Each figure is a ratio against the
// baseline measured in the same run (forward substitution; fp32 state), with the method's error.
//   bench_kernels [--device cpu|cuda] [--seq 4096,16384] [--batches 1,16,64] [--reps N] [--quick]
//                 [--no-inverse] [--no-prefill] [--no-decode] [--composition-max-seq T] [--seq-len L]
//                 [--prefill-methods forward,neumann,...] [--prefill-dtypes float32,bfloat16]
// --seq-len L packs each prefill's T tokens as T / L sequences of L tokens (cu_seqlens), the shape of a
// serving step that prefills many prompts at once; 0 (default) is one sequence of T tokens. On CUDA the
// bf16 rows come twice: kernel "fused" (prepare, state pass, output pass) and "fused-so" (the state pass
// forms the output too: DELTASERVE_GDN_FUSED_OUTPUT=1 around its calls), and a table of the prefill against
// the state pool (ReadStates + the rule + WriteStates against ChunkGatedDeltaRuleInPool, fp32 and int8 pools).
// (The inverse table builds its exact float64 reference on the CPU: minutes at T = 65536.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/chunk_gated_delta_rule_pool.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "support/gdn_inputs.h"

namespace ds = deltaserve::kernels;
namespace dt = deltaserve::testing;

namespace {

struct Args {
  at::Device device = at::kCPU;
  std::vector<int64_t> seqs = {4096, 16384};
  std::vector<int64_t> batches = {1, 16, 64};
  int reps = 3;
  bool prefill = true, inverse = true, decode = true;
  int64_t composition_max_seq = 16384;  // the ATen composition's baseline rows on CUDA stop here
  int64_t seq_len = 0;                  // prefill: T / seq_len packed sequences; 0: one sequence
  std::string prefill_methods;          // comma-separated inverse methods of the prefill rows; empty: all
  std::string prefill_dtypes;           // float32 and/or bfloat16 inputs (CUDA); empty: both
};

// Whether `name` is in the comma-separated `list` (an empty list holds everything).
bool Listed(const std::string& list, const std::string& name) {
  if (list.empty()) return true;
  return ("," + list + ",").find("," + name + ",") != std::string::npos;
}

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> out;
  for (const char* p = s; *p;) {
    out.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
  }
  return out;
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", f.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (f == "--device") {
      a.device = at::Device(next());
    } else if (f == "--seq") {
      a.seqs = ParseList(next());
    } else if (f == "--batches") {
      a.batches = ParseList(next());
    } else if (f == "--reps") {
      a.reps = std::max(1, std::atoi(next()));
    } else if (f == "--quick") {
      a.seqs = {1024};
      a.batches = {1, 16};
      a.reps = 1;
    } else if (f == "--composition-max-seq") {
      a.composition_max_seq = std::strtoll(next(), nullptr, 10);
    } else if (f == "--seq-len") {
      a.seq_len = std::strtoll(next(), nullptr, 10);
    } else if (f == "--prefill-methods") {
      a.prefill_methods = next();
    } else if (f == "--prefill-dtypes") {
      a.prefill_dtypes = next();
    } else if (f == "--no-prefill") {
      a.prefill = false;
    } else if (f == "--no-inverse") {
      a.inverse = false;
    } else if (f == "--no-decode") {
      a.decode = false;
    } else {
      std::fprintf(stderr,
                   "usage: bench_kernels [--device cpu|cuda] [--seq 4096,16384] [--batches 1,16,64] "
                   "[--reps N] [--quick] [--no-inverse] [--no-prefill] [--no-decode] [--composition-max-seq T] "
                   "[--seq-len L] [--prefill-methods LIST] [--prefill-dtypes float32,bfloat16]\n");
      std::exit(f == "--help" ? 0 : 2);
    }
  }
  return a;
}

void Sync(const at::Device& d) {
  if (d.is_cuda()) at::zeros({1}, at::TensorOptions().device(d)).cpu();  // waits for the stream
}

// Median over `reps` of the wall time of `inner` back-to-back calls (one sync), per call, in seconds,
// after one warm-up: short GPU steps are then timed as a stream of launches, not launch + sync each.
double Time(const at::Device& d, int reps, const std::function<void()>& fn, int inner = 1) {
  fn();
  Sync(d);
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    for (int j = 0; j < inner; ++j) fn();
    Sync(d);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / inner);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

const char* DeviceName(const at::Device& d) { return d.is_cuda() ? "cuda" : "cpu"; }

void InverseBench(const Args& a) {
  const int64_t hv = 32, c = 64, dk = 128;
  const dt::GdnRegime& regime = dt::Regimes()[2];  // weak decay, keys at cosine 0.2
  std::printf("\n== chunk inverse, C=%ld, Hv=%ld, regime %s ==\n", c, hv, regime.name.c_str());
  std::printf("%-7s %-18s %12s %10s %12s %10s\n", "T", "method", "time_ms", "vs_fwd", "rel_err", "fallbacks");
  for (int64_t t : a.seqs) {
    const int64_t n = t / c * hv;
    at::Tensor a64 = dt::MakeChunkMatrices(n, c, dk, regime, 1000 + t);
    at::Tensor eye = at::eye(c, a64.options());
    at::Tensor exact = at::linalg_solve_triangular(a64 + eye, eye.expand(a64.sizes()), false, true, true);
    at::Tensor a32 = a64.to(at::kFloat).to(a.device);
    double base = 0;
    std::vector<std::string> names = {"forward", "solve-triangular", "product", "neumann", "neumann-fast",
                                      "neumann-int16", "neumann-int8", "neumann-int8-refine"};
    // On CUDA also the standalone fused kernel (TriInverseOptions::fused_cuda) for each full-precision method.
    if (a.device.is_cuda()) {
      for (const char* m : {"forward", "product", "neumann", "neumann-fast", "neumann-int8-block", "neumann-int8-refine"}) {
        names.push_back(std::string("fused-") + m);
      }
    }
    for (const std::string& name : names) {
      const bool fused = name.rfind("fused-", 0) == 0;
      ds::TriInverseOptions o = *ds::ParseTriInverseMethod(fused ? name.substr(6) : name, c);
      o.fused_cuda = fused;
      ds::TriInverseStats stats;
      at::Tensor x;
      const double sec = Time(a.device, a.reps, [&] { x = *ds::InvertUnitLowerTriangular(a32, o, &stats); });
      if (base == 0) base = sec;
      const double err = dt::RelMaxError(x.cpu(), exact);
      const double fb = static_cast<double>(stats.fallbacks) / std::max<int64_t>(1, stats.chunks);
      std::printf("%-7ld %-18s %12.3f %10.2f %12.2e %9.1f%%\n", t, name.c_str(), sec * 1e3, base / sec, err,
                  100 * fb);
      std::printf(
          "{\"bench\":\"tri_inverse\",\"device\":\"%s\",\"T\":%ld,\"C\":%ld,\"Hv\":%ld,\"method\":\"%s\","
          "\"seconds\":%.6g,\"speedup_vs_forward\":%.4g,\"rel_err\":%.3g,\"fallback_rate\":%.4g}\n",
          DeviceName(a.device), t, c, hv, name.c_str(), sec, base / sec, err, fb);
    }
  }
}

// The whole prefill layer per inverse method. On CUDA each method runs in the fused kernels
// (kernels/cuda/chunk_gated_delta_rule_cuda.cu; fp32 and bf16 inputs, fp32 g and beta) and, as the
// baseline of the same run, as the ATen composition (fp32; up to --composition-max-seq tokens).
void PrefillBench(const Args& a) {
  const int64_t hk = 16, hv = 32, d = 128;
  const dt::GdnRegime& regime = dt::Regimes()[2];
  const bool cuda = a.device.is_cuda();
  std::printf("\n== chunked prefill, Hk=%ld Hv=%ld dk=dv=%ld, C=64, regime %s, %s ==\n", hk, hv, d,
              regime.name.c_str(),
              a.seq_len > 0 ? ("sequences of " + std::to_string(a.seq_len) + " tokens").c_str() : "one sequence");
  std::printf("%-7s %-18s %-8s %-9s %12s %10s %12s %12s\n", "T", "method", "kernel", "dtype", "time_ms",
              "vs_fwd", "out_err", "tok/s");
  for (int64_t t : a.seqs) {
    dt::GdnInputs in = dt::MakeGdnInputs(1, t, hk, hv, d, d, regime, 7 + t);
    for (at::Tensor* x : {&in.q, &in.k, &in.v, &in.g, &in.beta}) *x = x->to(a.device);
    // Packed sequences (a serving step's shape): offsets on the host for the kernels, and on the device.
    std::vector<int64_t> offsets;
    at::Tensor cu;
    if (a.seq_len > 0) {
      for (int64_t s = 0; s < t; s += a.seq_len) offsets.push_back(s);
      offsets.push_back(t);
      cu = at::tensor(offsets, at::kLong).to(a.device);
    }
    ds::GatedDeltaRuleOptions base_opt;
    base_opt.host_cu_seqlens = offsets;
    base_opt.inverse = *ds::ParseTriInverseMethod("solve-triangular", 64);
    // The reference output: exact inverse (cuBLAS / LAPACK trsm in the composition), computed once.
    at::Tensor ref = ds::ChunkGatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, {}, cu, base_opt)->o.cpu();
    struct Variant {
      const char* kernel;
      at::ScalarType dtype;
      bool fused_output = false;  // the state pass forms the output too (DELTASERVE_GDN_FUSED_OUTPUT=1)
    };
    std::vector<Variant> variants = {{cuda ? "fused" : "aten", at::kFloat}};
    if (cuda) {
      variants.push_back({"fused", at::kBFloat16});
      variants.push_back({"fused-so", at::kBFloat16, true});
      if (t <= a.composition_max_seq) variants.push_back({"aten", at::kFloat});
    }
    double base = 0;
    for (const Variant& variant : variants) {
      const bool bf16 = variant.dtype == at::kBFloat16;
      if (!Listed(a.prefill_dtypes, bf16 ? "bfloat16" : "float32")) continue;
      const at::Tensor q = in.q.to(variant.dtype), k = in.k.to(variant.dtype), v = in.v.to(variant.dtype);
      for (const char* name : {"forward", "solve-triangular", "product", "neumann", "neumann-fast"}) {
        ds::GatedDeltaRuleOptions o;
        o.inverse = *ds::ParseTriInverseMethod(name, 64);
        o.fused_cuda = std::string(variant.kernel) != "aten";
        o.host_cu_seqlens = offsets;
        if (o.fused_cuda && cuda && std::string(name) == "solve-triangular") continue;  // trsm: composition only
        if (!Listed(a.prefill_methods, name)) continue;
        at::Tensor out;
        if (variant.fused_output) setenv("DELTASERVE_GDN_FUSED_OUTPUT", "1", 1);
        const double sec = Time(a.device, std::max(1, a.reps / 2), [&] {
          out = ds::ChunkGatedDeltaRule(q, k, v, in.g, in.beta, {}, cu, o)->o;
        });
        unsetenv("DELTASERVE_GDN_FUSED_OUTPUT");
        if (base == 0) base = sec;
        const double err = dt::RelMaxError(out.cpu(), ref);
        const char* dtype = bf16 ? "bfloat16" : "float32";
        std::printf("%-7ld %-18s %-8s %-9s %12.3f %10.2f %12.2e %12.0f\n", t, name, variant.kernel, dtype,
                    sec * 1e3, base / sec, err, t / sec);
        std::printf(
            "{\"bench\":\"prefill\",\"impl\":\"deltaserve\",\"what\":\"prefill\",\"device\":\"%s\","
            "\"T\":%ld,\"seq_len\":%ld,\"Hv\":%ld,\"method\":\"%s\",\"kernel\":\"%s\",\"dtype\":\"%s\","
            "\"ms\":%.6g,\"seconds\":%.6g,\"speedup_vs_first\":%.4g,\"rel_err\":%.3g,\"tok_per_s\":%.6g}\n",
            DeviceName(a.device), t, a.seq_len > 0 ? a.seq_len : t, hv, name, variant.kernel, dtype, sec * 1e3, sec,
            base / sec, err, t / sec);
      }
    }
  }
}

// The prefill against the state pool, as the model runs it: the states read out of the pool into a dense
// tensor, the chunked rule, and written back (ReadStates, ChunkGatedDeltaRule, WriteStates), against
// ChunkGatedDeltaRuleInPool, whose kernels read and write the slots themselves. bf16 inputs, forward
// substitution, sequences of --seq-len tokens (512 when unset), float32 and INT8 pools.
void PoolPrefillBench(const Args& a) {
  const int64_t hk = 16, hv = 32, d = 128, len = a.seq_len > 0 ? a.seq_len : 512;
  std::printf("\n== prefill against the state pool, Hk=%ld Hv=%ld dk=dv=%ld, sequences of %ld tokens, bf16 ==\n", hk,
              hv, d, len);
  std::printf("%-7s %-8s %-16s %12s %10s\n", "T", "state", "kernel", "time_ms", "vs_first");
  for (int64_t t : a.seqs) {
    if (t < len) continue;
    const int64_t n = t / len, tokens = n * len;
    dt::GdnInputs in = dt::MakeGdnInputs(1, tokens, hk, hv, d, d, dt::Regimes()[2], 11 + t, at::kBFloat16);
    in.g = in.g.to(at::kFloat);
    in.beta = in.beta.to(at::kFloat);
    for (at::Tensor* x : {&in.q, &in.k, &in.v, &in.g, &in.beta}) *x = x->to(a.device);
    std::vector<int64_t> offsets, host_slots;
    for (int64_t s = 0; s <= n; ++s) offsets.push_back(s * len);
    for (int64_t s = 0; s < n; ++s) host_slots.push_back(n - 1 - s);  // out of order, as a running batch's are
    const at::Tensor cu = at::tensor(offsets, at::kLong).to(a.device);
    const at::Tensor slots = at::tensor(host_slots, at::kLong).to(a.device);
    ds::GatedDeltaRuleOptions o;
    o.inverse = *ds::ParseTriInverseMethod("forward", 64);
    o.host_cu_seqlens = offsets;
    for (ds::StateDtype sd : {ds::StateDtype::kFloat32, ds::StateDtype::kInt8}) {
      ds::RecurrentStatePool pool = *ds::MakeRecurrentStatePool(n, hv, d, d, sd, a.device);
      (void)ds::WriteStates(pool, slots, at::randn({n, hv, d, d}, at::TensorOptions().device(a.device)) * 0.1,
                            host_slots);
      double first = 0;
      for (const bool in_pool : {false, true}) {
        const double sec = Time(a.device, std::max(3, a.reps / 2), [&] {
          if (in_pool) {
            (void)*ds::ChunkGatedDeltaRuleInPool(in.q, in.k, in.v, in.g, in.beta, cu, pool, slots, host_slots, o);
            return;
          }
          const at::Tensor h0 = *ds::ReadStates(pool, slots, host_slots);
          ds::GatedDeltaRuleOutput out = *ds::ChunkGatedDeltaRule(in.q, in.k, in.v, in.g, in.beta, h0, cu, o);
          (void)ds::WriteStates(pool, slots, out.final_state, host_slots);
        });
        if (first == 0) first = sec;
        const char* kernel = in_pool ? "in-pool" : "read-rule-write";
        std::printf("%-7ld %-8s %-16s %12.3f %10.2f\n", tokens, ds::StateDtypeName(sd).c_str(), kernel, sec * 1e3,
                    first / sec);
        std::printf(
            "{\"bench\":\"prefill_pool\",\"impl\":\"deltaserve\",\"what\":\"prefill\",\"device\":\"%s\","
            "\"T\":%ld,\"seq_len\":%ld,\"Hv\":%ld,\"method\":\"forward\",\"state\":\"%s\",\"kernel\":\"%s\","
            "\"dtype\":\"bfloat16\",\"ms\":%.6g,\"speedup_vs_first\":%.4g}\n",
            DeviceName(a.device), tokens, len, hv, ds::StateDtypeName(sd).c_str(), kernel, sec * 1e3, first / sec);
      }
    }
  }
}

void DecodeBench(const Args& a) {
  const int64_t hk = 16, hv = 32, d = 128;
  std::printf("\n== decode step, Hk=%ld Hv=%ld dk=dv=%ld (one layer) ==\n", hk, hv, d);
  std::printf("%-6s %-12s %-8s %12s %10s %14s %10s\n", "batch", "state", "kernel", "time_us", "vs_fp32",
              "bytes/step", "GB/s");
  // On CUDA each dtype runs the register-tiled kernel and, as its baseline, the general kernel; 1-byte
  // states also the streamed kernel, which is their default.
  struct Kernel {
    const char* name;
    bool tiled, streamed;
  };
  std::vector<Kernel> kernels = {{"fused", true, true}};
  if (a.device.is_cuda()) {
    kernels = {{"streamed", true, true}, {"tiled", true, false}, {"general", false, false}};
  }
  for (int64_t b : a.batches) {
    dt::GdnInputs in = dt::MakeGdnInputs(b, 1, hk, hv, d, d, dt::Regimes()[1], 5 + b);
    auto step = [&](const at::Tensor& x) { return x.select(1, 0).contiguous().to(a.device); };
    at::Tensor q = step(in.q), k = step(in.k), v = step(in.v), g = step(in.g), beta = step(in.beta);
    // Slots on the device with their host copy beside them, as the runner passes them: nothing is read
    // back or uploaded inside a step.
    std::vector<int64_t> host_slots(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) host_slots[static_cast<size_t>(i)] = i;
    at::Tensor slots = at::arange(b, at::kLong).to(a.device);
    at::Tensor init = at::randn({b, hv, d, d}, at::TensorOptions().device(a.device)) * 0.1;
    double base = 0;
    for (ds::StateDtype sd : {ds::StateDtype::kFloat32, ds::StateDtype::kBFloat16, ds::StateDtype::kInt8,
                              ds::StateDtype::kInt8Stochastic, ds::StateDtype::kFloat8E4M3}) {
      for (const auto& [kernel, tiled, streamed] : kernels) {
        const bool one_byte = sd != ds::StateDtype::kFloat32 && sd != ds::StateDtype::kBFloat16;
        if (a.device.is_cuda() && streamed && !one_byte) continue;  // the tiled kernel's row again
        ds::RecurrentStatePool pool = *ds::MakeRecurrentStatePool(b, hv, d, d, sd, a.device);
        (void)ds::WriteStates(pool, slots, init);
        ds::DecodeStepOptions options;
        options.tiled_cuda = tiled;
        options.streamed_cuda = streamed;
        options.host_slots = host_slots;
        const double sec = Time(
            a.device, std::max(5, a.reps),
            [&] { (void)*ds::RecurrentGatedDeltaStep(q, k, v, g, beta, slots, pool, options); },
            a.device.is_cuda() ? 50 : 5);
        if (base == 0) base = sec;  // fp32 state, the first kernel
        // State read once and written once (values and per-row scales); q, k, v, o are noise beside it.
        const double bytes = 2.0 * b * hv * ds::StateBytesPerHead(sd, d, d);
        std::printf("%-6ld %-12s %-8s %12.1f %10.2f %14.0f %10.2f\n", b, ds::StateDtypeName(sd).c_str(), kernel,
                    sec * 1e6, base / sec, bytes, bytes / sec / 1e9);
        std::printf(
            "{\"bench\":\"decode\",\"impl\":\"deltaserve\",\"what\":\"decode\",\"device\":\"%s\","
            "\"batch\":%ld,\"Hv\":%ld,\"method\":\"%s\",\"state\":\"%s\",\"kernel\":\"%s\",\"ms\":%.6g,"
            "\"seconds\":%.6g,\"speedup_vs_fp32\":%.4g,\"bytes\":%.0f,\"bytes_per_step\":%.0f,\"gbps\":%.4g}\n",
            DeviceName(a.device), b, hv, ds::StateDtypeName(sd).c_str(), ds::StateDtypeName(sd).c_str(), kernel,
            sec * 1e3, sec, base / sec, bytes, bytes, bytes / sec / 1e9);
      }
    }
    if (a.device.is_cuda()) {
      // The bandwidth yardstick: a device copy reading and writing as many bytes as the int8 step.
      const int64_t n = b * hv * ds::StateBytesPerHead(ds::StateDtype::kInt8, d, d);
      at::Tensor src = at::empty({n}, at::TensorOptions().dtype(at::kByte).device(a.device)).fill_(1);
      at::Tensor dst = at::empty_like(src);
      const double sec = Time(a.device, std::max(5, a.reps), [&] { dst.copy_(src); }, 50);
      const double bytes = 2.0 * static_cast<double>(n);
      std::printf("%-6ld %-12s %-8s %12.1f %10s %14.0f %10.2f\n", b, "int8 bytes", "copy", sec * 1e6, "-", bytes,
                  bytes / sec / 1e9);
      std::printf(
          "{\"bench\":\"decode\",\"impl\":\"device-copy\",\"what\":\"copy\",\"device\":\"%s\","
          "\"batch\":%ld,\"method\":\"copy\",\"ms\":%.6g,\"seconds\":%.6g,\"bytes\":%.0f,\"gbps\":%.4g}\n",
          DeviceName(a.device), b, sec * 1e3, sec, bytes, bytes / sec / 1e9);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a = ParseArgs(argc, argv);
  if (a.device.is_cuda() && !at::hasCUDA()) {
    std::fprintf(stderr, "bench_kernels: --device cuda but this build or machine has no CUDA\n");
    return 2;
  }
  std::printf("bench_kernels: device %s, threads %d, reps %d\n", DeviceName(a.device), at::get_num_threads(),
              a.reps);
  if (a.inverse) InverseBench(a);
  if (a.prefill) PrefillBench(a);
  if (a.prefill && a.device.is_cuda()) PoolPrefillBench(a);
  if (a.decode) DecodeBench(a);
  return 0;
}
