// CUDA decode step over the recurrent state pool: one thread block per (sequence, head). Pass 1 reads
// the state once (column sums S^T k and S^T q); pass 2 gives each warp whole rows, so the new row's
// max, its scale and the requantized values never leave registers. Same math as the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>

#include "../src/recurrent_step_impl.h"
#include "../src/state_quant.h"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename Store>
__device__ inline Store EncodeDevice(float x, float qmax, bool stochastic, float uniform) {
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

__device__ inline float WarpMax(float x) {
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ inline float WarpSum(float x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Sum over the block; every thread gets the result. `scratch` holds kWarps floats.
__device__ inline float BlockSum(float x, float* scratch) {
  x = WarpSum(x);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

template <typename Store>
__global__ void StepKernel(Store* __restrict__ values, float* __restrict__ scales,
                           const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, const float* __restrict__ g,
                           const float* __restrict__ beta, const int64_t* __restrict__ slots,
                           float* __restrict__ out, int heads, int key_heads, int group, int dk, int dv,
                           bool l2norm, float qscale, bool scaled, bool coarse, bool stochastic, float qmax,
                           uint64_t base) {
  extern __shared__ float smem[];
  float* ks = smem;      // [dk]
  float* qs = ks + dk;   // [dk]
  float* us = qs + dk;   // [dv]
  float* scs = us + dv;  // [dk] old row scales times decay
  __shared__ float warp_max[kWarps];
  const int bh = blockIdx.x;
  const int b = bh / heads, h = bh % heads;
  const int64_t head = slots[b] * heads + h;
  Store* s = values + head * dk * dv;
  float* sc = scaled ? scales + head * dk : nullptr;
  const float decay = expf(g[bh]);
  const int64_t key = (static_cast<int64_t>(b) * key_heads + h / group) * dk;
  float qq = 0, kk = 0;
  for (int i = threadIdx.x; i < dk; i += kThreads) {
    ks[i] = k[key + i];
    qs[i] = q[key + i];
    qq += qs[i] * qs[i];
    kk += ks[i] * ks[i];
    scs[i] = decay * (scaled ? sc[i] : 1.0f);
  }
  float qn = qscale, kn = 1.0f;
  if (l2norm) {  // uniform across the block, so the barriers inside BlockSum are safe
    qn = qscale * rsqrtf(BlockSum(qq, warp_max) + 1e-6f);
    kn = rsqrtf(BlockSum(kk, warp_max) + 1e-6f);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < dk; i += kThreads) {
    qs[i] *= qn;
    ks[i] *= kn;
  }
  __syncthreads();
  float kq = 0;
  for (int i = 0; i < dk; ++i) kq += ks[i] * qs[i];
  const float bt = beta[bh];
  for (int j = threadIdx.x; j < dv; j += kThreads) {
    float kv = 0, sq = 0;
    for (int i = 0; i < dk; ++i) {
      const float x = static_cast<float>(s[i * dv + j]) * scs[i];
      kv += ks[i] * x;
      sq += qs[i] * x;
    }
    const float u = bt * (v[bh * dv + j] - kv);
    us[j] = u;
    out[bh * dv + j] = sq + kq * u;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float head_scale = 0;
  if (coarse) {  // one scale for the head: its max over every new value first
    float m = 0;
    for (int i = warp; i < dk; i += kWarps) {
      for (int j = lane; j < dv; j += 32) {
        m = fmaxf(m, fabsf(static_cast<float>(s[i * dv + j]) * scs[i] + ks[i] * us[j]));
      }
    }
    m = WarpMax(m);
    if (lane == 0) warp_max[warp] = m;
    __syncthreads();
    m = 0;
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_max[w]);
    head_scale = fmaxf(m, 1e-30f) / qmax;
  }
  const uint64_t head_key = Mix64(base ^ static_cast<uint64_t>(head));
  for (int i = warp; i < dk; i += kWarps) {
    // A lane holds columns lane, lane + 32, ...; dv <= 256 keeps them in registers.
    float r[8];
    float m = 0;
    int n = 0;
    for (int j = lane; j < dv; j += 32, ++n) {
      r[n] = static_cast<float>(s[i * dv + j]) * scs[i] + ks[i] * us[j];
      m = fmaxf(m, fabsf(r[n]));
    }
    if (!scaled) {
      n = 0;
      for (int j = lane; j < dv; j += 32, ++n) s[i * dv + j] = static_cast<Store>(r[n]);
      continue;
    }
    const float scale = coarse ? head_scale : fmaxf(WarpMax(m), 1e-30f) / qmax;
    const float inv = 1.0f / scale;
    const uint32_t row_key = static_cast<uint32_t>(Mix64(head_key + static_cast<uint64_t>(i)));
    n = 0;
    for (int j = lane; j < dv; j += 32, ++n) {
      const float uniform = stochastic ? RowUniform(row_key, static_cast<uint32_t>(j)) : 0.0f;
      s[i * dv + j] = EncodeDevice<Store>(r[n] * inv, qmax, stochastic, uniform);
    }
    if (lane == 0) sc[i] = scale;
  }
}

template <typename Store>
at::Tensor Launch(const DecodeInputs& in, RecurrentStatePool& pool) {
  const int batch = in.v.size(0), heads = in.v.size(1), key_heads = in.q.size(1);
  const int dk = in.q.size(2), dv = in.v.size(2);
  TORCH_CHECK(dv <= 256, "CUDA decode step supports dv <= 256, got ", dv);
  at::Tensor o = at::empty({batch, heads, dv}, in.v.options());
  const size_t shm = sizeof(float) * (3 * dk + dv);
  const uint64_t base = Mix64(pool.seed + pool.step * 0x9E3779B97F4A7C15ULL);
  StepKernel<Store><<<batch * heads, kThreads, shm, at::cuda::getCurrentCUDAStream()>>>(
      pool.values.data_ptr<Store>(), IsScaled(pool.dtype) ? pool.scales.data_ptr<float>() : nullptr,
      in.q.data_ptr<float>(), in.k.data_ptr<float>(), in.v.data_ptr<float>(), in.g.data_ptr<float>(),
      in.beta.data_ptr<float>(), in.slots.data_ptr<int64_t>(), o.data_ptr<float>(), heads, key_heads,
      static_cast<int>(in.group), dk, dv, in.l2norm, in.scale, IsScaled(pool.dtype), IsCoarse(pool.dtype),
      IsStochastic(pool.dtype), QuantMax(pool.dtype), base);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return o;
}

}  // namespace

at::Tensor RecurrentStepCuda(const DecodeInputs& in, RecurrentStatePool& pool) {
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
