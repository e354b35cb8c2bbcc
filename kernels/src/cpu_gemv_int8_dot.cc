// See cpu_gemv_int8_dot.h. The float bodies of cpu_gemv.cc convert each weight byte to a float lane and
// scale it before the FMA: about 18 instructions per 64 INT8 values and 24 per 64 4-bit ones for one row,
// which bounds the decode on two cores well below the memory's speed (4-bit read half the bytes of INT8 and
// decoded no faster). vpdpbusd multiplies 64 byte pairs into 16 int32 sums in one instruction, so a chunk
// of 64 values costs one dot, one conversion and one FMA per row (plus the scale product), and the weight's
// unpacking is shared by every row. vpdpbusd takes one unsigned and one signed operand:
// - INT8 weights (signed) take x as unsigned, q + 128, and subtract 128 times each lane's weight sum, which
//   one more vpdpbusd against ones gives per chunk;
// - 4-bit weights are stored unsigned already (value + 8), so x stays signed and each lane's -8 times its
//   activation sum is computed once per row, at quantization.
#include "cpu_gemv_int8_dot.h"

// GCC 12's avx512fintrin.h builds its conversions on _mm512_undefined_*, which -Wmaybe-uninitialized flags.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

namespace deltaserve::kernels::internal {
namespace {

constexpr int64_t kChunk = 64;  // values per chunk: two groups of 32
constexpr int64_t kLanes = 16;  // int32 lanes of a chunk's dot

// Where value i (0..31) of the chunk's group `half` (0 or 1) sits among the chunk's 64 bytes: INT8 rows are
// in order; a 4-bit chunk (32 bytes, two groups of 16) unpacks to the low nibbles of both groups, then the
// high ones, so value i < 16 of a group is in its low nibble and value i + 16 in the high one.
int64_t BytePosition(bool int4, int64_t half, int64_t i) {
  if (!int4) return 32 * half + i;
  return i < 16 ? 16 * half + i : 32 + 16 * half + (i - 16);
}

template <int R, bool kInt4>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void DotRowsR(const Int8Activations& x, int64_t m0,
                                                                    const uint8_t* q, const float* scales,
                                                                    int64_t n0, int64_t n1, float* y,
                                                                    int64_t n_total, bool accumulate) {
  const int64_t k = x.k, groups = k / 32, chunks = x.chunks, full = groups / 2;
  const int64_t row_bytes = kInt4 ? k / 2 : k, chunk_bytes = kInt4 ? 32 : 64;
  // Each lane's group within the chunk (0 or 1), to spread the weight row's two scales over the lanes.
  const __m512i scale_lane = kInt4 ? _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0)
                                   : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i ones = _mm512_set1_epi8(1), low4 = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
  const uint8_t* xb[R];
  const float* xs[R];
  const int32_t* xo[R];
  for (int m = 0; m < R; ++m) {
    xb[m] = x.bytes.data() + (m0 + m) * chunks * kChunk;
    xs[m] = x.scales.data() + (m0 + m) * chunks * kLanes;
    xo[m] = x.offsets.data() + (m0 + m) * chunks * kLanes;
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* qr = q + n * row_bytes;
    const float* sr = scales + n * groups;
    __m512 acc[R];
    for (int m = 0; m < R; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const uint8_t* qc = qr + c * chunk_bytes;
      // The row after next, a line at a time: ahead of the hardware prefetcher at a row's start.
      _mm_prefetch(reinterpret_cast<const char*>(qc + 2 * row_bytes), _MM_HINT_T0);
      const bool tail = c == full;  // the last chunk of an odd group count holds one group
      const __m128 pair = tail ? _mm_load_ss(sr + 2 * c)
                               : _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sr + 2 * c)));
      const __m512 sw = _mm512_permutexvar_ps(scale_lane, _mm512_castps128_ps512(pair));
      __m512i w, base = zero;
      if constexpr (kInt4) {
        const __m256i b = tail ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qc)))
                               : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qc));
        w = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(b), _mm256_srli_epi16(b, 4), 1), low4);
      } else {
        w = tail ? _mm512_maskz_loadu_epi8(0xffffffffull, qc) : _mm512_loadu_si512(qc);
        base = _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, w), 7));
      }
      for (int m = 0; m < R; ++m) {
        const __m512i xv = _mm512_loadu_si512(xb[m] + c * kChunk);
        const __m512i d = kInt4 ? _mm512_dpbusd_epi32(_mm512_loadu_si512(xo[m] + c * kLanes), w, xv)
                                : _mm512_dpbusd_epi32(base, xv, w);
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw, _mm512_loadu_ps(xs[m] + c * kLanes)),
                                 acc[m]);
      }
    }
    for (int m = 0; m < R; ++m) {
      const float s = _mm512_reduce_add_ps(acc[m]);
      float& out = y[m * n_total + n];
      out = accumulate ? out + s : s;
    }
  }
}

template <bool kInt4>
void DotRowsAnyR(const Int8Activations& x, int64_t m0, int64_t rows, const uint8_t* q, const float* scales,
                 int64_t n0, int64_t n1, float* y, int64_t n_total, bool accumulate) {
  switch (rows) {
    case 1: return DotRowsR<1, kInt4>(x, m0, q, scales, n0, n1, y, n_total, accumulate);
    case 2: return DotRowsR<2, kInt4>(x, m0, q, scales, n0, n1, y, n_total, accumulate);
    case 3: return DotRowsR<3, kInt4>(x, m0, q, scales, n0, n1, y, n_total, accumulate);
    default: return DotRowsR<4, kInt4>(x, m0, q, scales, n0, n1, y, n_total, accumulate);
  }
}

}  // namespace

bool CpuHasInt8Dot() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

void QuantizeActivationsInt8(const float* x, int64_t rows, int64_t k, bool int4, Int8Activations& out,
                             float* dequantized) {
  const int64_t groups = k / 32, chunks = (groups + 1) / 2;
  out.rows = rows;
  out.k = k;
  out.chunks = chunks;
  // Padding reads as x = 0: byte 128 (q + 128) for INT8 weights, 0 for 4-bit ones; its scale is 0 as well.
  out.bytes.assign(static_cast<size_t>(rows * chunks * kChunk), int4 ? 0 : 128);
  out.scales.assign(static_cast<size_t>(rows * chunks * kLanes), 0.0f);
  out.offsets.assign(static_cast<size_t>(rows * chunks * kLanes), 0);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + m * k + g * 32;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xg[i]));
      const float s = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
      const int64_t c = g / 2, half = g % 2, at = m * chunks + c;
      uint8_t* bytes = out.bytes.data() + at * kChunk;
      for (int i = 0; i < 32; ++i) {
        const int qi = static_cast<int>(std::nearbyint(xg[i] * inv));  // within +-127
        if (dequantized) dequantized[m * k + g * 32 + i] = static_cast<float>(qi) * s;
        bytes[BytePosition(int4, half, i)] = static_cast<uint8_t>(int4 ? qi : qi + 128);
      }
      // Lane l sums bytes 4l .. 4l + 3: its group is the one those bytes came from.
      for (int64_t l = 0; l < kLanes; ++l) {
        const bool mine = int4 ? (l / 4) % 2 == half : l / 8 == half;
        if (!mine) continue;
        out.scales[at * kLanes + l] = s;
        if (int4) {
          int32_t sum = 0;
          for (int b = 0; b < 4; ++b) sum += static_cast<int8_t>(bytes[4 * l + b]);
          out.offsets[at * kLanes + l] = -8 * sum;
        }
      }
    }
  }
}

void DotRowsInt8Dot(const Int8Activations& x, int64_t m0, int64_t rows, const uint8_t* q, const float* scales,
                    bool int4, int64_t n0, int64_t n1, float* y, int64_t n_total, bool accumulate) {
  if (int4) return DotRowsAnyR<true>(x, m0, rows, q, scales, n0, n1, y, n_total, accumulate);
  DotRowsAnyR<false>(x, m0, rows, q, scales, n0, n1, y, n_total, accumulate);
}

}  // namespace deltaserve::kernels::internal
