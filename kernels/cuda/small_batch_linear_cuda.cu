// y = x W^T for at most 8 rows of bf16 x: decode's projections are reads of the whole weight for a few
// rows, so the kernel is built to stream W at memory bandwidth. Each output row belongs to kSplit warps
// that share its K range (kSplit grows when N is small, so that every SM gets work); each lane keeps
// kUnroll 16-byte loads of W in flight, reads x through L1 (a few KB, reused by every warp), accumulates
// in fp32, and the warps' partial sums meet in shared memory. Neighbours of a projection fold in: on
// the input side Qwen3.5's zero-centred RMS norm of x, or the MLP's silu(gate) * up (each block stages
// the few transformed rows of x in shared memory before streaming W, so no intermediate goes through
// memory and no separate kernel runs); on the output side a residual add (out += x W^T in place).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "../src/fused_ops_impl.h"
#include "deltaserve/kernels/linear.h"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // 16-byte loads of W in flight per lane

// What a block does to x's rows before the product: nothing (read them through L1), or stage them in
// shared memory normalised, or as silu(first half) * second half.
enum class Stage { kNone, kNorm, kSiluMul };

struct LinearArgs {
  const uint4* x;  // [rows, x_stride / 8] in 8-bf16 vectors (kSiluMul: 2 k_vec of them a row)
  const uint4* w;  // [n, k / 8]
  __nv_bfloat16* out;  // [rows, out_stride]: written, or added to (kAccumulate)
  int64_t x_stride_vec, out_stride;
  int n, k_vec;
  const void* norm_w;  // kNorm: [k] bf16 or fp32 (norm_w_fp32)
  bool norm_w_fp32;
  float eps;
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

__device__ __forceinline__ void ToFloats8(const uint4& v, float (&f)[8]) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(p[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// The block's copy of x's M rows, normalised as kernels::RmsNorm does (x * inv_rms * (1 + w) in fp32,
// rounded to bf16), in shared memory: xs[m * k_vec + i]. Every thread of the block takes part.
template <int M>
__device__ void StageNormalisedRows(const LinearArgs& a, uint4* xs, float (*red)[M]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float squares[M];
#pragma unroll
  for (int m = 0; m < M; ++m) squares[m] = 0.0f;
  for (int i = threadIdx.x; i < a.k_vec; i += kThreads) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v[8];
      ToFloats8(__ldg(a.x + m * a.x_stride_vec + i), v);
#pragma unroll
      for (int e = 0; e < 8; ++e) squares[m] = fmaf(v[e], v[e], squares[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) squares[m] += __shfl_xor_sync(0xffffffffu, squares[m], off);
    if (lane == 0) red[warp][m] = squares[m];
  }
  __syncthreads();
  float inv_rms[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w][m];
    inv_rms[m] = rsqrtf(sum / static_cast<float>(a.k_vec * 8) + a.eps);
  }
  for (int i = threadIdx.x; i < a.k_vec; i += kThreads) {
    float w[8];
    if (a.norm_w_fp32) {
      const float4* p = static_cast<const float4*>(a.norm_w) + 2 * i;
      const float4 lo = __ldg(p), hi = __ldg(p + 1);
      w[0] = lo.x, w[1] = lo.y, w[2] = lo.z, w[3] = lo.w, w[4] = hi.x, w[5] = hi.y, w[6] = hi.z, w[7] = hi.w;
    } else {
      ToFloats8(__ldg(static_cast<const uint4*>(a.norm_w) + i), w);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float v[8];
      ToFloats8(__ldg(a.x + m * a.x_stride_vec + i), v);
      uint4 packed;
      __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        out[e] = __floats2bfloat162_rn(v[2 * e] * inv_rms[m] * (1.0f + w[2 * e]),
                                       v[2 * e + 1] * inv_rms[m] * (1.0f + w[2 * e + 1]));
      }
      xs[m * a.k_vec + i] = packed;
    }
  }
  __syncthreads();
}

// The block's copy of silu(x[m, :K]) * x[m, K:] (fp32, rounded to bf16, as kernels::SiluAndMul does) in
// shared memory: xs[m * k_vec + i]. Every thread of the block takes part.
template <int M>
__device__ void StageSiluMulRows(const LinearArgs& a, uint4* xs) {
  for (int i = threadIdx.x; i < a.k_vec; i += kThreads) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float g[8], u[8];
      ToFloats8(__ldg(a.x + m * a.x_stride_vec + i), g);
      ToFloats8(__ldg(a.x + m * a.x_stride_vec + a.k_vec + i), u);
      uint4 packed;
      __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(&packed);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        out[e] = __floats2bfloat162_rn(g[2 * e] / (1.0f + expf(-g[2 * e])) * u[2 * e],
                                       g[2 * e + 1] / (1.0f + expf(-g[2 * e + 1])) * u[2 * e + 1]);
      }
      xs[m * a.k_vec + i] = packed;
    }
  }
  __syncthreads();
}

template <int M, int kSplit, Stage kStage, bool kAccumulate>
__global__ void __launch_bounds__(kThreads) SmallBatchLinearKernel(LinearArgs a) {
  constexpr int kRowsPerBlock = kWarps / kSplit;
  constexpr bool kStaged = kStage != Stage::kNone;
  __shared__ float partial[kWarps][M];
  extern __shared__ uint4 staged_x[];  // kStaged: [M][k_vec]
  if constexpr (kStage == Stage::kNorm) StageNormalisedRows<M>(a, staged_x, partial);
  if constexpr (kStage == Stage::kSiluMul) StageSiluMulRows<M>(a, staged_x);
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
          for (int m = 0; m < M; ++m) {
            Dot8(wv[u], kStaged ? staged_x[m * a.k_vec + i] : __ldg(a.x + m * a.x_stride_vec + i), acc[m]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);
  }
  // (kNorm: `partial` held the norm's sums, which every thread read before the staging's last barrier.)
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
      __nv_bfloat16* out = a.out + static_cast<int64_t>(m) * a.out_stride + out_row;
      if constexpr (kAccumulate) sum += __bfloat162float(*out);
      *out = __float2bfloat16_rn(sum);
    }
  }
}

template <int M, Stage kStage, bool kAccumulate>
void LaunchRows(const LinearArgs& a, cudaStream_t stream) {
  // Enough blocks for two per SM where N allows; else split each row's K over more warps.
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  auto blocks = [&](int rows_per_block) { return (a.n + rows_per_block - 1) / rows_per_block; };
  const size_t smem = kStage != Stage::kNone ? sizeof(uint4) * M * a.k_vec : 0;
  if (blocks(kWarps) >= 2 * sms || a.k_vec < 64) {
    SmallBatchLinearKernel<M, 1, kStage, kAccumulate><<<blocks(kWarps), kThreads, smem, stream>>>(a);
  } else if (blocks(kWarps / 2) >= 2 * sms || a.k_vec < 128) {
    SmallBatchLinearKernel<M, 2, kStage, kAccumulate><<<blocks(kWarps / 2), kThreads, smem, stream>>>(a);
  } else if (blocks(kWarps / 4) >= 2 * sms || a.k_vec < 256) {
    SmallBatchLinearKernel<M, 4, kStage, kAccumulate><<<blocks(kWarps / 4), kThreads, smem, stream>>>(a);
  } else {
    SmallBatchLinearKernel<M, 8, kStage, kAccumulate><<<blocks(1), kThreads, smem, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int M, Stage kStage>
void LaunchStage(const LinearArgs& a, bool accumulate, cudaStream_t stream) {
  return accumulate ? LaunchRows<M, kStage, true>(a, stream) : LaunchRows<M, kStage, false>(a, stream);
}

template <int M>
void LaunchFusion(const LinearArgs& a, const SmallBatchLinearFusion& f, cudaStream_t stream) {
  if (f.norm_weight.defined()) return LaunchStage<M, Stage::kNorm>(a, f.accumulate, stream);
  if (f.silu_and_mul) return LaunchStage<M, Stage::kSiluMul>(a, f.accumulate, stream);
  return LaunchStage<M, Stage::kNone>(a, f.accumulate, stream);
}

}  // namespace

void SmallBatchLinearCuda(const at::Tensor& x, int64_t x_stride, const at::Tensor& weight, const at::Tensor& out,
                          const SmallBatchLinearFusion& fusion) {
  static_assert(kSmallBatchLinearMaxRows == 2, "a LaunchFusion case per row count");
  const c10::cuda::CUDAGuard guard(x.device());
  LinearArgs a{};
  a.x = reinterpret_cast<const uint4*>(x.data_ptr());
  a.w = reinterpret_cast<const uint4*>(weight.data_ptr());
  a.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  a.x_stride_vec = x_stride / 8;
  a.out_stride = out.size(-1);
  a.n = static_cast<int>(weight.size(0));
  a.k_vec = static_cast<int>(weight.size(1) / 8);
  if (fusion.norm_weight.defined()) {
    a.norm_w = fusion.norm_weight.data_ptr();
    a.norm_w_fp32 = fusion.norm_weight.scalar_type() == at::kFloat;
    a.eps = static_cast<float>(fusion.eps);
  }
  const int64_t rows = x.numel() / x.size(-1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (rows) {
    case 1: return LaunchFusion<1>(a, fusion, stream);
    case 2: return LaunchFusion<2>(a, fusion, stream);
    default: TORCH_CHECK(false, "small-batch linear: ", rows, " rows (at most ", kSmallBatchLinearMaxRows, ")");
  }
}

}  // namespace deltaserve::kernels::internal
