// What the decode-step kernels for the common head shapes share (recurrent_step_tiled_cuda.cu and
// recurrent_step_streamed_cuda.cu): the codec of one thread's share of a stored state row, and the arguments.
#ifndef DELTASERVE_KERNELS_CUDA_DECODE_STEP_COMMON_CUH_
#define DELTASERVE_KERNELS_CUDA_DECODE_STEP_COMMON_CUH_

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "../src/recurrent_step_impl.h"
#include "../src/state_quant.h"

namespace deltaserve::kernels::internal {

constexpr int kStepThreads = 256;
constexpr int kStepWarps = kStepThreads / 32;

// 8 bytes of a 1-byte state as two 4-byte words, through the codec's DecodeWord.
template <typename C>
__device__ __forceinline__ void DecodeTwoWords(const uint2& r, float (&x)[8]) {
  float lo[4], hi[4];
  C::template DecodeWord<4>(r.x, lo);
  C::template DecodeWord<4>(r.y, hi);
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    x[m] = lo[m];
    x[4 + m] = hi[m];
  }
}

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
  // y: the new values; inv: 1 / the row's scale (1 for unscaled dtypes); clamp and rounding as stored.
  __device__ static uint4 Encode(const float (&y)[4], float, float, bool, uint32_t, int) {
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
  __device__ static uint4 Encode(const float (&y)[8], float, float, bool, uint32_t, int) {
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
  // The first N (2 or 4) bytes of a word.
  template <int N>
  __device__ static void DecodeWord(uint32_t w, float (&x)[N]) {
    w ^= 0x80808080u;
#pragma unroll
    for (int m = 0; m < N; ++m) x[m] = __uint_as_float(__byte_perm(w, 0x4b000000u, 0x7440u | m)) - 8388736.0f;
  }
  __device__ static void Decode(const uint2& r, float (&x)[8]) { DecodeTwoWords<Codec>(r, x); }
  // y * inv rounded to nearest even or stochastically (floor(y inv + u)), clamped to +-qmax. Adding
  // 1.5 * 2^23 leaves the rounded integer's two's-complement low byte in the float's low byte; to nearest,
  // the multiply and the add are one fused operation, which rounds the exact product once (the CPU rounds
  // the float product: the two differ only where that product lies within an ulp of a half, and by one).
  // Rounded to nearest, no clamp is needed: inv is qmax over the row's (or head's) max, so |y inv| <= qmax
  // within a few ulps and rounds to at most qmax (an integer), as the CPU's clamp gives.
  // Saving instructions matters: the 1-byte step is bound by them.
  __device__ static uint2 Encode(const float (&y)[8], float inv, float qmax, bool stochastic,
                                 uint32_t row_key, int col) {
    uint32_t b[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float t;
      if (stochastic) {
        t = floorf(__fmul_rn(y[e], inv) + RowUniform(row_key, static_cast<uint32_t>(col + e)));
        t = __fadd_rn(fminf(fmaxf(t, -qmax), qmax), 12582912.0f);
      } else {
        t = __fmaf_rn(y[e], inv, 12582912.0f);
      }
      b[e] = __float_as_uint(t);
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
  // The first N (2 or 4) bytes of a word.
  template <int N>
  __device__ static void DecodeWord(uint32_t w, float (&x)[N]) {
#pragma unroll
    for (int h = 0; h < N / 2; ++h) {
      const __half2_raw hr =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(w >> (16 * h)), __NV_E4M3);
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&hr));
      x[2 * h] = f.x;
      x[2 * h + 1] = f.y;
    }
  }
  __device__ static void Decode(const uint2& r, float (&x)[8]) { DecodeTwoWords<Codec>(r, x); }
  __device__ static uint2 Encode(const float (&y)[8], float inv, float qmax, bool, uint32_t, int) {
    uint32_t w[2];
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      uint32_t pair[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float a = fminf(fmaxf(__fmul_rn(y[4 * p + 2 * h], inv), -qmax), qmax);
        const float b = fminf(fmaxf(__fmul_rn(y[4 * p + 2 * h + 1], inv), -qmax), qmax);
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

// The kernels' arguments from the step's inputs, the pool and the output (host side).
template <typename In>
inline StepArgs<In> MakeStepArgs(const DecodeInputs& in, const RecurrentStatePool& pool,
                                 const at::Tensor& out) {
  StepArgs<In> a;
  a.heads = static_cast<int>(in.v.size(1));
  a.key_heads = static_cast<int>(in.q.size(1));
  a.group = static_cast<int>(in.group);
  a.pool_slots = pool.slots();
  a.scales = IsScaled(pool.dtype) ? pool.scales.data_ptr<float>() : nullptr;
  a.q = reinterpret_cast<const In*>(in.q.data_ptr());
  a.k = reinterpret_cast<const In*>(in.k.data_ptr());
  a.v = reinterpret_cast<const In*>(in.v.data_ptr());
  a.q_stride = in.q.stride(0);
  a.k_stride = in.k.stride(0);
  a.v_stride = in.v.stride(0);
  a.g = in.g.data_ptr<float>();
  a.beta = in.beta.data_ptr<float>();
  a.slots = in.slots.data_ptr<int64_t>();
  a.out = reinterpret_cast<In*>(out.data_ptr());
  a.l2norm = in.l2norm;
  a.qscale = in.scale;
  a.quant = QuantizationOf(pool);
  return a;
}

// The register-tiled decode kernels' instantiations, chosen once for all of them: calls
// f(Store{}, In{}, Dim{}, Stochastic{}) with the pool's storage type, the inputs' type (bfloat16, else
// float), the head size (std::integral_constant 128, else 64: the tiled shapes, dk = dv) and whether INT8
// values round stochastically (std::bool_constant; only an int8 store ever gets true).
template <typename Store, typename In, class F>
void DispatchDimsAndRounding(const RecurrentStatePool& pool, int64_t dk, F& f) {
  auto rounding = [&](auto dim) {
    if constexpr (std::is_same<Store, int8_t>::value) {
      if (IsStochastic(pool.dtype)) return f(Store{}, In{}, dim, std::true_type{});
    }
    f(Store{}, In{}, dim, std::false_type{});
  };
  if (dk == 128) {
    rounding(std::integral_constant<int, 128>{});
  } else {
    rounding(std::integral_constant<int, 64>{});
  }
}

template <typename In, class F>
void DispatchStore(const RecurrentStatePool& pool, int64_t dk, F& f) {
  switch (pool.dtype) {
    case StateDtype::kFloat32:
      return DispatchDimsAndRounding<float, In>(pool, dk, f);
    case StateDtype::kBFloat16:
      return DispatchDimsAndRounding<c10::BFloat16, In>(pool, dk, f);
    case StateDtype::kFloat8E4M3:
      return DispatchDimsAndRounding<c10::Float8_e4m3fn, In>(pool, dk, f);
    default:
      return DispatchDimsAndRounding<int8_t, In>(pool, dk, f);  // every INT8 variant
  }
}

template <class F>
void DispatchTiledStep(const RecurrentStatePool& pool, at::ScalarType input, int64_t dk, F&& f) {
  if (input == at::kBFloat16) {
    DispatchStore<c10::BFloat16>(pool, dk, f);
  } else {
    DispatchStore<float>(pool, dk, f);
  }
}

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_CUDA_DECODE_STEP_COMMON_CUH_
