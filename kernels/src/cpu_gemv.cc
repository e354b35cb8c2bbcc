// See cpu_gemv.h. A decode step's projections are memory-bound: all that matters is reading each weight
// once, at the memory's speed, on every core. MKL's sgemv for one row runs on one thread here (the other
// OpenMP thread spins), so the model decoded at about half the bandwidth; this kernel splits the output
// features over at::parallel_for and keeps 32 fp32 lanes of partial sums per row of x in registers.
// At most kCpuGemvMaxRows (4) rows, so the 8 accumulators fit the 16 vector registers of AVX2.
#include "cpu_gemv.h"

// The 64-byte vector helpers are inlined into each target clone; GCC's note that passing such vectors by
// value without AVX-512 changes the ABI concerns only out-of-line calls, which there are none of.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "fused_ops_impl.h"

#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace deltaserve::kernels::internal {
namespace {

inline float Bf16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t FloatToBf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// Sixteen fp32 lanes as GCC vector types: one AVX-512 register in the avx512f clone below, two AVX2
// registers or four SSE ones in the others, so one body serves every instruction set.
using F16 = float __attribute__((vector_size(64)));
using U32x16 = uint32_t __attribute__((vector_size(64)));
using U16x16 = uint16_t __attribute__((vector_size(32)));

inline F16 LoadF16(const float* p) {
  F16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline F16 LoadF16(const uint16_t* p) {  // bf16 -> fp32: the bits shifted into the high half
  U16x16 h;
  std::memcpy(&h, p, sizeof(h));
  const U32x16 bits = __builtin_convertvector(h, U32x16) << 16;
  F16 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline float Sum(F16 v) {
  float s = 0;
  for (int j = 0; j < 16; ++j) s += v[j];
  return s;
}
inline float ToFloat(float w) { return w; }
inline float ToFloat(uint16_t w) { return Bf16ToFloat(w); }

// y[m * n_total + n] (+)= sum_k x[m * k + kk] w[n * k + kk] for n in [n0, n1) and R rows of x: each
// weight row is loaded once (32 lanes at a time) and multiplied into all R rows, whose partial sums stay
// in 2R registers; K's remainder below 32 runs in scalar code.
template <int R, typename W>
__attribute__((always_inline)) inline void DotRows(const float* x, int64_t k, const W* w, int64_t n0, int64_t n1,
                                                   float* y, int64_t n_total, bool accumulate) {
  constexpr int kVecs = R == 1 ? 4 : 2;  // one row: four chains in flight; more rows bring their own
  constexpr int64_t kStep = 16 * kVecs;
  const int64_t kv = k / kStep * kStep;
  for (int64_t n = n0; n < n1; ++n) {
    const W* wr = w + n * k;
    F16 acc[R][kVecs] = {};
    for (int64_t i = 0; i < kv; i += kStep) {
      // The row after next, one line per 16 lanes: ahead of the hardware prefetcher at a row's start.
      for (int v = 0; v < kVecs; ++v) __builtin_prefetch(wr + 2 * k + i + 16 * v, 0, 0);
      F16 wv[kVecs];
      for (int v = 0; v < kVecs; ++v) wv[v] = LoadF16(wr + i + 16 * v);
      for (int m = 0; m < R; ++m)
        for (int v = 0; v < kVecs; ++v) acc[m][v] += LoadF16(x + m * k + i + 16 * v) * wv[v];
    }
    for (int m = 0; m < R; ++m) {
      F16 t = acc[m][0];
      for (int v = 1; v < kVecs; ++v) t += acc[m][v];
      float s = Sum(t);
      for (int64_t i = kv; i < k; ++i) s += x[m * k + i] * ToFloat(wr[i]);
      float& out = y[m * n_total + n];
      out = accumulate ? out + s : s;
    }
  }
}

// One clone per instruction set, picked when the library loads, so a portable build still runs
// AVX-512 where the CPU has it.
template <typename W>
__attribute__((always_inline)) inline void DotRowsAnyR(const float* x, int64_t rows, int64_t k, const W* w,
                                                       int64_t n0, int64_t n1, float* y, int64_t n_total,
                                                       bool accumulate) {
  switch (rows) {
    case 1: return DotRows<1>(x, k, w, n0, n1, y, n_total, accumulate);
    case 2: return DotRows<2>(x, k, w, n0, n1, y, n_total, accumulate);
    case 3: return DotRows<3>(x, k, w, n0, n1, y, n_total, accumulate);
    default: return DotRows<4>(x, k, w, n0, n1, y, n_total, accumulate);
  }
}

__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void DotRowsF32(
    const float* x, int64_t rows, int64_t k, const float* w, int64_t n0, int64_t n1, float* y, int64_t n_total,
    bool accumulate) {
  DotRowsAnyR(x, rows, k, w, n0, n1, y, n_total, accumulate);
}

__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void DotRowsBf16(
    const float* x, int64_t rows, int64_t k, const uint16_t* w, int64_t n0, int64_t n1, float* y, int64_t n_total,
    bool accumulate) {
  DotRowsAnyR(x, rows, k, w, n0, n1, y, n_total, accumulate);
}

using I8x16 = int8_t __attribute__((vector_size(16)));
inline F16 LoadF16(const int8_t* p) {  // 16 int8 values -> fp32 (sign-extend and convert)
  I8x16 v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, F16);
}

// DotRows for an INT8 weight: each group of 32 values is converted, scaled by its group's scale and multiplied
// into all R rows. One row keeps two groups (four chains) in flight.
template <int R>
__attribute__((always_inline)) inline void DotRowsQ8(const float* x, int64_t k, const int8_t* q, const float* scales,
                                                     int64_t n0, int64_t n1, float* y, int64_t n_total,
                                                     bool accumulate) {
  constexpr int kGroups = R == 1 ? 2 : 1;
  constexpr int64_t kGroup = 32;
  const int64_t groups = k / kGroup;
  const int64_t gv = groups / kGroups * kGroups;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qr = q + n * k;
    const float* sr = scales + n * groups;
    F16 acc[R][2 * kGroups] = {};
    auto group = [&](int64_t g, int slot) {
      const float s = sr[g];
      const F16 w0 = LoadF16(qr + g * kGroup) * s, w1 = LoadF16(qr + g * kGroup + 16) * s;
      for (int m = 0; m < R; ++m) {
        acc[m][2 * slot] += LoadF16(x + m * k + g * kGroup) * w0;
        acc[m][2 * slot + 1] += LoadF16(x + m * k + g * kGroup + 16) * w1;
      }
    };
    for (int64_t g = 0; g < gv; g += kGroups) {
      __builtin_prefetch(qr + 2 * k + g * kGroup, 0, 0);  // the row after next, as in DotRows
      for (int j = 0; j < kGroups; ++j) group(g + j, j);
    }
    for (int64_t g = gv; g < groups; ++g) group(g, 0);
    for (int m = 0; m < R; ++m) {
      F16 t = acc[m][0];
      for (int v = 1; v < 2 * kGroups; ++v) t += acc[m][v];
      const float s = Sum(t);
      float& out = y[m * n_total + n];
      out = accumulate ? out + s : s;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void DotRowsInt8(
    const float* x, int64_t rows, int64_t k, const int8_t* q, const float* scales, int64_t n0, int64_t n1, float* y,
    int64_t n_total, bool accumulate) {
  switch (rows) {
    case 1: return DotRowsQ8<1>(x, k, q, scales, n0, n1, y, n_total, accumulate);
    case 2: return DotRowsQ8<2>(x, k, q, scales, n0, n1, y, n_total, accumulate);
    case 3: return DotRowsQ8<3>(x, k, q, scales, n0, n1, y, n_total, accumulate);
    default: return DotRowsQ8<4>(x, k, q, scales, n0, n1, y, n_total, accumulate);
  }
}

// Rows [n0, n1) of an INT8 weight as float32 into dst [n1 - n0, K].
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void DequantizeRows(
    const int8_t* q, const float* scales, int64_t k, int64_t n0, int64_t n1, float* dst) {
  const int64_t groups = k / 32;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const float s = scales[n * groups + g];
      const int8_t* src = q + n * k + g * 32;
      float* d = dst + (n - n0) * k + g * 32;
      const F16 a = LoadF16(src) * s, b = LoadF16(src + 16) * s;
      std::memcpy(d, &a, sizeof(a));
      std::memcpy(d + 16, &b, sizeof(b));
    }
  }
}

// x's rows start `stride` elements apart.
const float* InputRows(const at::Tensor& x, int64_t rows, int64_t stride, int64_t k, bool silu_and_mul,
                       std::vector<float>& buf) {
  const bool f32 = x.scalar_type() == at::kFloat;
  if (!silu_and_mul && f32 && (stride == k || rows == 1)) return x.data_ptr<float>();
  buf.resize(static_cast<size_t>(rows * k));
  const float* xf = f32 ? x.data_ptr<float>() : nullptr;
  const uint16_t* xb = f32 ? nullptr : reinterpret_cast<const uint16_t*>(x.data_ptr());
  for (int64_t m = 0; m < rows; ++m) {
    float* dst = buf.data() + m * k;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t at = m * stride + i;
      float v = f32 ? xf[at] : Bf16ToFloat(xb[at]);
      if (silu_and_mul) {
        const float up = f32 ? xf[at + k] : Bf16ToFloat(xb[at + k]);
        v = v / (1.0f + std::exp(-v)) * up;
        // bf16 activations round after the activation, as the unfused SiluAndMul's output does.
        if (!f32) v = Bf16ToFloat(FloatToBf16(v));
      }
      dst[i] = v;
    }
  }
  return buf.data();
}

// The rows of x as the product reads them, as float32 (the same staging for both weight kinds), and the
// output's float32 buffer: out's own memory for a float32 out written in place, else the thread's.
struct GemvIo {
  const float* x;
  float* y;
  bool add_in_place;
};
GemvIo PrepareGemv(const at::Tensor& x, int64_t rows, int64_t row_stride, int64_t k, int64_t n, at::Tensor& out,
                   bool accumulate, bool silu_and_mul, std::vector<float>& staged, std::vector<float>& product) {
  GemvIo io;
  io.x = InputRows(x, rows, row_stride, k, silu_and_mul, staged);
  const bool f32_out = out.scalar_type() == at::kFloat;
  io.y = f32_out ? out.data_ptr<float>() : nullptr;
  if (!f32_out) {
    product.resize(static_cast<size_t>(rows * n));
    io.y = product.data();
  }
  io.add_in_place = accumulate && f32_out;
  return io;
}

// A bf16 out gets the float32 product rounded once (added to its old value first with `accumulate`).
void FinishGemv(const GemvIo& io, int64_t rows, int64_t n, at::Tensor& out, bool accumulate) {
  if (out.scalar_type() == at::kFloat) return;
  uint16_t* po = reinterpret_cast<uint16_t*>(out.data_ptr());
  for (int64_t i = 0; i < rows * n; ++i) po[i] = FloatToBf16(accumulate ? Bf16ToFloat(po[i]) + io.y[i] : io.y[i]);
}

}  // namespace

bool CpuGemvApplies(const at::Tensor& x, const at::Tensor& weight) {
  if (!x.device().is_cpu() || !weight.device().is_cpu() || !weight.is_contiguous()) return false;
  const at::ScalarType wt = weight.scalar_type();
  if ((wt != at::kFloat && wt != at::kBFloat16) || x.scalar_type() != wt) return false;
  const int64_t k = x.size(-1);
  // bf16 weights: from 3 rows on, oneDNN's AVX512-BF16 GEMM (at::linear) matches or beats this kernel.
  const int64_t max_rows = wt == at::kBFloat16 ? 2 : kCpuGemvMaxRows;
  return k > 0 && x.numel() / k <= max_rows && RowStride(x) >= 0;
}

void CpuGemv(const at::Tensor& x, int64_t row_stride, const at::Tensor& weight, at::Tensor& out, bool accumulate,
             bool silu_and_mul) {
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t rows = x.numel() / x.size(-1);
  // Buffers reused across calls (one engine thread calls at a time per model; thread_local keeps
  // concurrent callers apart): a fresh 1 MB logits buffer a step would fault its pages in every time.
  thread_local std::vector<float> staged, product;
  const GemvIo io = PrepareGemv(x, rows, row_stride, k, n, out, accumulate, silu_and_mul, staged, product);
  const bool bf16_weight = weight.scalar_type() == at::kBFloat16;
  // Blocks of output features, large enough that a thread's share streams for a while.
  at::parallel_for(0, n, 64, [&](int64_t n0, int64_t n1) {
    if (bf16_weight) {
      DotRowsBf16(io.x, rows, k, reinterpret_cast<const uint16_t*>(weight.data_ptr()), n0, n1, io.y, n,
                  io.add_in_place);
    } else {
      DotRowsF32(io.x, rows, k, weight.data_ptr<float>(), n0, n1, io.y, n, io.add_in_place);
    }
  });
  FinishGemv(io, rows, n, out, accumulate);
}

void CpuGemvInt8(const at::Tensor& x, int64_t row_stride, const at::Tensor& values, const at::Tensor& scales,
                 at::Tensor& out, bool accumulate, bool silu_and_mul) {
  const int64_t n = values.size(0), k = values.size(1);
  const int64_t rows = x.numel() / x.size(-1);
  thread_local std::vector<float> staged, product;
  const GemvIo io = PrepareGemv(x, rows, row_stride, k, n, out, accumulate, silu_and_mul, staged, product);
  const int8_t* q = values.data_ptr<int8_t>();
  const float* s = scales.data_ptr<float>();
  at::parallel_for(0, n, 64, [&](int64_t n0, int64_t n1) {
    DotRowsInt8(io.x, rows, k, q, s, n0, n1, io.y, n, io.add_in_place);
  });
  FinishGemv(io, rows, n, out, accumulate);
}

at::Tensor CpuLinearInt8(const at::Tensor& x, const at::Tensor& values, const at::Tensor& scales) {
  const int64_t n = values.size(0), k = values.size(1);
  const at::Tensor x32 = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  at::Tensor out32 = at::empty({x.size(0), n}, x32.options());
  constexpr int64_t kBlock = 128;  // 128 x K float32: 0.5 MB at K = 1024, cache-resident while multiplied
  const int8_t* q = values.data_ptr<int8_t>();
  const float* s = scales.data_ptr<float>();
  // One block of features per task; at::mm inside runs on the task's thread (no nested parallelism).
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor buf = at::empty({kBlock, k}, at::kFloat);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, n - n0);
      DequantizeRows(q, s, k, n0, n0 + nb, buf.data_ptr<float>());
      out32.narrow(1, n0, nb).copy_(at::mm(x32, buf.narrow(0, 0, nb).t()));
    }
  });
  return x.scalar_type() == at::kFloat ? out32 : out32.to(x.scalar_type());
}

}  // namespace deltaserve::kernels::internal
