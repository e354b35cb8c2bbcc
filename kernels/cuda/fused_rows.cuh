// Device helpers shared by the fused row kernels (norms, SwiGLU, q/k norm + rotary): grouped loads and
// stores as floats (16-byte vectors where the caller checked alignment), warp and row sums, SiLU.
#ifndef DELTASERVE_KERNELS_CUDA_FUSED_ROWS_CUH_
#define DELTASERVE_KERNELS_CUDA_FUSED_ROWS_CUH_

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace deltaserve::kernels::internal {

template <typename S, int N>
struct alignas(sizeof(S) * N) Pack {
  S v[N];
};

// Loads G consecutive values as floats. When G values span whole 16-byte packs (the vector path) each
// pack is one 16-byte load, so `p` must be 16-byte aligned; otherwise element by element.
template <int G, typename S>
__device__ __forceinline__ void LoadFloats(const S* p, float (&out)[G]) {
  if constexpr ((G * sizeof(S)) % 16 == 0) {
    constexpr int kPer = 16 / sizeof(S);
#pragma unroll
    for (int c = 0; c < G / kPer; ++c) {
      const Pack<S, kPer> pk = reinterpret_cast<const Pack<S, kPer>*>(p)[c];
#pragma unroll
      for (int m = 0; m < kPer; ++m) out[c * kPer + m] = static_cast<float>(pk.v[m]);
    }
  } else {
#pragma unroll
    for (int m = 0; m < G; ++m) out[m] = static_cast<float>(p[m]);
  }
}

// Rounds G floats to S (round to nearest even for bf16, as ATen) and stores them; alignment as LoadFloats.
template <int G, typename S>
__device__ __forceinline__ void StoreFloats(S* p, const float (&in)[G]) {
  if constexpr ((G * sizeof(S)) % 16 == 0) {
    constexpr int kPer = 16 / sizeof(S);
#pragma unroll
    for (int c = 0; c < G / kPer; ++c) {
      Pack<S, kPer> pk;
#pragma unroll
      for (int m = 0; m < kPer; ++m) pk.v[m] = static_cast<S>(in[c * kPer + m]);
      reinterpret_cast<Pack<S, kPer>*>(p)[c] = pk;
    }
  } else {
#pragma unroll
    for (int m = 0; m < G; ++m) p[m] = static_cast<S>(in[m]);
  }
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Sum over the kThreads threads that share a row, returned to all of them. kThreads == 32: one warp,
// no barrier (whole warps may have left). kThreads > 32: the whole block is the row and every thread
// must call this (it contains barriers); `scratch` holds kThreads / 32 floats.
template <int kThreads>
__device__ __forceinline__ float RowSum(float x, float* scratch) {
  static_assert(kThreads % 32 == 0, "rows are whole warps");
  x = WarpSum(x);
  if constexpr (kThreads > 32) {
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
    __syncthreads();
    x = 0.0f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) x += scratch[w];
    __syncthreads();  // scratch is free again for a later call
  }
  return x;
}

// silu(x) = x * sigmoid(x) = x / (1 + e^-x), as ATen computes it (-0 for very negative x, no NaN).
__device__ __forceinline__ float Silu(float x) { return x / (1.0f + expf(-x)); }

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_CUDA_FUSED_ROWS_CUH_
