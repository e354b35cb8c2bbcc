// CUDA SiluAndMul: out[r, j] = silu(x[r, j]) * x[r, F + j], one pass, fp32 math, one rounding. Each
// thread takes G consecutive outputs (one 16-byte vector of T when aligned) in a grid-stride loop over
// all rows at once, so a single decode row still spreads over the whole GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

#include "../src/fused_ops_impl.h"
#include "fused_rows.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // the grid-stride loop covers the rest

template <int G, typename T>
__global__ void __launch_bounds__(kThreads)
    SiluAndMulKernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ out, int64_t rows, int f) {
  const int64_t per_row = f / G;
  const int64_t total = rows * per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += step) {
    const int64_t row = i / per_row;
    const int64_t col = (i - row * per_row) * G;
    const T* xr = x + row * x_stride;
    float gate[G], up[G];
    LoadFloats<G>(xr + col, gate);
    LoadFloats<G>(xr + f + col, up);
#pragma unroll
    for (int m = 0; m < G; ++m) gate[m] = Silu(gate[m]) * up[m];
    StoreFloats<G>(out + row * f + col, gate);
  }
}

template <typename T>
void Launch(const at::Tensor& x, const at::Tensor& out) {
  constexpr int kVec = 16 / sizeof(T);
  const int f = static_cast<int>(x.size(-1) / 2);
  const int64_t rows = x.numel() / x.size(-1);
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t stride = RowStride(x);
  const bool vec = f % kVec == 0 && Aligned16(xp) && stride % kVec == 0 && Aligned16(op);
  const int g = vec ? kVec : 1;
  const int64_t work = rows * (f / g);
  const unsigned blocks = static_cast<unsigned>(std::min(kMaxBlocks, (work + kThreads - 1) / kThreads));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (vec) {
    SiluAndMulKernel<kVec, T><<<blocks, kThreads, 0, stream>>>(xp, stride, op, rows, f);
  } else {
    SiluAndMulKernel<1, T><<<blocks, kThreads, 0, stream>>>(xp, stride, op, rows, f);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void SiluAndMulCuda(const at::Tensor& x, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.scalar_type() == at::kFloat) {
    Launch<float>(x, out);
  } else {
    Launch<c10::BFloat16>(x, out);
  }
}

}  // namespace deltaserve::kernels::internal
