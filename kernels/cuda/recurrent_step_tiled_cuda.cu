// CUDA decode step at memory bandwidth for the common head shapes (dk = dv = 64 or 128): one block of
// 256 threads per (sequence, head) holds the head's whole state in registers between the two passes, so
// each state byte is read once and written once, as one 16-byte (8 for 1-byte states) access per thread
// and row. The general
// kernel (recurrent_step_cuda.cu) reads the state twice with 4-byte accesses for 1-byte states and
// converts with the slow conversion unit; this one decodes and encodes int8 with byte permutes and float
// adds, fp8 and bf16 with the paired hardware conversions. q, k, v are read in the model's dtype (fp32 or
// bf16) from row-strided views and o is written in v's dtype, so the caller needs no cast or copy.
// Same maths, scales and rounding stream as the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "../src/recurrent_step_impl.h"
#include "../src/state_quant.h"
#include "block_reduce.cuh"
#include "decode_step_common.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = kStepThreads;
constexpr int kWarps = kStepWarps;

// Thread t owns columns [(t % kTpr) * kVec, + kVec) of rows t / kTpr + m * kRowsPerPass, m < kRpt.
// kStochastic at compile time: as a runtime flag the rounding hash was computed under a predicate for
// every value of every INT8 step (25% of the step at batch 256).
// Blocks that must fit an SM together, which caps the registers: 1-byte states at 64, so four blocks share
// an SM (at 80 the INT8 kernel got three while FP8, at 64, got four: 1.07-1.15x on an H100); bf16 at 85 and
// fp32 at 128, what the compiler chose for them unbounded (bf16 given a free hand took 96 and two blocks,
// and ran 1.19x slower).
template <typename Store>
constexpr int kMinBlocksPerSm = sizeof(Store) == 1 ? 4 : (sizeof(Store) == 2 ? 3 : 2);

template <typename Store, typename In, int DK, int DV, bool kStochastic>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm<Store>) TiledStepKernel(Store* __restrict__ values, StepArgs<In> a) {
  using C = Codec<Store>;
  constexpr int kVec = C::kVec;
  constexpr int kTpr = DV / kVec;  // threads per row: 8 (1-byte), 16 (bf16) or 32 (fp32) at dv = 128
  static_assert(kTpr >= 1 && kTpr <= 32 && 32 % kTpr == 0, "a row spans a power-of-two part of a warp");
  constexpr int kRowsPerPass = kThreads / kTpr;
  static_assert(DK % kRowsPerPass == 0, "rows split evenly over the block");
  constexpr int kRpt = DK / kRowsPerPass;
  __shared__ float ks[DK], qs[DK], scs[DK], us[DV];
  __shared__ float part[kWarps][2][DV];
  __shared__ float scratch[kWarps];

  const int bh = blockIdx.x;
  const int b = bh / a.heads, h = bh % a.heads;
  const int64_t slot = a.slots[b];
  // A padding row (negative slot), or a slot beyond the pool: zero output, no state touched. Uniform
  // over the block, before any barrier.
  if (slot < 0 || slot >= a.pool_slots) {
    for (int j = threadIdx.x; j < DV; j += kThreads) a.out[static_cast<int64_t>(bh) * DV + j] = In(0.0f);
    return;
  }
  const int64_t head = slot * a.heads + h;
  Store* s = values + head * (DK * DV);
  float* sc = a.quant.scaled ? a.scales + head * DK : nullptr;
  const int tid = threadIdx.x;
  const int col = (tid % kTpr) * kVec, row0 = tid / kTpr;

  // The state loads go first: they are the step's cost, and nothing needs them before pass 1.
  using Raw = typename C::Raw;
  Raw raw[kRpt];
#pragma unroll
  for (int m = 0; m < kRpt; ++m) {
    raw[m] = *reinterpret_cast<const Raw*>(s + (row0 + m * kRowsPerPass) * DV + col);
  }

  const float decay = expf(a.g[bh]);
  const In* qp = a.q + b * a.q_stride + (h / a.group) * DK;
  const In* kp = a.k + b * a.k_stride + (h / a.group) * DK;
  float qq = 0, kk = 0, qk = 0;
  for (int i = tid; i < DK; i += kThreads) {
    const float qi = static_cast<float>(qp[i]), ki = static_cast<float>(kp[i]);
    qs[i] = qi;
    ks[i] = ki;
    qq += qi * qi;
    kk += ki * ki;
    qk += qi * ki;
    scs[i] = decay * (a.quant.scaled ? sc[i] : 1.0f);
  }
  float qn = a.qscale, kn = 1.0f;
  if (a.l2norm) {  // uniform over the block
    qn = a.qscale * rsqrtf(BlockReduce<kWarps>(qq, scratch, SumOp()) + 1e-6f);
    kn = rsqrtf(BlockReduce<kWarps>(kk, scratch, SumOp()) + 1e-6f);
  }
  const float kq =
      BlockReduce<kWarps>(qk, scratch, SumOp()) * qn * kn;  // k . q after normalisation and scale
  for (int i = tid; i < DK; i += kThreads) {
    qs[i] *= qn;
    ks[i] *= kn;
  }
  __syncthreads();

  // Pass 1: column sums of (decayed, dequantized) S^T k and S^T q over this thread's rows, then over the
  // lanes of the warp that share the columns, then over the warps through shared memory.
  float kv[kVec] = {}, sq[kVec] = {};
#pragma unroll
  for (int m = 0; m < kRpt; ++m) {
    const int i = row0 + m * kRowsPerPass;
    float x[kVec];
    C::Decode(raw[m], x);
    const float ki = ks[i] * scs[i], qi = qs[i] * scs[i];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      kv[e] += ki * x[e];
      sq[e] += qi * x[e];
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
  const int warp = tid / 32, lane = tid % 32;
  if (lane < kTpr) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      part[warp][0][col + e] = kv[e];
      part[warp][1][col + e] = sq[e];
    }
  }
  __syncthreads();
  const float bt = a.beta[bh];
  const In* vp = a.v + b * a.v_stride + h * DV;
  for (int j = tid; j < DV; j += kThreads) {
    float kvj = 0, sqj = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      kvj += part[w][0][j];
      sqj += part[w][1][j];
    }
    const float u = bt * (static_cast<float>(vp[j]) - kvj);
    us[j] = u;
    a.out[static_cast<int64_t>(bh) * DV + j] = static_cast<In>(__fmaf_rn(kq, u, sqj));
  }
  __syncthreads();

  // Pass 2: r = decay * scale * x + k_i * u from the registers, requantized with the row's new max.
  float u[kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) u[e] = us[col + e];
  auto row_values = [&](int m, float(&r)[kVec]) {
    const int i = row0 + m * kRowsPerPass;
    C::Decode(raw[m], r);
    const float si = scs[i], ki = ks[i];
    float mx = 0;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      r[e] = __fmaf_rn(ki, u[e], r[e] * si);  // written out: both kernels must round alike
      mx = fmaxf(mx, fabsf(r[e]));
    }
    return mx;
  };
  float head_scale = 0;
  if (a.quant.coarse) {  // one scale for the head: the max over every new value
    float mx = 0;
#pragma unroll
    for (int m = 0; m < kRpt; ++m) {
      float r[kVec];
      mx = fmaxf(mx, row_values(m, r));
    }
    head_scale = fmaxf(BlockReduce<kWarps>(mx, scratch, MaxOp()), 1e-30f) / a.quant.qmax;
  }
  const uint64_t head_key = Mix64(a.quant.base ^ static_cast<uint64_t>(head));
#pragma unroll
  for (int m = 0; m < kRpt; ++m) {
    const int i = row0 + m * kRowsPerPass;
    float r[kVec];
    float mx = row_values(m, r);
#pragma unroll
    for (int off = 1; off < kTpr; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float scale =
        !a.quant.scaled ? 1.0f : (a.quant.coarse ? head_scale : fmaxf(mx, 1e-30f) / a.quant.qmax);
    const float inv = a.quant.scaled ? 1.0f / scale : 1.0f;
    const uint32_t row_key =
        kStochastic ? static_cast<uint32_t>(Mix64(head_key + static_cast<uint64_t>(i))) : 0u;
    *reinterpret_cast<Raw*>(s + i * DV + col) = C::Encode(r, inv, a.quant.qmax, kStochastic, row_key, col);
    if (a.quant.scaled && tid % kTpr == 0) sc[i] = scale;
  }
}

}  // namespace

at::Tensor RecurrentStepTiledCuda(const DecodeInputs& in, RecurrentStatePool& pool) {
  const c10::cuda::CUDAGuard guard(pool.values.device());  // launches and the stream on the pool's GPU
  at::Tensor out = at::empty({in.v.size(0), in.v.size(1), in.v.size(2)}, in.v.options());
  if (in.v.size(0) == 0) return out;
  DispatchTiledStep(pool, in.v.scalar_type(), in.q.size(2), [&](auto store, auto input, auto dim, auto stochastic) {
    using Store = decltype(store);
    using In = decltype(input);
    constexpr int kDim = decltype(dim)::value;
    constexpr bool kStochastic = decltype(stochastic)::value;
    Store* values = reinterpret_cast<Store*>(pool.values.data_ptr());
    const StepArgs<In> a = MakeStepArgs<In>(in, pool, out);
    const int64_t blocks = in.v.size(0) * a.heads;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    TiledStepKernel<Store, In, kDim, kDim, kStochastic><<<blocks, kThreads, 0, stream>>>(values, a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace deltaserve::kernels::internal
