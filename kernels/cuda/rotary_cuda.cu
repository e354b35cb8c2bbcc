// CUDA QkNormRotary: one warp per (token, head) row, four rows per block. Pass 1 sums the squares of the
// row; pass 2 re-reads it (from L1) and writes the normed features, rotating each pair (j, j + R/2),
// j < R/2, by position * inv_freq[j] with cos/sin from sincosf in fp32, and the features past R normed
// only. Rows of x are addressed through its two leading strides, so q can be a narrow() of a wider
// projection without a copy.
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

constexpr int kRowsPerBlock = 4;
constexpr int kThreads = 32 * kRowsPerBlock;

template <typename T, typename W>
struct RotaryArgs {
  const T* x;
  const W* weight;
  const int64_t* positions;
  const float* inv_freq;
  T* out;  // contiguous [tokens, heads, d]
  int64_t token_stride, head_stride, rows;
  int heads, d, half;
  float eps;
};

template <int G, typename T, typename W>
__global__ void __launch_bounds__(kThreads) QkNormRotaryKernel(RotaryArgs<T, W> a) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= a.rows) return;  // whole warps only; nothing below synchronises more than a warp
  const int64_t token = row / a.heads;
  const int64_t head = row - token * a.heads;
  const T* x = a.x + token * a.token_stride + head * a.head_stride;
  T* out = a.out + row * a.d;

  float squares = 0.0f;
  for (int i = lane; i < a.d / G; i += 32) {
    float v[G];
    LoadFloats<G>(x + i * G, v);
#pragma unroll
    for (int m = 0; m < G; ++m) squares += v[m] * v[m];
  }
  const float inv_rms = rsqrtf(WarpSum(squares) / static_cast<float>(a.d) + a.eps);
  // The angle as the composition forms it: float(position) * inv_freq, one fp32 rounding.
  const float position = static_cast<float>(a.positions[token]);

  // Rotated pairs: group i covers features [iG, iG + G) and their partners R/2 further on.
  for (int i = lane; i < a.half / G; i += 32) {
    const int j = i * G;
    float x1[G], x2[G], w1[G], w2[G];
    LoadFloats<G>(x + j, x1);
    LoadFloats<G>(x + j + a.half, x2);
    LoadFloats<G>(a.weight + j, w1);
    LoadFloats<G>(a.weight + j + a.half, w2);
#pragma unroll
    for (int m = 0; m < G; ++m) {
      const float y1 = x1[m] * inv_rms * (1.0f + w1[m]);
      const float y2 = x2[m] * inv_rms * (1.0f + w2[m]);
      float sin_a, cos_a;
      sincosf(position * a.inv_freq[j + m], &sin_a, &cos_a);
      x1[m] = y1 * cos_a - y2 * sin_a;
      x2[m] = y2 * cos_a + y1 * sin_a;
    }
    StoreFloats<G>(out + j, x1);
    StoreFloats<G>(out + j + a.half, x2);
  }
  // Features past the rotary dimensions: normed only.
  for (int i = 2 * a.half / G + lane; i < a.d / G; i += 32) {
    float v[G], w[G];
    LoadFloats<G>(x + i * G, v);
    LoadFloats<G>(a.weight + i * G, w);
#pragma unroll
    for (int m = 0; m < G; ++m) v[m] = v[m] * inv_rms * (1.0f + w[m]);
    StoreFloats<G>(out + i * G, v);
  }
}

template <typename T, typename W>
void Launch(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& positions,
            const at::Tensor& inv_freq, double eps, const at::Tensor& out) {
  constexpr int kVec = 16 / sizeof(T);
  RotaryArgs<T, W> a{};
  a.x = x.data_ptr<T>();
  a.weight = weight.data_ptr<W>();
  a.positions = positions.data_ptr<int64_t>();
  a.inv_freq = inv_freq.data_ptr<float>();
  a.out = out.data_ptr<T>();
  a.token_stride = x.stride(0);
  a.head_stride = x.stride(1);
  a.heads = static_cast<int>(x.size(1));
  a.d = static_cast<int>(x.size(2));
  a.half = static_cast<int>(inv_freq.size(0));
  a.rows = x.size(0) * x.size(1);
  a.eps = static_cast<float>(eps);
  // Vectors need the pair offset R/2 and the row length in whole groups and every row start aligned.
  const bool vec = a.d % kVec == 0 && a.half % kVec == 0 && Aligned16(a.x) && a.token_stride % kVec == 0 &&
                   a.head_stride % kVec == 0 && Aligned16(a.weight) && Aligned16(a.out);
  const unsigned blocks = static_cast<unsigned>((a.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (vec) {
    QkNormRotaryKernel<kVec, T, W><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    QkNormRotaryKernel<1, T, W><<<blocks, kThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void QkNormRotaryCuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& positions,
                      const at::Tensor& inv_freq, double eps, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.scalar_type() == at::kFloat) {
    Launch<float, float>(x, weight, positions, inv_freq, eps, out);
  } else if (weight.scalar_type() == at::kFloat) {
    Launch<c10::BFloat16, float>(x, weight, positions, inv_freq, eps, out);
  } else {
    Launch<c10::BFloat16, c10::BFloat16>(x, weight, positions, inv_freq, eps, out);
  }
}

}  // namespace deltaserve::kernels::internal
