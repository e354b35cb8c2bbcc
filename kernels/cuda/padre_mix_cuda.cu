// CUDA body of the PADRe mixer between its projections: one warp per token, each lane owning channels
// lane, lane + 32, ... of the model dimension (up to kPadreMixMaxDim), so every read of a neighbouring
// token's projection, and of a tap's weights (stored tap-major), is one coalesced row segment and the
// per-token RMS norm of each term is a warp sum, without barriers. Per term k: Z_k = depthwise K x K
// mixing (zero padding) + g_k * token mean, H_k = H_{k-1} * Z_k, acc += H_k / sqrt(mean_D(H_k^2) + eps) * w_k. The projections stay cuBLAS GEMMs and
// the token means one reduction (PadreMixer): four launches a mixer instead of the composition's dozen.
// Includes no ATen header: the file compiles in seconds.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

#include "../src/padre_mix_cuda.h"
#include "fused_rows.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kWarpsPerBlock = 4;

template <typename T, int kPerLane>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) PadreMixKernel(PadreMixArgs a) {
  const int64_t tokens = static_cast<int64_t>(a.grid_h) * a.grid_w;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (token >= a.batch * tokens) return;  // the whole warp: no warp sum below misses a lane
  const int lane = threadIdx.x % 32;
  const int64_t b = token / tokens;
  const int i = static_cast<int>(token % tokens), r = i / a.grid_w, q = i % a.grid_w;
  const int dim = a.dim, dd = a.degree * dim, k = a.kernel, half = k / 2;
  const T* y = static_cast<const T*>(a.y) + b * tokens * dd;
  const float* mean = a.mean + b * dd;
  const T* mix_weight = static_cast<const T*>(a.mix_weight);
  const T* mix_global = static_cast<const T*>(a.mix_global);
  const T* norm_weight = static_cast<const T*>(a.norm_weight);
  // The window's rows and columns inside the grid (zero padding elsewhere).
  const int dr0 = max(0, half - r), dr1 = min(k, a.grid_h + half - r);
  const int dq0 = max(0, half - q), dq1 = min(k, a.grid_w + half - q);

  float h[kPerLane], acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;
  for (int t = 0; t < a.degree; ++t) {
    float squares = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int c = lane + 32 * j;
      float z = 0.0f;
      if (c < dim) {
        const int ch = t * dim + c;
        z = static_cast<float>(mix_global[ch]) * mean[ch];
        // Tap-major weights: lane-consecutive channels of one tap are adjacent, as are the activations.
        const T* w = mix_weight + ch;
        for (int dr = dr0; dr < dr1; ++dr) {
          const T* row = y + static_cast<int64_t>((r + dr - half) * a.grid_w + q - half) * dd + ch;
          const T* wr = w + static_cast<int64_t>(dr * k) * dd;
          for (int dq = dq0; dq < dq1; ++dq) {
            z += static_cast<float>(wr[static_cast<int64_t>(dq) * dd]) * static_cast<float>(row[static_cast<int64_t>(dq) * dd]);
          }
        }
      }
      h[j] = t == 0 ? z : h[j] * z;  // zero past dim: adds nothing to the squares
      squares += h[j] * h[j];
    }
    const float inv_rms = rsqrtf(WarpSum(squares) / static_cast<float>(dim) + a.eps);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int c = lane + 32 * j;
      if (c < dim) acc[j] += h[j] * inv_rms * static_cast<float>(norm_weight[t * dim + c]);
    }
  }
  T* out = static_cast<T*>(a.out) + token * dim;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int c = lane + 32 * j;
    if (c < dim) out[c] = static_cast<T>(acc[j]);
  }
}

template <typename T>
void Launch(const PadreMixArgs& a, unsigned blocks, cudaStream_t stream) {
  constexpr unsigned kThreads = 32 * kWarpsPerBlock;
  if (a.dim <= 32) {
    PadreMixKernel<T, 1><<<blocks, kThreads, 0, stream>>>(a);
  } else if (a.dim <= 64) {
    PadreMixKernel<T, 2><<<blocks, kThreads, 0, stream>>>(a);
  } else if (a.dim <= 128) {
    PadreMixKernel<T, 4><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    PadreMixKernel<T, 8><<<blocks, kThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void PadreMixCuda(const PadreMixArgs& a) {
  const int64_t tokens = a.batch * a.grid_h * a.grid_w;
  if (tokens == 0) return;
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(a.device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(a.device));
  const auto blocks = static_cast<unsigned>((tokens + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (a.bf16) {
    Launch<c10::BFloat16>(a, blocks, stream);
  } else {
    Launch<float>(a, blocks, stream);
  }
}

}  // namespace deltaserve::kernels::internal
