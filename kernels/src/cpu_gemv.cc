// See cpu_gemv.h. A decode step's projections are memory-bound: all that matters is reading each weight
// once, at the memory's speed, on every core. MKL's sgemv for one row runs on one thread here (the other
// OpenMP thread spins), so the model decoded at about half the bandwidth; this kernel splits the output
// features over at::parallel_for and keeps 32 fp32 lanes of partial sums per row of x in registers.
// The inner bodies take at most kGemvTileRows (4) rows, so the 8 accumulators fit the 16 vector registers of
// AVX2 (the dense float bodies 8 rows on AVX-512, whose 32 registers hold 16); more rows (up to
// kCpuGemvMaxRows) run as tiles over blocks of weight rows that stay in the core's cache between tiles
// (ForRowTiles), so the weight is still read from memory once.
#include "cpu_gemv.h"

// The 64-byte vector helpers are inlined into each target clone; GCC's note that passing such vectors by
// value without AVX-512 changes the ABI concerns only out-of-line calls, which there are none of.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12's avx512fintrin.h builds its conversions on _mm512_undefined_*, which -Wmaybe-uninitialized flags.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "cpu_gemv_int8_dot.h"
#include "cpu_vec16.h"
#include "fused_ops_impl.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace deltaserve::kernels::internal {
namespace {

// Rows of x one pass of the inner bodies multiplies into each weight row.
constexpr int64_t kGemvTileRows = 4;
// The dense float bodies' tile on AVX-512: a step of 8 sequences in one pass over the weight (in two tiles
// of 4 the second read each block again from L2 and the 8-row step cost 1.8x the 1-row one on a 2-core VM).
constexpr int64_t kGemvTileRowsAvx512 = 8;
// Weight bytes a block of ForRowTiles spans: well inside a core's L2 (1 MB and up on the x86 servers this
// runs on), so the second and later row tiles read the block from cache.
constexpr size_t kGemvBlockBytes = 192 * 1024;

// dot(m0, r, b0, b1) for the rows of x [m0, m0 + r) against weight rows [b0, b1), covering rows x [n0, n1):
// up to `tile` rows in one call; more in tiles of `tile` over blocks of weight rows of about
// kGemvBlockBytes, every tile of a block before the next block.
template <typename F>
void ForRowTiles(int64_t rows, int64_t n0, int64_t n1, size_t weight_row_bytes, F&& dot,
                 int64_t tile = kGemvTileRows) {
  if (rows <= tile) return dot(0, rows, n0, n1);
  const int64_t block = std::max<int64_t>(1, static_cast<int64_t>(kGemvBlockBytes / weight_row_bytes));
  for (int64_t b0 = n0; b0 < n1; b0 += block) {
    const int64_t b1 = std::min(n1, b0 + block);
    for (int64_t m0 = 0; m0 < rows; m0 += tile) dot(m0, std::min(tile, rows - m0), b0, b1);
  }
}

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
      // The row after next, one line per 16 lanes: ahead of the hardware prefetcher at a row's start. Into
      // all cache levels: a non-temporal hint (prefetchnta) held an Intel Xeon to 11 GB/s of its 30.
      for (int v = 0; v < kVecs; ++v) __builtin_prefetch(wr + 2 * k + i + 16 * v, 0, 3);
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

// The dense bodies' tile: 8 rows where the avx512f clones run (the clone the loader picks), else 4.
int64_t DenseTileRows() {
  static const int64_t tile = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? kGemvTileRowsAvx512 : kGemvTileRows;
  }();
  return tile;
}

// One clone per instruction set, picked when the library loads, so a portable build still runs
// AVX-512 where the CPU has it.
template <typename W>
__attribute__((always_inline)) inline void DotRowsAnyR(const float* x, int64_t rows, int64_t k, const W* w,
                                                       int64_t n0, int64_t n1, float* y, int64_t n_total,
                                                       bool accumulate) {
  switch (rows) {  // 5-8 only on AVX-512 (DenseTileRows)
    case 1: return DotRows<1>(x, k, w, n0, n1, y, n_total, accumulate);
    case 2: return DotRows<2>(x, k, w, n0, n1, y, n_total, accumulate);
    case 3: return DotRows<3>(x, k, w, n0, n1, y, n_total, accumulate);
    case 4: return DotRows<4>(x, k, w, n0, n1, y, n_total, accumulate);
    case 5: return DotRows<5>(x, k, w, n0, n1, y, n_total, accumulate);
    case 6: return DotRows<6>(x, k, w, n0, n1, y, n_total, accumulate);
    case 7: return DotRows<7>(x, k, w, n0, n1, y, n_total, accumulate);
    default: return DotRows<8>(x, k, w, n0, n1, y, n_total, accumulate);
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

// Quantized weights: GCC 12 turns a vector-extension conversion of 16 int8 lanes to float into 16 scalar
// conversions (5 tok/s on the 0.8B model), so the GEMV has one body per instruction set written with
// intrinsics, picked once from the CPU's features.
using DotRowsFn = void (*)(const float* x, int64_t rows, int64_t k, const int8_t* q, const float* scales,
                           int64_t n0, int64_t n1, float* y, int64_t n_total, bool accumulate);

inline void StoreDot(float s, float* y, int64_t at, bool accumulate) { y[at] = accumulate ? y[at] + s : s; }

// f(std::integral_constant<int, R>{}) for R = rows, 1 to kGemvTileRows: the row count as a compile-time
// constant for the intrinsic bodies below, which are called, not inlined, so the lambda needs no target.
template <typename F>
void WithRows(int64_t rows, F&& f) {
  static_assert(kGemvTileRows == 4, "one case per row count");
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    default: return f(std::integral_constant<int, 4>{});
  }
}

// How a group of 32 weights is stored: INT8, one byte a value; 4-bit (linear_weight.h's layout), 16 bytes
// with value j in byte j's low nibble and value j + 16 in its high one, each stored as value + 8. Each
// format gives the group as scaled float vectors for one instruction set: two of 16 lanes (AVX-512) or four of
// 8 (AVX2), in the order of x's 32 values.
struct Int8Group {
  static constexpr int64_t kBytes = 32;
  static int Value(const uint8_t* g, int i) { return static_cast<int8_t>(g[i]); }  // value i, 0..31
  __attribute__((target("avx512f"))) static void Load(const uint8_t* g, __m512 s, __m512 w[2]) {
    for (int v = 0; v < 2; ++v) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16 * v));
      w[v] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), s);
    }
  }
  __attribute__((target("avx2,fma"))) static void Load(const uint8_t* g, __m256 s, __m256 w[4]) {
    for (int v = 0; v < 4; ++v) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(g + 8 * v));
      w[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), s);
    }
  }
};
struct Int4Group {
  static constexpr int64_t kBytes = 16;
  static int Value(const uint8_t* g, int i) { return (i < 16 ? g[i] & 15 : g[i - 16] >> 4) - 8; }
  __attribute__((target("avx512f"))) static void Load(const uint8_t* g, __m512 s, __m512 w[2]) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
    const __m512i eight = _mm512_set1_epi32(8);
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(b, _mm512_set1_epi32(15)), eight)), s);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight)), s);
  }
  __attribute__((target("avx2,fma"))) static void Load(const uint8_t* g, __m256 s, __m256 w[4]) {
    const __m256i low4 = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
    for (int half = 0; half < 2; ++half) {  // values 8 half .. + 8 (low nibbles), 16 + 8 half .. + 8 (high)
      const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g + 8 * half)));
      w[half] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, low4), eight)), s);
      w[2 + half] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 4), eight)), s);
    }
  }
};

// AVX-512: a group of 32 values is two 16-lane vectors (converted and scaled), multiplied into all R rows;
// one row alternates two accumulator pairs so four FMA chains are in flight. The weight row two ahead is
// prefetched a cache line at a time.
template <int R, class G>
__attribute__((target("avx512f"))) void DotRowsAvx512R(const float* x, int64_t k, const int8_t* q,
                                                       const float* scales, int64_t n0, int64_t n1, float* y,
                                                       int64_t n_total, bool accumulate) {
  constexpr int kPairs = R == 1 ? 2 : 1;
  constexpr int64_t kGroupsPerLine = 64 / G::kBytes;
  const int64_t groups = k / 32, row_bytes = groups * G::kBytes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* qr = reinterpret_cast<const uint8_t*>(q) + n * row_bytes;
    const float* sr = scales + n * groups;
    __m512 acc[R][2 * kPairs];
    for (int m = 0; m < R; ++m)
      for (int v = 0; v < 2 * kPairs; ++v) acc[m][v] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      if (g % kGroupsPerLine == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(qr + 2 * row_bytes + g * G::kBytes), _MM_HINT_T0);
      }
      __m512 w[2];
      G::Load(qr + g * G::kBytes, _mm512_set1_ps(sr[g]), w);
      const int slot = kPairs == 2 ? 2 * static_cast<int>(g & 1) : 0;
      for (int m = 0; m < R; ++m) {
        const float* xg = x + m * k + g * 32;
        acc[m][slot] = _mm512_fmadd_ps(_mm512_loadu_ps(xg), w[0], acc[m][slot]);
        acc[m][slot + 1] = _mm512_fmadd_ps(_mm512_loadu_ps(xg + 16), w[1], acc[m][slot + 1]);
      }
    }
    for (int m = 0; m < R; ++m) {
      __m512 t = acc[m][0];
      for (int v = 1; v < 2 * kPairs; ++v) t = _mm512_add_ps(t, acc[m][v]);
      StoreDot(_mm512_reduce_add_ps(t), y, m * n_total + n, accumulate);
    }
  }
}

template <class G>
void DotRowsAvx512(const float* x, int64_t rows, int64_t k, const int8_t* q, const float* scales, int64_t n0,
                   int64_t n1, float* y, int64_t n_total, bool accumulate) {
  WithRows(rows, [&](auto r) { DotRowsAvx512R<r, G>(x, k, q, scales, n0, n1, y, n_total, accumulate); });
}

// AVX2: a group is four 8-lane vectors.
template <int R, class G>
__attribute__((target("avx2,fma"))) void DotRowsAvx2R(const float* x, int64_t k, const int8_t* q,
                                                      const float* scales, int64_t n0, int64_t n1, float* y,
                                                      int64_t n_total, bool accumulate) {
  constexpr int64_t kGroupsPerLine = 64 / G::kBytes;
  const int64_t groups = k / 32, row_bytes = groups * G::kBytes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* qr = reinterpret_cast<const uint8_t*>(q) + n * row_bytes;
    const float* sr = scales + n * groups;
    __m256 acc[R][4];
    for (int m = 0; m < R; ++m)
      for (int v = 0; v < 4; ++v) acc[m][v] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      if (g % kGroupsPerLine == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(qr + 2 * row_bytes + g * G::kBytes), _MM_HINT_T0);
      }
      __m256 w[4];
      G::Load(qr + g * G::kBytes, _mm256_set1_ps(sr[g]), w);
      for (int m = 0; m < R; ++m)
        for (int v = 0; v < 4; ++v)
          acc[m][v] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * k + g * 32 + 8 * v), w[v], acc[m][v]);
    }
    for (int m = 0; m < R; ++m) {
      const __m256 t = _mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3]));
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      StoreDot(_mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1))), y, m * n_total + n, accumulate);
    }
  }
}

template <class G>
void DotRowsAvx2(const float* x, int64_t rows, int64_t k, const int8_t* q, const float* scales, int64_t n0,
                 int64_t n1, float* y, int64_t n_total, bool accumulate) {
  WithRows(rows, [&](auto r) { DotRowsAvx2R<r, G>(x, k, q, scales, n0, n1, y, n_total, accumulate); });
}

// Any x86-64: plain loops (correct, slower).
template <class G>
void DotRowsGeneric(const float* x, int64_t rows, int64_t k, const int8_t* q, const float* scales, int64_t n0,
                    int64_t n1, float* y, int64_t n_total, bool accumulate) {
  const int64_t groups = k / 32;
  const uint8_t* qb = reinterpret_cast<const uint8_t*>(q);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < rows; ++m) {
      float sum = 0;
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t* group = qb + (n * groups + g) * G::kBytes;
        float part = 0;
        for (int i = 0; i < 32; ++i) part += x[m * k + g * 32 + i] * static_cast<float>(G::Value(group, i));
        sum += part * scales[n * groups + g];
      }
      StoreDot(sum, y, m * n_total + n, accumulate);
    }
  }
}

std::atomic<int> isa_override{static_cast<int>(CpuIsa::kAuto)};

CpuIsa DetectIsa() {
  __builtin_cpu_init();
  if (CpuHasInt8Dot()) return CpuIsa::kAvx512Vnni;
  if (__builtin_cpu_supports("avx512f")) return CpuIsa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
  return CpuIsa::kGeneric;
}

// The body for the CPU, or the one a test asked for.
CpuIsa QuantizedIsa() {
  static const CpuIsa detected = DetectIsa();
  const CpuIsa isa = static_cast<CpuIsa>(isa_override.load(std::memory_order_relaxed));
  return isa == CpuIsa::kAuto ? detected : isa;
}

// The float-activation body of an instruction set, by the values' width.
DotRowsFn PickDotRows(CpuIsa isa, bool int4) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return int4 ? DotRowsAvx512<Int4Group> : DotRowsAvx512<Int8Group>;
    case CpuIsa::kAvx2:
      return int4 ? DotRowsAvx2<Int4Group> : DotRowsAvx2<Int8Group>;
    default:
      return int4 ? DotRowsGeneric<Int4Group> : DotRowsGeneric<Int8Group>;
  }
}

// 16 int8 values as float32 (auto-vectorised in each clone below; for dequantizing whole rows).
inline F16 LoadF16(const int8_t* p) {
  F16 v;
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(p[i]);
  return v;
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

// Rows [n0, n1) of a 4-bit weight as float32 into dst [n1 - n0, K].
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void DequantizeRowsInt4(
    const uint8_t* q, const float* scales, int64_t k, int64_t n0, int64_t n1, float* dst) {
  const int64_t groups = k / 32;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const float s = scales[n * groups + g];
      const uint8_t* src = q + n * (k / 2) + g * 16;
      float* d = dst + (n - n0) * k + g * 32;
      for (int i = 0; i < 16; ++i) {
        d[i] = static_cast<float>((src[i] & 15) - 8) * s;
        d[i + 16] = static_cast<float>((src[i] >> 4) - 8) * s;
      }
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

void SetCpuGemvQuantizedIsaForTesting(CpuIsa isa) { isa_override.store(static_cast<int>(isa)); }

bool CpuGemvQuantizesActivations() { return QuantizedIsa() == CpuIsa::kAvx512Vnni; }

bool CpuGemvQuantizedApplies(const at::Tensor& x) {
  const int64_t k = x.size(-1);
  return k > 0 && x.numel() / k <= kCpuGemvMaxRows && RowStride(x) >= 0;
}

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
  const size_t row_bytes = static_cast<size_t>(k) * weight.element_size();
  at::parallel_for(0, n, 64, [&](int64_t n0, int64_t n1) {
    ForRowTiles(
        rows, n0, n1, row_bytes,
        [&](int64_t m0, int64_t r, int64_t b0, int64_t b1) {
          if (bf16_weight) {
            DotRowsBf16(io.x + m0 * k, r, k, reinterpret_cast<const uint16_t*>(weight.data_ptr()), b0, b1,
                        io.y + m0 * n, n, io.add_in_place);
          } else {
            DotRowsF32(io.x + m0 * k, r, k, weight.data_ptr<float>(), b0, b1, io.y + m0 * n, n,
                       io.add_in_place);
          }
        },
        DenseTileRows());
  });
  FinishGemv(io, rows, n, out, accumulate);
}

void CpuGemvQuantized(const at::Tensor& x, int64_t row_stride, const LinearWeight& w, at::Tensor& out,
                      bool accumulate, bool silu_and_mul) {
  const at::Tensor& values = w.weight;
  const int64_t n = w.out_features(), k = w.in_features();
  const int64_t rows = x.numel() / x.size(-1);
  thread_local std::vector<float> staged, product;
  const GemvIo io = PrepareGemv(x, rows, row_stride, k, n, out, accumulate, silu_and_mul, staged, product);
  const int8_t* q = reinterpret_cast<const int8_t*>(values.data_ptr());
  const float* s = w.scales.data_ptr<float>();
  const size_t row_bytes = static_cast<size_t>(values.size(1));
  const CpuIsa isa = QuantizedIsa();
  const bool int8_dot = isa == CpuIsa::kAvx512Vnni;
  // x quantized once per call; the workers read the caller's buffer (a thread_local named inside the lambda
  // would be each worker's own).
  thread_local Int8Activations quantized;
  Int8Activations& xq = quantized;
  if (int8_dot) QuantizeActivationsInt8(io.x, rows, k, w.int4(), xq);
  const DotRowsFn dot = int8_dot ? nullptr : PickDotRows(isa, w.int4());
  at::parallel_for(0, n, 64, [&](int64_t n0, int64_t n1) {
    ForRowTiles(rows, n0, n1, row_bytes, [&](int64_t m0, int64_t r, int64_t b0, int64_t b1) {
      if (int8_dot) {
        DotRowsInt8Dot(xq, m0, r, reinterpret_cast<const uint8_t*>(q), s, w.int4(), b0, b1, io.y + m0 * n, n,
                       io.add_in_place);
      } else {
        dot(io.x + m0 * k, r, k, q, s, b0, b1, io.y + m0 * n, n, io.add_in_place);
      }
    });
  });
  FinishGemv(io, rows, n, out, accumulate);
}

at::Tensor CpuLinearQuantized(const at::Tensor& x, const LinearWeight& w) {
  const at::Tensor& values = w.weight;
  const int64_t n = w.out_features(), k = w.in_features();
  const at::Tensor x32 = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  at::Tensor out32 = at::empty({x.size(0), n}, x32.options());
  constexpr int64_t kBlock = 128;  // 128 x K float32: 0.5 MB at K = 1024, cache-resident while multiplied
  const float* s = w.scales.data_ptr<float>();
  // One block of features per task; at::mm inside runs on the task's thread (no nested parallelism). The
  // workers take the caller's InferenceMode (thread-local): out32 may be an inference tensor.
  const bool inference = c10::InferenceMode::is_enabled();
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    c10::InferenceMode guard(inference);
    at::Tensor buf = at::empty({kBlock, k}, at::kFloat);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * kBlock, nb = std::min(kBlock, n - n0);
      if (w.int4()) {
        DequantizeRowsInt4(values.data_ptr<uint8_t>(), s, k, n0, n0 + nb, buf.data_ptr<float>());
      } else {
        DequantizeRows(values.data_ptr<int8_t>(), s, k, n0, n0 + nb, buf.data_ptr<float>());
      }
      out32.narrow(1, n0, nb).copy_(at::mm(x32, buf.narrow(0, 0, nb).t()));
    }
  });
  return x.scalar_type() == at::kFloat ? out32 : out32.to(x.scalar_type());
}

}  // namespace deltaserve::kernels::internal
