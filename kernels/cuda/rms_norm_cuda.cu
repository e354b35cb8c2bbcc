// CUDA RMS norms (zero-centred, residual add + zero-centred, gated): one pass per row. Rows of up to
// 1024 features get one warp each (four rows per block, no barriers); longer rows get a whole block.
// Pass 1 sums squares (and writes the rounded residual sum), pass 2 re-reads the row, which the same
// thread just touched and L1/L2 still hold, and writes the output. fp32 math throughout.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

#include "../src/fused_ops_impl.h"
#include "fused_rows.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kWarpRowMaxH = 1024;  // up to here a warp per row; a block per row beyond
constexpr int kWarpBlock = 128;     // four rows per block in warp mode
constexpr int kRowBlock = 256;      // threads of a block-per-row launch

template <typename T, typename W>
struct RowNormArgs {
  const T* x;
  T* residual;    // kAddZeroCentred: read and written in place
  const T* gate;  // kGated
  const W* weight;
  T* out;  // contiguous [rows, h]
  int64_t x_stride, residual_stride, gate_stride, rows;
  int h;
  float eps;
};

// kThreads threads per row (32, or the whole block), G consecutive features per access (1, or one
// 16-byte vector of T). x and residual may alias: each element is read and written by one thread only,
// in program order, so no __restrict__ here.
template <RowNormKind kKind, int kThreads, int kBlock, int G, typename T, typename W>
__global__ void __launch_bounds__(kBlock) RowNormKernel(RowNormArgs<T, W> a) {
  static_assert(kBlock % kThreads == 0, "whole rows per block");
  __shared__ float scratch[kBlock / 32];
  const int lane = threadIdx.x % kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / kThreads) + threadIdx.x / kThreads;
  // Uniform over a row's threads: in warp mode whole warps leave (RowSum has no barrier then); with a
  // block per row the grid has exactly `rows` blocks and nobody leaves.
  if (row >= a.rows) return;
  const int groups = a.h / G;
  const T* x = a.x + row * a.x_stride;
  [[maybe_unused]] T* residual = nullptr;
  [[maybe_unused]] const T* gate = nullptr;
  if constexpr (kKind == RowNormKind::kAddZeroCentred) residual = a.residual + row * a.residual_stride;
  if constexpr (kKind == RowNormKind::kGated) gate = a.gate + row * a.gate_stride;

  float squares = 0.0f;
  for (int i = lane; i < groups; i += kThreads) {
    float v[G];
    LoadFloats<G>(x + i * G, v);
    if constexpr (kKind == RowNormKind::kAddZeroCentred) {
      float r[G];
      LoadFloats<G>(residual + i * G, r);
      // Round the sum to T before using it: the unfused model norms the stored residual.
#pragma unroll
      for (int m = 0; m < G; ++m) v[m] = static_cast<float>(static_cast<T>(r[m] + v[m]));
      StoreFloats<G>(residual + i * G, v);
    }
#pragma unroll
    for (int m = 0; m < G; ++m) squares += v[m] * v[m];
  }
  const float inv_rms = rsqrtf(RowSum<kThreads>(squares, scratch) / static_cast<float>(a.h) + a.eps);

  const T* src = kKind == RowNormKind::kAddZeroCentred ? residual : x;
  T* out = a.out + row * a.h;
  for (int i = lane; i < groups; i += kThreads) {
    float v[G], w[G];
    LoadFloats<G>(src + i * G, v);
    LoadFloats<G>(a.weight + i * G, w);
    if constexpr (kKind == RowNormKind::kGated) {
      float g[G];
      LoadFloats<G>(gate + i * G, g);
#pragma unroll
      for (int m = 0; m < G; ++m) v[m] = v[m] * inv_rms * w[m] * Silu(g[m]);
    } else {
#pragma unroll
      for (int m = 0; m < G; ++m) v[m] = v[m] * inv_rms * (1.0f + w[m]);
    }
    StoreFloats<G>(out + i * G, v);
  }
}

template <RowNormKind kKind, int G, typename T, typename W>
void LaunchKind(const RowNormArgs<T, W>& a) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (a.h <= kWarpRowMaxH) {
    constexpr int kRowsPerBlock = kWarpBlock / 32;
    const int64_t blocks = (a.rows + kRowsPerBlock - 1) / kRowsPerBlock;
    RowNormKernel<kKind, 32, kWarpBlock, G, T, W>
        <<<static_cast<unsigned>(blocks), kWarpBlock, 0, stream>>>(a);
  } else {
    RowNormKernel<kKind, kRowBlock, kRowBlock, G, T, W>
        <<<static_cast<unsigned>(a.rows), kRowBlock, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int G, typename T, typename W>
void LaunchGroup(RowNormKind kind, const RowNormArgs<T, W>& a) {
  switch (kind) {
    case RowNormKind::kZeroCentred:
      return LaunchKind<RowNormKind::kZeroCentred, G>(a);
    case RowNormKind::kAddZeroCentred:
      return LaunchKind<RowNormKind::kAddZeroCentred, G>(a);
    case RowNormKind::kGated:
      return LaunchKind<RowNormKind::kGated, G>(a);
  }
}

template <typename T, typename W>
void Launch(RowNormKind kind, const at::Tensor& x, const at::Tensor& other, const at::Tensor& weight,
            double eps, const at::Tensor& out) {
  constexpr int kVec = 16 / sizeof(T);
  RowNormArgs<T, W> a{};
  a.h = static_cast<int>(x.size(-1));
  a.rows = x.numel() / a.h;
  a.x = x.data_ptr<T>();
  a.x_stride = RowStride(x);
  a.weight = weight.data_ptr<W>();
  a.out = out.data_ptr<T>();
  a.eps = static_cast<float>(eps);
  bool vec =
      a.h % kVec == 0 && Aligned16(a.x) && a.x_stride % kVec == 0 && Aligned16(a.weight) && Aligned16(a.out);
  if (kind == RowNormKind::kAddZeroCentred) {
    a.residual = other.data_ptr<T>();
    a.residual_stride = RowStride(other);
    vec = vec && Aligned16(a.residual) && a.residual_stride % kVec == 0;
  } else if (kind == RowNormKind::kGated) {
    a.gate = other.data_ptr<T>();
    a.gate_stride = RowStride(other);
    vec = vec && Aligned16(a.gate) && a.gate_stride % kVec == 0;
  }
  if (vec) {
    LaunchGroup<kVec>(kind, a);
  } else {
    LaunchGroup<1>(kind, a);
  }
}

}  // namespace

void RowNormCuda(RowNormKind kind, const at::Tensor& x, const at::Tensor& other, const at::Tensor& weight,
                 double eps, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.scalar_type() == at::kFloat) {
    Launch<float, float>(kind, x, other, weight, eps, out);
  } else if (weight.scalar_type() == at::kFloat) {
    Launch<c10::BFloat16, float>(kind, x, other, weight, eps, out);
  } else {
    Launch<c10::BFloat16, c10::BFloat16>(kind, x, other, weight, eps, out);
  }
}

}  // namespace deltaserve::kernels::internal
