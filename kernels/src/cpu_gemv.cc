// See cpu_gemv.h. A decode step's projections are memory-bound: all that matters is reading each weight
// once, at the memory's speed, on every core. MKL's sgemv for one row runs on one thread here (the other
// OpenMP thread spins), so the model decoded at about half the bandwidth; this kernel splits the output
// features over at::parallel_for and keeps 32 fp32 lanes of partial sums per row of x in registers.
// At most kCpuGemvMaxRows (4) rows, so the 8 accumulators fit the 16 vector registers of AVX2.
#include "cpu_gemv.h"

#include "fused_ops_impl.h"

#include <ATen/Parallel.h>
#include <ATen/ATen.h>

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
  const float* xin = InputRows(x, rows, row_stride, k, silu_and_mul, staged);
  const bool f32_out = out.scalar_type() == at::kFloat;
  float* y = f32_out ? out.data_ptr<float>() : nullptr;
  if (!f32_out) {
    product.resize(static_cast<size_t>(rows * n));
    y = product.data();
  }
  const bool add_in_place = accumulate && f32_out;
  const bool bf16_weight = weight.scalar_type() == at::kBFloat16;
  // Blocks of output features, large enough that a thread's share streams for a while.
  at::parallel_for(0, n, 64, [&](int64_t n0, int64_t n1) {
    if (bf16_weight) {
      DotRowsBf16(xin, rows, k, reinterpret_cast<const uint16_t*>(weight.data_ptr()), n0, n1, y, n, add_in_place);
    } else {
      DotRowsF32(xin, rows, k, weight.data_ptr<float>(), n0, n1, y, n, add_in_place);
    }
  });
  if (!f32_out) {
    uint16_t* po = reinterpret_cast<uint16_t*>(out.data_ptr());
    for (int64_t i = 0; i < rows * n; ++i) po[i] = FloatToBf16(accumulate ? Bf16ToFloat(po[i]) + y[i] : y[i]);
  }
}

}  // namespace deltaserve::kernels::internal
