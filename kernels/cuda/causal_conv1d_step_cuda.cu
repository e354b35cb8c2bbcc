// CUDA decode step of the depthwise causal conv1d, one launch: a thread per (sequence, channel) reads its
// channel's K - 1 state values (contiguous, as the pool is [slots, D, K - 1]) and the new input,
// accumulates the K taps in fp32 (fp64 for fp64 inputs), adds the bias, applies SiLU, writes y, and
// shifts the window back into the state as exact copies in the storage dtype. Consecutive threads take
// consecutive channels, so each warp reads and writes x, y, the taps and the state rows as contiguous
// spans. Padding rows (negative slot) only write a zero y row. No barriers, no shared memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

#include "../src/causal_conv1d_step_cuda.h"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y: longer batches loop over rows

template <typename T>
struct ConvStepArgs {
  const T* x;            // [B, D], rows x_stride apart
  const T* weight;       // [D, K]
  const T* bias;         // [D], or null
  T* state;              // [slots, D, K - 1]
  const int64_t* slots;  // [B], negative: padding row
  T* y;                  // [B, D]
  int64_t batch, dim, pool_slots, x_stride;
  int k;
  bool silu;
};

__device__ inline float Exp(float x) { return expf(x); }
__device__ inline double Exp(double x) { return exp(x); }

// K > 0: the width at compile time, taps and window in registers; K == 0: any width, read from `a.k`.
template <typename T, int K>
__global__ void __launch_bounds__(kThreads) ConvStepKernel(ConvStepArgs<T> a) {
  using Acc = at::opmath_type<T>;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= a.dim) return;  // the kernel has no barriers, so threads past D may leave early
  const int k = K > 0 ? K : a.k;
  const int w = k - 1;  // >= 1: the entry point requires K >= 2
  const T* wd = a.weight + d * k;
  const Acc bias = a.bias != nullptr ? static_cast<Acc>(a.bias[d]) : Acc(0);
  [[maybe_unused]] Acc taps[K > 0 ? K : 1];
  if constexpr (K > 0) {
#pragma unroll
    for (int j = 0; j < K; ++j) taps[j] = static_cast<Acc>(wd[j]);
  }
  for (int64_t b = blockIdx.y; b < a.batch; b += gridDim.y) {
    const int64_t slot = a.slots[b];
    T* yd = a.y + b * a.dim + d;
    // Negative: padding. At or above the pool: only slots changed behind the checks (a graph replayed
    // with unchecked slots) get here; they are skipped too rather than written out of bounds.
    if (slot < 0 || slot >= a.pool_slots) {
      *yd = static_cast<T>(Acc(0));
      continue;
    }
    T* sd = a.state + (slot * a.dim + d) * w;
    const T xd = a.x[b * a.x_stride + d];
    // Products summed in tap order, then the bias: the order of the ATen path's sum, then add.
    Acc acc = Acc(0);
    if constexpr (K > 0) {
      T win[K];
#pragma unroll
      for (int j = 0; j < K - 1; ++j) win[j] = sd[j];
      win[K - 1] = xd;
#pragma unroll
      for (int j = 0; j < K; ++j) acc += taps[j] * static_cast<Acc>(win[j]);
#pragma unroll
      for (int j = 0; j < K - 1; ++j) sd[j] = win[j + 1];
    } else {
      for (int j = 0; j < w; ++j) acc += static_cast<Acc>(wd[j]) * static_cast<Acc>(sd[j]);
      acc += static_cast<Acc>(wd[w]) * static_cast<Acc>(xd);
      // In place, front to back: each value is read before its own slot is overwritten.
      for (int j = 0; j + 1 < w; ++j) sd[j] = sd[j + 1];
      sd[w - 1] = xd;
    }
    acc += bias;
    if (a.silu) acc = acc / (Acc(1) + Exp(-acc));
    *yd = static_cast<T>(acc);
  }
}

template <typename T>
void Launch(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& conv_state,
            const at::Tensor& slots, bool silu, at::Tensor& y) {
  ConvStepArgs<T> a;
  a.x = x.data_ptr<T>();
  a.weight = weight.data_ptr<T>();
  a.bias = bias.defined() ? bias.data_ptr<T>() : nullptr;
  a.state = conv_state.data_ptr<T>();
  a.slots = slots.data_ptr<int64_t>();
  a.y = y.data_ptr<T>();
  a.batch = x.size(0);
  a.dim = x.size(1);
  a.x_stride = x.stride(0);
  a.pool_slots = conv_state.size(0);
  a.k = static_cast<int>(weight.size(1));
  a.silu = silu;
  const dim3 grid(static_cast<unsigned>((a.dim + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min(a.batch, kMaxGridY)));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (a.k) {
    case 2:
      ConvStepKernel<T, 2><<<grid, kThreads, 0, stream>>>(a);
      break;
    case 3:
      ConvStepKernel<T, 3><<<grid, kThreads, 0, stream>>>(a);
      break;
    case 4:
      ConvStepKernel<T, 4><<<grid, kThreads, 0, stream>>>(a);
      break;
    default:
      ConvStepKernel<T, 0><<<grid, kThreads, 0, stream>>>(a);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor CausalConv1dStepCuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::Tensor& conv_state, const at::Tensor& slots, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());  // the current stream must be x's device's
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "CausalConv1dStepCuda",
                                 [&] { Launch<scalar_t>(x, weight, bias, conv_state, slots, silu, y); });
  return y;
}

}  // namespace deltaserve::kernels::internal
