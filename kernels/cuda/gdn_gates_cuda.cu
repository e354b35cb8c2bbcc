// CUDA GatedDeltaGates: one thread per (token, head) in a grid-stride loop over all tokens at once, fp32
// math as torch's ops (softplus threshold 20, sigmoid 1 / (1 + e^-x)), one launch per layer instead of six.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

#include "../src/fused_ops_impl.h"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    GatesKernel(const T* __restrict__ ba, int64_t stride, const float* __restrict__ neg_a_exp,
                const float* __restrict__ dt_bias, float* __restrict__ g, float* __restrict__ beta,
                int64_t rows, int heads) {
  const int64_t total = rows * heads;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += step) {
    const int64_t row = i / heads;
    const int h = static_cast<int>(i - row * heads);
    const T* r = ba + row * stride;
    const float b = static_cast<float>(r[h]);
    const float a = static_cast<float>(r[heads + h]) + dt_bias[h];
    const float softplus = a > 20.0f ? a : log1pf(expf(a));
    g[i] = neg_a_exp[h] * softplus;
    beta[i] = 1.0f / (1.0f + expf(-b));
  }
}

template <typename T>
void Launch(const at::Tensor& ba, const at::Tensor& neg_a_exp, const at::Tensor& dt_bias, const at::Tensor& g,
            const at::Tensor& beta) {
  const int64_t rows = ba.size(0);
  const int heads = static_cast<int>(ba.size(1) / 2);
  const int64_t blocks = std::min(kMaxBlocks, (rows * heads + kThreads - 1) / kThreads);
  GatesKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      ba.data_ptr<T>(), RowStride(ba), neg_a_exp.data_ptr<float>(), dt_bias.data_ptr<float>(),
      g.data_ptr<float>(), beta.data_ptr<float>(), rows, heads);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void GdnGatesCuda(const at::Tensor& ba, const at::Tensor& neg_a_exp, const at::Tensor& dt_bias,
                  const at::Tensor& g, const at::Tensor& beta) {
  const c10::cuda::CUDAGuard guard(ba.device());
  if (ba.scalar_type() == at::kFloat) {
    Launch<float>(ba, neg_a_exp, dt_bias, g, beta);
  } else {
    Launch<c10::BFloat16>(ba, neg_a_exp, dt_bias, g, beta);
  }
}

}  // namespace deltaserve::kernels::internal
