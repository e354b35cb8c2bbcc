// CUDA decode step for 1-byte states (INT8, FP8) at dk = dv = 64 or 128, built to keep memory busy:
// persistent blocks walk (sequence, head) items, and while a block computes one head, the next head's
// state and scales are already on their way into shared memory (a Hopper bulk copy on an mbarrier,
// double-buffered), as are its q, k, v, g, beta and slot (in registers). The register-tiled kernel
// (recurrent_step_tiled_cuda.cu) loads, reduces and stores one head per block in phases that overlap only
// across the four blocks an SM holds, and reached 62% of copy bandwidth for INT8. Same arithmetic in the
// same order as the tiled kernel, so the two give the same bytes.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <type_traits>

#include "../src/recurrent_step_impl.h"
#include "../src/state_quant.h"
#include "block_reduce.cuh"
#include "decode_step_common.cuh"
#include "tma_bulk.cuh"

namespace deltaserve::kernels::internal {
namespace {

constexpr int kThreads = kStepThreads;
constexpr int kWarps = kStepWarps;

// One item's small inputs, loaded one item ahead: thread t < dk holds q[t] and k[t], t < dv holds v[t].
struct ItemInputs {
  int64_t slot = -1;
  float q = 0, k = 0, v = 0, g = 0, beta = 0;
};

template <typename In, int DK, int DV>
__device__ __forceinline__ void LoadItem(const StepArgs<In>& a, int item, int items, ItemInputs& x) {
  if (item >= items) return;
  const int b = item / a.heads, h = item % a.heads;
  const int t = threadIdx.x;
  x.slot = a.slots[b];
  if (t < DK) {
    x.q = static_cast<float>(a.q[b * a.q_stride + (h / a.group) * DK + t]);
    x.k = static_cast<float>(a.k[b * a.k_stride + (h / a.group) * DK + t]);
  }
  if (t < DV) x.v = static_cast<float>(a.v[b * a.v_stride + h * DV + t]);
  x.g = a.g[item];
  x.beta = a.beta[item];
}

template <int kWarpsN>
__device__ __forceinline__ void BlockSum3(float& x, float& y, float& z, float (*scratch)[kWarpsN]) {
  x = WarpReduce(x, SumOp());
  y = WarpReduce(y, SumOp());
  z = WarpReduce(z, SumOp());
  if (threadIdx.x % 32 == 0) {
    scratch[0][threadIdx.x / 32] = x;
    scratch[1][threadIdx.x / 32] = y;
    scratch[2][threadIdx.x / 32] = z;
  }
  __syncthreads();
  x = scratch[0][0];
  y = scratch[1][0];
  z = scratch[2][0];
#pragma unroll
  for (int w = 1; w < kWarpsN; ++w) {  // the order BlockReduce sums in: the same floats as the tiled kernel
    x += scratch[0][w];
    y += scratch[1][w];
    z += scratch[2][w];
  }
}

// Thread t owns columns [(t % kTpr) * kVec, + kVec) of rows t / kTpr + m * kRowsPerPass, m < kRpt, as in
// the tiled kernel; a warp reads two whole rows of shared memory at a time, free of bank conflicts.
template <typename Store, typename In, int DK, int DV, bool kStochastic>
__global__ void __launch_bounds__(kThreads, 4)
    StreamedStepKernel(Store* __restrict__ values, StepArgs<In> a, int items) {
  using C = Codec<Store>;
  static_assert(sizeof(Store) == 1, "the streamed step is for 1-byte states");
  constexpr int kVec = C::kVec;
  constexpr int kTpr = DV / kVec;
  static_assert(kTpr >= 1 && kTpr <= 32 && 32 % kTpr == 0, "a row spans a power-of-two part of a warp");
  constexpr int kRowsPerPass = kThreads / kTpr;
  static_assert(DK % kRowsPerPass == 0, "rows split evenly over the block");
  constexpr int kRpt = DK / kRowsPerPass;
  constexpr uint32_t kStateBytes = DK * DV * sizeof(Store), kScaleBytes = DK * sizeof(float);
  static_assert(kStateBytes % 16 == 0 && kScaleBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
  using Raw = typename C::Raw;

  __shared__ alignas(128) Store state[2][DK * DV];
  __shared__ alignas(16) float old_scales[2][DK];
  __shared__ float ks[DK], qs[DK], scs[DK], us[DV];
  __shared__ float part[kWarps][2][DV];
  __shared__ float scratch[kWarps];
  __shared__ float scratch3[3][kWarps];
  __shared__ alignas(8) uint64_t loaded[2];

  const int tid = threadIdx.x;
  const int col = (tid % kTpr) * kVec, row0 = tid / kTpr;
  const bool scaled = a.quant.scaled;
  auto valid = [&](int64_t slot) { return slot >= 0 && slot < a.pool_slots; };
  // Thread 0 starts the copies of item `item` (slot known) into buffer `buf`.
  auto fetch = [&](int item, int64_t slot, int buf) {
    const int64_t head = slot * a.heads + item % a.heads;
    // The buffer's last reads (ordinary loads, ordered before this by a barrier) come before the copy's writes.
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    MbarrierExpectBytes(&loaded[buf], kStateBytes + (scaled ? kScaleBytes : 0));
    BulkCopyToShared(state[buf], values + head * (DK * DV), kStateBytes, &loaded[buf]);
    if (scaled) BulkCopyToShared(old_scales[buf], a.scales + head * DK, kScaleBytes, &loaded[buf]);
  };

  if (tid == 0) {
    MbarrierInit(&loaded[0]);
    MbarrierInit(&loaded[1]);
  }
  __syncthreads();

  const int stride = static_cast<int>(gridDim.x);
  ItemInputs cur, next;
  LoadItem<In, DK, DV>(a, blockIdx.x, items, cur);
  LoadItem<In, DK, DV>(a, blockIdx.x + stride, items, next);
  if (tid == 0 && blockIdx.x < items && valid(cur.slot)) fetch(blockIdx.x, cur.slot, 0);
  uint32_t phases = 0;  // bit b: the parity of buffer b's next phase
  int n = 0;
  for (int item = blockIdx.x; item < items; item += stride, ++n) {
    const int buf = n & 1;
    // The other buffer was last read by the previous item, which every thread has finished (the barrier
    // at the end of the loop).
    if (tid == 0 && item + stride < items && valid(next.slot)) fetch(item + stride, next.slot, buf ^ 1);
    if (!valid(cur.slot)) {
      // A padding row (negative slot) or a slot beyond the pool: zero output, no state touched.
      for (int j = tid; j < DV; j += kThreads) a.out[static_cast<int64_t>(item) * DV + j] = In(0.0f);
    } else {
      const int64_t head = cur.slot * a.heads + item % a.heads;
      Store* s = values + head * (DK * DV);
      float* sc = scaled ? a.scales + head * DK : nullptr;
      const float decay = expf(cur.g);
      float qq = 0, kk = 0, qk = 0;
      if (tid < DK) {
        qs[tid] = cur.q;
        ks[tid] = cur.k;
        qq = cur.q * cur.q;
        kk = cur.k * cur.k;
        qk = cur.q * cur.k;
      }
      MbarrierWait(&loaded[buf], (phases >> buf) & 1u);
      phases ^= 1u << buf;
      if (tid < DK) scs[tid] = decay * (scaled ? old_scales[buf][tid] : 1.0f);
      BlockSum3<kWarps>(qq, kk, qk, scratch3);  // its barrier also publishes qs, ks and scs
      float qn = a.qscale, kn = 1.0f;
      if (a.l2norm) {
        qn = a.qscale * rsqrtf(qq + 1e-6f);
        kn = rsqrtf(kk + 1e-6f);
      }
      const float kq = qk * qn * kn;  // k . q after normalisation and scale

      // Pass 1: column sums of (decayed, dequantized) S^T k and S^T q, as in the tiled kernel.
      float kv[kVec] = {}, sq[kVec] = {};
#pragma unroll
      for (int m = 0; m < kRpt; ++m) {
        const int i = row0 + m * kRowsPerPass;
        float x[kVec];
        C::Decode(*reinterpret_cast<const Raw*>(&state[buf][i * DV + col]), x);
        const float ki = (ks[i] * kn) * scs[i], qi = (qs[i] * qn) * scs[i];
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
      if (tid < DV) {
        float kvj = 0, sqj = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          kvj += part[w][0][tid];
          sqj += part[w][1][tid];
        }
        const float u = cur.beta * (cur.v - kvj);
        us[tid] = u;
        a.out[static_cast<int64_t>(item) * DV + tid] = static_cast<In>(__fmaf_rn(kq, u, sqj));
      }
      __syncthreads();

      // Pass 2: r = decay * scale * x + k_i * u, requantized with the row's new max, stored to the pool.
      float u[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) u[e] = us[col + e];
      auto row_values = [&](int m, float(&r)[kVec]) {
        const int i = row0 + m * kRowsPerPass;
        C::Decode(*reinterpret_cast<const Raw*>(&state[buf][i * DV + col]), r);
        const float si = scs[i], ki = ks[i] * kn;
        float mx = 0;
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          r[e] = __fmaf_rn(ki, u[e], r[e] * si);  // as the tiled kernel rounds it
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
        const float scale = !scaled ? 1.0f : (a.quant.coarse ? head_scale : fmaxf(mx, 1e-30f) / a.quant.qmax);
        if (scaled) {
          const float inv = 1.0f / scale;
#pragma unroll
          for (int e = 0; e < kVec; ++e) r[e] *= inv;
        }
        const uint32_t row_key =
            kStochastic ? static_cast<uint32_t>(Mix64(head_key + static_cast<uint64_t>(i))) : 0u;
        *reinterpret_cast<Raw*>(s + i * DV + col) = C::Encode(r, a.quant.qmax, kStochastic, row_key, col);
        if (scaled && tid % kTpr == 0) sc[i] = scale;
      }
    }
    __syncthreads();  // this item's buffer and shared scalars are free again
    cur = next;
    LoadItem<In, DK, DV>(a, item + 2 * stride, items, next);
  }
}

// Blocks that stay resident: the grid is one wave of them, each walking items gridDim.x apart.
template <typename Kernel>
int ResidentBlocks(Kernel kernel) {
  static const int blocks = [&] {
    int per_sm = 0, device = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    C10_CUDA_CHECK(cudaGetDevice(&device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return std::max(1, per_sm) * std::max(1, sms);
  }();
  return blocks;
}

template <typename Store, typename In, int DK, int DV, bool kStochastic>
void Launch(const StepArgs<In>& a, Store* values, int items, cudaStream_t stream) {
  auto kernel = StreamedStepKernel<Store, In, DK, DV, kStochastic>;
  const int grid = std::min(items, ResidentBlocks(kernel));
  kernel<<<grid, kThreads, 0, stream>>>(values, a, items);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Store, typename In, int DK, int DV>
void LaunchShape(const DecodeInputs& in, RecurrentStatePool& pool, const at::Tensor& out) {
  StepArgs<In> a;
  a.heads = static_cast<int>(in.v.size(1));
  a.key_heads = static_cast<int>(in.q.size(1));
  a.group = static_cast<int>(in.group);
  a.pool_slots = pool.slots();
  a.scales = IsScaled(pool.dtype) ? pool.scales.data_ptr<float>() : nullptr;
  a.q = reinterpret_cast<const In*>(in.q.data_ptr());
  a.k = reinterpret_cast<const In*>(in.k.data_ptr());
  a.v = reinterpret_cast<const In*>(in.v.data_ptr());
  a.q_stride = in.q.stride(0);
  a.k_stride = in.k.stride(0);
  a.v_stride = in.v.stride(0);
  a.g = in.g.data_ptr<float>();
  a.beta = in.beta.data_ptr<float>();
  a.slots = in.slots.data_ptr<int64_t>();
  a.out = reinterpret_cast<In*>(out.data_ptr());
  a.l2norm = in.l2norm;
  a.qscale = in.scale;
  a.quant = QuantizationOf(pool);
  const int items = static_cast<int>(in.v.size(0) * a.heads);
  Store* values = reinterpret_cast<Store*>(pool.values.data_ptr());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if constexpr (std::is_same<Store, int8_t>::value) {
    if (a.quant.stochastic) return Launch<Store, In, DK, DV, true>(a, values, items, stream);
  }
  Launch<Store, In, DK, DV, false>(a, values, items, stream);
}

template <typename Store, typename In>
void LaunchDims(const DecodeInputs& in, RecurrentStatePool& pool, const at::Tensor& out) {
  if (in.q.size(2) == 128) {
    LaunchShape<Store, In, 128, 128>(in, pool, out);
  } else {
    LaunchShape<Store, In, 64, 64>(in, pool, out);
  }
}

template <typename In>
void LaunchStore(const DecodeInputs& in, RecurrentStatePool& pool, const at::Tensor& out) {
  if (pool.dtype == StateDtype::kFloat8E4M3) return LaunchDims<c10::Float8_e4m3fn, In>(in, pool, out);
  LaunchDims<int8_t, In>(in, pool, out);
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool StreamedStepFits(const RecurrentStatePool& pool, int64_t dk, int64_t dv, at::ScalarType dtype) {
  if (!TiledStepFits(dk, dv, dtype) || pool.values.element_size() != 1 || !pool.values.is_contiguous()) return false;
  if (!Aligned16(pool.values.data_ptr())) return false;
  if (IsScaled(pool.dtype) && !(pool.scales.is_contiguous() && Aligned16(pool.scales.data_ptr()))) return false;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  return major >= 9;  // bulk copies and mbarrier transaction counts are Hopper's
}

at::Tensor RecurrentStepStreamedCuda(const DecodeInputs& in, RecurrentStatePool& pool) {
  at::Tensor out = at::empty({in.v.size(0), in.v.size(1), in.v.size(2)}, in.v.options());
  if (in.v.size(0) == 0) return out;
  if (in.v.scalar_type() == at::kBFloat16) {
    LaunchStore<c10::BFloat16>(in, pool, out);
  } else {
    LaunchStore<float>(in, pool, out);
  }
  return out;
}

}  // namespace deltaserve::kernels::internal
