// The T-token decode step on CUDA for the common head shapes (dk = dv = 64 or 128; see
// recurrent_step_impl.h): one block of 256 threads per (sequence, head) reads and dequantizes the head's
// state once into registers (float32, each thread kRpt rows x kVec columns, the one-token tiled kernel's
// layout), runs the T tokens' two passes on it, and requantizes and writes it once. A token's pass 1 sums
// S^T k and S^T q of the decayed state over the block; pass 2 adds k u^T in registers. So the state's bytes
// move once for T tokens, where T one-token steps move them T times and round a quantized state T times.
// q, k, v are read in their dtype (float32 or bfloat16) from [B * T] rows; o is written in v's dtype.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "../src/recurrent_step_impl.h"
#include "../src/state_quant.h"
#include "block_reduce.cuh"
#include "decode_step_common.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = kStepThreads;
constexpr int kWarps = kStepWarps;

// Row r of the inputs is (sequence r / tokens, token r % tokens); slots are per sequence.
template <typename Store, typename In, int DK, int DV, bool kStochastic>
__global__ void __launch_bounds__(kThreads, 2) MultiStepKernel(Store* __restrict__ values, StepArgs<In> a, int tokens) {
  using C = Codec<Store>;
  constexpr int kVec = C::kVec;
  constexpr int kTpr = DV / kVec;
  constexpr int kRowsPerPass = kThreads / kTpr;
  static_assert(DK % kRowsPerPass == 0, "rows split evenly over the block");
  constexpr int kRpt = DK / kRowsPerPass;
  __shared__ float ks[DK], qs[DK], us[DV];
  __shared__ float part[kWarps][2][DV];
  __shared__ float scratch[kWarps];

  const int b = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int64_t slot = a.slots[b];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  if (slot < 0 || slot >= a.pool_slots) {  // padding: zero output for every token, no state touched
    for (int t = 0; t < tokens; ++t) {
      const int64_t row = (static_cast<int64_t>(b) * tokens + t) * a.heads + h;
      for (int j = tid; j < DV; j += kThreads) a.out[row * DV + j] = In(0.0f);
    }
    return;
  }
  const int64_t head = slot * a.heads + h;
  Store* s = values + head * (DK * DV);
  float* sc = a.quant.scaled ? a.scales + head * DK : nullptr;
  const int col = (tid % kTpr) * kVec, row0 = tid / kTpr;

  float x[kRpt][kVec];
#pragma unroll
  for (int m = 0; m < kRpt; ++m) {
    const int i = row0 + m * kRowsPerPass;
    C::Decode(*reinterpret_cast<const typename C::Raw*>(s + i * DV + col), x[m]);
    const float si = sc != nullptr ? sc[i] : 1.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) x[m][e] *= si;
  }

  for (int t = 0; t < tokens; ++t) {
    const int64_t r = static_cast<int64_t>(b) * tokens + t;  // input row
    const int64_t rh = r * a.heads + h;                       // its (row, head)
    const float decay = expf(a.g[rh]), bt = a.beta[rh];
    const In* qp = a.q + r * a.q_stride + (h / a.group) * DK;
    const In* kp = a.k + r * a.k_stride + (h / a.group) * DK;
    float qq = 0, kk = 0, qk = 0;
    for (int i = tid; i < DK; i += kThreads) {
      const float qi = static_cast<float>(qp[i]), ki = static_cast<float>(kp[i]);
      qs[i] = qi;
      ks[i] = ki;
      qq += qi * qi;
      kk += ki * ki;
      qk += qi * ki;
    }
    float qn = a.qscale, kn = 1.0f;
    if (a.l2norm) {
      qn = a.qscale * rsqrtf(BlockReduce<kWarps>(qq, scratch, SumOp()) + 1e-6f);
      kn = rsqrtf(BlockReduce<kWarps>(kk, scratch, SumOp()) + 1e-6f);
    }
    const float kq = BlockReduce<kWarps>(qk, scratch, SumOp()) * qn * kn;
    for (int i = tid; i < DK; i += kThreads) {
      qs[i] *= qn;
      ks[i] *= kn;
    }
    __syncthreads();

    // Pass 1: the decayed state's S^T k and S^T q over this thread's rows, the lanes, then the warps.
    float kv[kVec] = {}, sq[kVec] = {};
#pragma unroll
    for (int m = 0; m < kRpt; ++m) {
      const int i = row0 + m * kRowsPerPass;
      const float ki = ks[i] * decay, qi = qs[i] * decay;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        kv[e] += ki * x[m][e];
        sq[e] += qi * x[m][e];
      }
    }
#pragma unroll
    for (int off = kTpr; off < 32; off <<= 1) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        kv[e] += __shfl_xor_sync(0xffffffffu, kv[e], off);
        sq[e] += __shfl_xor_sync(0xffffffffu, sq[e], off);
      }
    }
    if (lane < kTpr) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        part[warp][0][col + e] = kv[e];
        part[warp][1][col + e] = sq[e];
      }
    }
    __syncthreads();
    const In* vp = a.v + r * a.v_stride + h * DV;
    for (int j = tid; j < DV; j += kThreads) {
      float kvj = 0, sqj = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        kvj += part[w][0][j];
        sqj += part[w][1][j];
      }
      const float u = bt * (static_cast<float>(vp[j]) - kvj);
      us[j] = u;
      a.out[rh * DV + j] = static_cast<In>(__fmaf_rn(kq, u, sqj));
    }
    __syncthreads();

    // Pass 2: S = e^g S + k u^T in registers.
#pragma unroll
    for (int m = 0; m < kRpt; ++m) {
      const float ki = ks[row0 + m * kRowsPerPass];
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[m][e] = __fmaf_rn(ki, us[col + e], x[m][e] * decay);
    }
    __syncthreads();  // the next token overwrites qs, ks, us and part
  }

  // Requantize once: each row's new max (or the head's, coarse), then encode and store.
  float head_scale = 0;
  if (a.quant.coarse) {
    float mx = 0;
#pragma unroll
    for (int m = 0; m < kRpt; ++m) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) mx = fmaxf(mx, fabsf(x[m][e]));
    }
    head_scale = fmaxf(BlockReduce<kWarps>(mx, scratch, MaxOp()), 1e-30f) / a.quant.qmax;
  }
  const uint64_t head_key = Mix64(a.quant.base ^ static_cast<uint64_t>(head));
#pragma unroll
  for (int m = 0; m < kRpt; ++m) {
    const int i = row0 + m * kRowsPerPass;
    float mx = 0;
#pragma unroll
    for (int e = 0; e < kVec; ++e) mx = fmaxf(mx, fabsf(x[m][e]));
#pragma unroll
    for (int off = 1; off < kTpr; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float scale =
        !a.quant.scaled ? 1.0f : (a.quant.coarse ? head_scale : fmaxf(mx, 1e-30f) / a.quant.qmax);
    const float inv = a.quant.scaled ? 1.0f / scale : 1.0f;
    const uint32_t row_key =
        kStochastic ? static_cast<uint32_t>(Mix64(head_key + static_cast<uint64_t>(i))) : 0u;
    *reinterpret_cast<typename C::Raw*>(s + i * DV + col) =
        C::Encode(x[m], inv, a.quant.qmax, kStochastic, row_key, col);
    if (a.quant.scaled && tid % kTpr == 0) sc[i] = scale;
  }
}

}  // namespace

at::Tensor RecurrentStepsTiledCuda(const MultiStepInputs& in, RecurrentStatePool& pool) {
  const c10::cuda::CUDAGuard guard(pool.values.device());  // launches and the stream on the pool's GPU
  // [B * T, Hv, dv]: the inputs' rows.
  at::Tensor out = at::empty({in.step.v.size(0), in.step.v.size(1), in.step.v.size(2)}, in.step.v.options());
  if (in.step.slots.size(0) == 0 || in.tokens == 0) return out;
  DispatchTiledStep(pool, in.step.v.scalar_type(), in.step.q.size(2), [&](auto store, auto input, auto dim,
                                                                          auto stochastic) {
    using Store = decltype(store);
    using In = decltype(input);
    constexpr int kDim = decltype(dim)::value;
    constexpr bool kStochastic = decltype(stochastic)::value;
    Store* values = reinterpret_cast<Store*>(pool.values.data_ptr());
    const StepArgs<In> a = MakeStepArgs<In>(in.step, pool, out);
    const int64_t blocks = in.step.slots.size(0) * a.heads;
    const int tokens = static_cast<int>(in.tokens);
    MultiStepKernel<Store, In, kDim, kDim, kStochastic><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        values, a, tokens);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace deltaserve::kernels::internal
