// y = x W^T for at most 8 rows of bf16 x: decode's projections are reads of the whole weight for a few
// rows, so the kernel is built to stream W at memory bandwidth. Each output row belongs to kSplit warps
// that share its K range (kSplit grows when N is small, so that every SM gets work); each lane keeps
// kUnroll 16-byte loads of W in flight, reads x through L1 (a few KB, reused by every warp), accumulates
// in fp32, and the warps' partial sums meet in shared memory.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "../src/fused_ops_impl.h"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // 16-byte loads of W in flight per lane

struct LinearArgs {
  const uint4* x;  // [rows, x_stride / 8] in 8-bf16 vectors
  const uint4* w;  // [n, k / 8]
  __nv_bfloat16* out;  // [rows, n]
  int64_t x_stride_vec;
  int n, k_vec;
};

__device__ __forceinline__ void Dot8(const uint4& a, const uint4& b, float& acc) {
  const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fa = __bfloat1622float2(pa[i]);
    const float2 fb = __bfloat1622float2(pb[i]);
    acc = fmaf(fa.x, fb.x, acc);
    acc = fmaf(fa.y, fb.y, acc);
  }
}

// Weights are read once: bypass L1 so that x's vectors stay there.
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <int M, int kSplit>
__global__ void __launch_bounds__(kThreads) SmallBatchLinearKernel(LinearArgs a) {
  constexpr int kRowsPerBlock = kWarps / kSplit;
  __shared__ float partial[kWarps][M];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kRowsPerBlock + warp / kSplit;
  const int slice = warp % kSplit;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  if (row < a.n) {
    const uint4* w = a.w + static_cast<int64_t>(row) * a.k_vec;
    constexpr int kStep = 32 * kSplit;
    for (int i0 = slice * 32 + lane; i0 < a.k_vec; i0 += kStep * kUnroll) {
      uint4 wv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u * kStep;
        wv[u] = i < a.k_vec ? LoadStreaming(w + i) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u * kStep;
        if (i < a.k_vec) {
#pragma unroll
          for (int m = 0; m < M; ++m) Dot8(wv[u], __ldg(a.x + m * a.x_stride_vec + i), acc[m]);
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
  }
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) partial[warp][m] = acc[m];
  }
  __syncthreads();
  // One thread per (row of the block, x row) adds the kSplit partial sums in a fixed order.
  if (threadIdx.x < kRowsPerBlock * M) {
    const int r = threadIdx.x / M, m = threadIdx.x % M;
    const int out_row = blockIdx.x * kRowsPerBlock + r;
    if (out_row < a.n) {
      float sum = 0.0f;
#pragma unroll
      for (int s = 0; s < kSplit; ++s) sum += partial[r * kSplit + s][m];
      a.out[static_cast<int64_t>(m) * a.n + out_row] = __float2bfloat16_rn(sum);
    }
  }
}

template <int M>
void LaunchRows(const LinearArgs& a, cudaStream_t stream) {
  // Enough blocks for two per SM where N allows; else split each row's K over more warps.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  auto blocks = [&](int rows_per_block) { return (a.n + rows_per_block - 1) / rows_per_block; };
  if (blocks(kWarps) >= 2 * sms || a.k_vec < 64) {
    SmallBatchLinearKernel<M, 1><<<blocks(kWarps), kThreads, 0, stream>>>(a);
  } else if (blocks(kWarps / 2) >= 2 * sms || a.k_vec < 128) {
    SmallBatchLinearKernel<M, 2><<<blocks(kWarps / 2), kThreads, 0, stream>>>(a);
  } else if (blocks(kWarps / 4) >= 2 * sms || a.k_vec < 256) {
    SmallBatchLinearKernel<M, 4><<<blocks(kWarps / 4), kThreads, 0, stream>>>(a);
  } else {
    SmallBatchLinearKernel<M, 8><<<blocks(1), kThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void SmallBatchLinearCuda(const at::Tensor& x, int64_t x_stride, const at::Tensor& weight, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  LinearArgs a{};
  a.x = reinterpret_cast<const uint4*>(x.data_ptr());
  a.w = reinterpret_cast<const uint4*>(weight.data_ptr());
  a.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  a.x_stride_vec = x_stride / 8;
  a.n = static_cast<int>(weight.size(0));
  a.k_vec = static_cast<int>(weight.size(1) / 8);
  const int64_t rows = x.numel() / x.size(-1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (rows) {
    case 1: return LaunchRows<1>(a, stream);
    case 2: return LaunchRows<2>(a, stream);
    case 3: return LaunchRows<3>(a, stream);
    case 4: return LaunchRows<4>(a, stream);
    case 5: return LaunchRows<5>(a, stream);
    case 6: return LaunchRows<6>(a, stream);
    case 7: return LaunchRows<7>(a, stream);
    case 8: return LaunchRows<8>(a, stream);
    default: TORCH_CHECK(false, "small-batch linear: ", rows, " rows (at most 8)");
  }
}

}  // namespace deltaserve::kernels::internal
