// CUDA decode step over the recurrent state pool: one thread block per (sequence, head), four warps.
// Both passes give each warp whole rows and each lane four consecutive values, so every state access is
// one vector load or store (16 B for fp32, 8 B for bf16, 4 B for int8/fp8). Pass 1 forms per-warp
// column sums of S^T k and S^T q, reduced through shared memory; pass 2 re-reads each row (from L1/L2),
// updates it and requantizes it with the row's new max, all in registers. Same math as the CPU kernel.
// A negative slot (padding row) only zeroes its output.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>

#include "../src/recurrent_step_impl.h"
#include "../src/state_quant.h"
#include "block_reduce.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxDv = 256;  // four values per lane, up to two column groups of 128
constexpr int kGroups = kMaxDv / 128;

template <typename Store>
struct alignas(4 * sizeof(Store)) Vec4 {
  Store v[4];
};

template <typename Store>
__device__ inline Store EncodeDevice(float x, float, bool, float) {
  return static_cast<Store>(x);
}
template <>
__device__ inline int8_t EncodeDevice<int8_t>(float x, float qmax, bool stochastic, float uniform) {
  const float q = stochastic ? floorf(x + uniform) : nearbyintf(x);
  return static_cast<int8_t>(fminf(fmaxf(q, -qmax), qmax));
}
template <>
__device__ inline c10::Float8_e4m3fn EncodeDevice<c10::Float8_e4m3fn>(float x, float qmax, bool, float) {
  return c10::Float8_e4m3fn(fminf(fmaxf(x, -qmax), qmax));
}

struct StepArgs {
  float* scales;
  const float *q, *k, *v, *g, *beta;
  const int64_t* slots;
  float* out;
  int heads, key_heads, group, dk, dv;
  int64_t pool_slots;
  bool l2norm;
  float qscale;
  StepQuantization quant;
};

template <typename Store>
__global__ void __launch_bounds__(kThreads) StepKernel(Store* __restrict__ values, StepArgs a) {
  __shared__ float ks[kMaxDv], qs[kMaxDv], scs[kMaxDv], us[kMaxDv];
  __shared__ float part_kv[kWarps][kMaxDv], part_sq[kWarps][kMaxDv];
  __shared__ float scratch[kWarps];
  const int dk = a.dk, dv = a.dv;
  const int bh = blockIdx.x;
  const int b = bh / a.heads, h = bh % a.heads;
  const int64_t slot = a.slots[b];
  // Negative: a padding row, zero output and no state touched; at or above the pool (only slots changed
  // behind the checks, as in a graph replayed with unchecked slots) likewise, rather than out of bounds.
  // The whole block takes this branch, so leaving before the first barrier is safe.
  if (slot < 0 || slot >= a.pool_slots) {
    for (int j = threadIdx.x; j < dv; j += kThreads) a.out[static_cast<int64_t>(bh) * dv + j] = 0.0f;
    return;
  }
  const int64_t head = slot * a.heads + h;
  Store* s = values + head * dk * dv;
  float* sc = a.quant.scaled ? a.scales + head * dk : nullptr;
  const float decay = expf(a.g[bh]);
  const int64_t key = (static_cast<int64_t>(b) * a.key_heads + h / a.group) * dk;
  float qq = 0, kk = 0, qk = 0;
  for (int i = threadIdx.x; i < dk; i += kThreads) {
    ks[i] = a.k[key + i];
    qs[i] = a.q[key + i];
    qq += qs[i] * qs[i];
    kk += ks[i] * ks[i];
    qk += qs[i] * ks[i];
    scs[i] = decay * (a.quant.scaled ? sc[i] : 1.0f);
  }
  float qn = a.qscale, kn = 1.0f;
  if (a.l2norm) {  // uniform across the block, so the barriers inside BlockReduce are safe
    qn = a.qscale * rsqrtf(BlockReduce<kWarps>(qq, scratch, SumOp()) + 1e-6f);
    kn = rsqrtf(BlockReduce<kWarps>(kk, scratch, SumOp()) + 1e-6f);
  }
  const float kq =
      BlockReduce<kWarps>(qk, scratch, SumOp()) * qn * kn;  // k . q after normalisation and scale
  for (int i = threadIdx.x; i < dk; i += kThreads) {
    qs[i] *= qn;
    ks[i] *= kn;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Pass 1: per-warp partial column sums over the warp's rows.
  float kv[kGroups][4] = {}, sq[kGroups][4] = {};
  // Unrolled so several rows' loads are in flight at once: one row at a time leaves each warp waiting
  // a full memory latency per row.
#pragma unroll 8
  for (int i = warp; i < dk; i += kWarps) {
    const float ki = ks[i] * scs[i], qi = qs[i] * scs[i];
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi) {
      const int c = gi * 128 + lane * 4;
      if (c >= dv) break;
      const Vec4<Store> x = *reinterpret_cast<const Vec4<Store>*>(s + i * dv + c);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const float xv = static_cast<float>(x.v[m]);
        kv[gi][m] += ki * xv;
        sq[gi][m] += qi * xv;
      }
    }
  }
#pragma unroll
  for (int gi = 0; gi < kGroups; ++gi) {
    const int c = gi * 128 + lane * 4;
    if (c >= dv) break;
    for (int m = 0; m < 4; ++m) {
      part_kv[warp][c + m] = kv[gi][m];
      part_sq[warp][c + m] = sq[gi][m];
    }
  }
  __syncthreads();
  const float bt = a.beta[bh];
  for (int j = threadIdx.x; j < dv; j += kThreads) {
    float kvj = 0, sqj = 0;
    for (int w = 0; w < kWarps; ++w) {
      kvj += part_kv[w][j];
      sqj += part_sq[w][j];
    }
    const float u = bt * (a.v[bh * dv + j] - kvj);
    us[j] = u;
    a.out[bh * dv + j] = sqj + kq * u;
  }
  __syncthreads();

  // Pass 2: update, requantize, store. New value r = decay * scale * x + k_i * u.
  auto row_values = [&](int i, float(&r)[kGroups][4]) {
    float m = 0;
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi) {
      const int c = gi * 128 + lane * 4;
      if (c >= dv) break;
      const Vec4<Store> x = *reinterpret_cast<const Vec4<Store>*>(s + i * dv + c);
#pragma unroll
      for (int mm = 0; mm < 4; ++mm) {
        r[gi][mm] = static_cast<float>(x.v[mm]) * scs[i] + ks[i] * us[c + mm];
        m = fmaxf(m, fabsf(r[gi][mm]));
      }
    }
    return m;
  };
  float head_scale = 0;
  if (a.quant.coarse) {  // one scale for the head: its max over every new value first
    float m = 0;
    float r[kGroups][4];
    for (int i = warp; i < dk; i += kWarps) m = fmaxf(m, row_values(i, r));
    head_scale = fmaxf(BlockReduce<kWarps>(m, scratch, MaxOp()), 1e-30f) / a.quant.qmax;
  }
  const uint64_t head_key = Mix64(a.quant.base ^ static_cast<uint64_t>(head));
#pragma unroll 4
  for (int i = warp; i < dk; i += kWarps) {
    float r[kGroups][4];
    const float m = WarpReduce(row_values(i, r), MaxOp());
    const float scale =
        !a.quant.scaled ? 1.0f : (a.quant.coarse ? head_scale : fmaxf(m, 1e-30f) / a.quant.qmax);
    const float inv = 1.0f / scale;
    const uint32_t row_key = static_cast<uint32_t>(Mix64(head_key + static_cast<uint64_t>(i)));
#pragma unroll
    for (int gi = 0; gi < kGroups; ++gi) {
      const int c = gi * 128 + lane * 4;
      if (c >= dv) break;
      Vec4<Store> y;
#pragma unroll
      for (int mm = 0; mm < 4; ++mm) {
        const float uniform = a.quant.stochastic ? RowUniform(row_key, static_cast<uint32_t>(c + mm)) : 0.0f;
        y.v[mm] = a.quant.scaled
                      ? EncodeDevice<Store>(r[gi][mm] * inv, a.quant.qmax, a.quant.stochastic, uniform)
                      : static_cast<Store>(r[gi][mm]);
      }
      *reinterpret_cast<Vec4<Store>*>(s + i * dv + c) = y;
    }
    if (a.quant.scaled && lane == 0) sc[i] = scale;
  }
}

template <typename Store>
at::Tensor Launch(const DecodeInputs& in, RecurrentStatePool& pool) {
  StepArgs a;
  a.heads = in.v.size(1);
  a.key_heads = in.q.size(1);
  a.group = static_cast<int>(in.group);
  a.dk = in.q.size(2);
  a.dv = in.v.size(2);
  a.pool_slots = pool.slots();
  if (a.dv % 4 != 0 || a.dv > kMaxDv || a.dk > kMaxDv) return RecurrentStepAten(in, pool);
  const int batch = in.v.size(0);
  at::Tensor o = at::empty({batch, a.heads, a.dv}, in.v.options());
  a.scales = IsScaled(pool.dtype) ? pool.scales.data_ptr<float>() : nullptr;
  a.q = in.q.data_ptr<float>();
  a.k = in.k.data_ptr<float>();
  a.v = in.v.data_ptr<float>();
  a.g = in.g.data_ptr<float>();
  a.beta = in.beta.data_ptr<float>();
  a.slots = in.slots.data_ptr<int64_t>();
  a.out = o.data_ptr<float>();
  a.l2norm = in.l2norm;
  a.qscale = in.scale;
  a.quant = QuantizationOf(pool);
  StepKernel<Store>
      <<<batch * a.heads, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(pool.values.data_ptr<Store>(), a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return o;
}

}  // namespace

at::Tensor RecurrentStepCuda(const DecodeInputs& in, RecurrentStatePool& pool) {
  const c10::cuda::CUDAGuard guard(pool.values.device());  // launches and the stream on the pool's GPU
  switch (pool.dtype) {
    case StateDtype::kFloat32:
      return Launch<float>(in, pool);
    case StateDtype::kBFloat16:
      return Launch<c10::BFloat16>(in, pool);
    case StateDtype::kFloat8E4M3:
      return Launch<c10::Float8_e4m3fn>(in, pool);
    default:
      return Launch<int8_t>(in, pool);
  }
}

}  // namespace deltaserve::kernels::internal
