// What the decode-step kernels for the common head shapes share (recurrent_step_tiled_cuda.cu and
// recurrent_step_streamed_cuda.cu): the codec of one thread's share of a stored state row, and the arguments.
#ifndef DELTASERVE_KERNELS_CUDA_DECODE_STEP_COMMON_CUH_
#define DELTASERVE_KERNELS_CUDA_DECODE_STEP_COMMON_CUH_

#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "../src/state_quant.h"

namespace deltaserve::kernels::internal {

constexpr int kStepThreads = 256;
constexpr int kStepWarps = kStepThreads / 32;

// One thread's share of a stored row (Raw: 16 bytes, or 8 for 1-byte states) <-> kVec floats.
template <typename Store>
struct Codec;

template <>
struct Codec<float> {
  static constexpr int kVec = 4;
  using Raw = uint4;
  __device__ static void Decode(const uint4& r, float (&x)[4]) {
    x[0] = __uint_as_float(r.x);
    x[1] = __uint_as_float(r.y);
    x[2] = __uint_as_float(r.z);
    x[3] = __uint_as_float(r.w);
  }
  // y: values already divided by the row's scale (1 for unscaled dtypes); clamp and rounding as stored.
  __device__ static uint4 Encode(const float (&y)[4], float, bool, uint32_t, int) {
    return make_uint4(__float_as_uint(y[0]), __float_as_uint(y[1]), __float_as_uint(y[2]),
                      __float_as_uint(y[3]));
  }
};

template <>
struct Codec<c10::BFloat16> {
  static constexpr int kVec = 8;
  using Raw = uint4;
  __device__ static void Decode(const uint4& r, float (&x)[8]) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      x[2 * p] = __uint_as_float(w[p] << 16);
      x[2 * p + 1] = __uint_as_float(w[p] & 0xffff0000u);
    }
  }
  __device__ static uint4 Encode(const float (&y)[8], float, bool, uint32_t, int) {
    uint32_t w[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(y[2 * p], y[2 * p + 1]);  // round to nearest even
      w[p] = *reinterpret_cast<const uint32_t*>(&h);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
};

// 1-byte states move 8 bytes per thread and row: 16 would double the column accumulators and leave
// room for only two blocks per SM.
template <>
struct Codec<int8_t> {
  static constexpr int kVec = 8;
  using Raw = uint2;
  // Byte b as (b + 128) in a float's low mantissa bits: 2^23 + 128 + s, minus the offset, is s exactly.
  __device__ static void Decode(const uint2& r, float (&x)[8]) {
    const uint32_t w[2] = {r.x ^ 0x80808080u, r.y ^ 0x80808080u};
#pragma unroll
    for (int p = 0; p < 2; ++p) {
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        x[4 * p + m] = __uint_as_float(__byte_perm(w[p], 0x4b000000u, 0x7440u | m)) - 8388736.0f;
      }
    }
  }
  // Round to nearest even (as nearbyint) or stochastically (floor(y + u)), clamp to +-qmax. Adding
  // 1.5 * 2^23 leaves the rounded integer's two's-complement low byte in the float's low byte.
  // Rounded to nearest, no clamp is needed: y is the row's (or head's) values divided by max / qmax, so
  // |y| <= qmax within a few ulps and rounds to at most qmax (an integer), as the CPU's clamp gives.
  // Saving the two min/max per value matters: the 1-byte step is bound by its instructions.
  __device__ static uint2 Encode(const float (&y)[8], float qmax, bool stochastic, uint32_t row_key,
                                 int col) {
    uint32_t b[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float t = y[e];
      if (stochastic) {
        t = floorf(t + RowUniform(row_key, static_cast<uint32_t>(col + e)));
        t = fminf(fmaxf(t, -qmax), qmax);
      }
      b[e] = __float_as_uint(t + 12582912.0f);
    }
    uint32_t w[2];
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const uint32_t lo = __byte_perm(b[4 * p], b[4 * p + 1], 0x0040u);
      const uint32_t hi = __byte_perm(b[4 * p + 2], b[4 * p + 3], 0x0040u);
      w[p] = __byte_perm(lo, hi, 0x5410u);
    }
    return make_uint2(w[0], w[1]);
  }
};

template <>
struct Codec<c10::Float8_e4m3fn> {
  static constexpr int kVec = 8;
  using Raw = uint2;
  __device__ static void Decode(const uint2& r, float (&x)[8]) {
    const uint32_t w[2] = {r.x, r.y};
#pragma unroll
    for (int p = 0; p < 2; ++p) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const __half2_raw hr =
            __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w[p] >> (16 * h)), __NV_E4M3);
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&hr));
        x[4 * p + 2 * h] = f.x;
        x[4 * p + 2 * h + 1] = f.y;
      }
    }
  }
  __device__ static uint2 Encode(const float (&y)[8], float qmax, bool, uint32_t, int) {
    uint32_t w[2];
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      uint32_t pair[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float a = fminf(fmaxf(y[4 * p + 2 * h], -qmax), qmax);
        const float b = fminf(fmaxf(y[4 * p + 2 * h + 1], -qmax), qmax);
        pair[h] = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
      }
      w[p] = pair[0] | (pair[1] << 16);
    }
    return make_uint2(w[0], w[1]);
  }
};

template <typename In>
struct StepArgs {
  float* scales;
  const In *q, *k, *v;
  int64_t q_stride, k_stride, v_stride;  // elements between batch rows; heads and dims are contiguous
  const float *g, *beta;
  const int64_t* slots;
  In* out;
  int heads, key_heads, group;
  int64_t pool_slots;
  bool l2norm;
  float qscale;
  StepQuantization quant;
};

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_CUDA_DECODE_STEP_COMMON_CUH_
