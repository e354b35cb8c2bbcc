// CUDA decode step for 1-byte states (INT8, FP8) at dk = dv = 64 or 128, built to keep memory busy:
// persistent blocks walk (sequence, head) items, and while a block computes one head, the next head's
// state and scales are already on their way into shared memory (a Hopper bulk copy on an mbarrier,
// double-buffered), as are its q, k, v, g, beta and slot (in registers). The register-tiled kernel
// (recurrent_step_tiled_cuda.cu) loads, reduces and stores one head per block in phases that overlap only
// across the four blocks an SM holds, and reached 62% of copy bandwidth for INT8. The step is bound by its
// instructions, so this kernel also spends fewer a value (docs/kernels.md); its sums run in another order
// than the tiled kernel's, so the two agree within one quantum, not bit for bit.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

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
  for (int w = 1; w < kWarpsN; ++w) {
    x += scratch[0][w];
    y += scratch[1][w];
    z += scratch[2][w];
  }
}

// The maxima of kGroup rows, each spread over the kTpr lanes of a segment, in one exchange: every step
// hands half of the rows still held to the partner lane and keeps the other half, then a butterfly
// finishes the last row. Lane l ends with the whole maximum of row (l % kTpr) / (kTpr / kGroup): kGroup
// + log2(kTpr) - 1 shuffles instead of kGroup log2(kTpr).
template <int kTpr, int kGroup>
__device__ __forceinline__ float RowMaxima(const float (&mx)[kGroup], int lane) {
  float v[kGroup];
#pragma unroll
  for (int j = 0; j < kGroup; ++j) v[j] = mx[j];
  int off = kTpr / 2;
#pragma unroll
  for (int n = kGroup; n > 1; n /= 2) {
    const bool upper = lane & off;
#pragma unroll
    for (int j = 0; j < n / 2; ++j) {
      const float send = upper ? v[j] : v[j + n / 2], keep = upper ? v[j + n / 2] : v[j];
      v[j] = fmaxf(keep, __shfl_xor_sync(0xffffffffu, send, off));
    }
    off /= 2;
  }
#pragma unroll
  for (; off >= 1; off /= 2) v[0] = fmaxf(v[0], __shfl_xor_sync(0xffffffffu, v[0], off));
  return v[0];
}

// Pass 1 (column sums): warp w takes rows [w kRows1, + kRows1) and lane l the kCols1 columns from
// l kCols1, so no lanes share a column and a warp reads a whole row of shared memory at a time. Pass 2
// (update, requantize, store) keeps the tiled kernel's layout: kTpr lanes per row, kVec columns each,
// rows t / kTpr + m kRowsPerPass, in groups of kGroup rows whose maxima and scales are found together.
template <typename Store, typename In, int DK, int DV, bool kStochastic>
__global__ void __launch_bounds__(kThreads, 4)
    StreamedStepKernel(Store* __restrict__ values, StepArgs<In> a, int items) {
  using C = Codec<Store>;
  static_assert(sizeof(Store) == 1, "the streamed step is for 1-byte states");
  constexpr int kCols1 = DV / 32, kRows1 = DK / kWarps;
  static_assert(kCols1 == 2 || kCols1 == 4, "pass 1 reads 2 or 4 bytes a lane");
  using Word1 = std::conditional_t<kCols1 == 4, uint32_t, uint16_t>;
  constexpr int kVec = C::kVec;
  constexpr int kTpr = DV / kVec;
  static_assert(kTpr >= 1 && kTpr <= 32 && 32 % kTpr == 0, "a row spans a power-of-two part of a warp");
  constexpr int kRowsPerPass = kThreads / kTpr;
  static_assert(DK % kRowsPerPass == 0, "rows split evenly over the block");
  constexpr int kRpt = DK / kRowsPerPass;
  constexpr int kGroup = kRpt < 4 ? kRpt : 4;
  static_assert(kRpt % kGroup == 0 && kTpr % kGroup == 0, "row groups fit the rows and lanes");
  constexpr uint32_t kStateBytes = DK * DV * sizeof(Store), kScaleBytes = DK * sizeof(float);
  static_assert(kStateBytes % 16 == 0 && kScaleBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
  using Raw = typename C::Raw;

  __shared__ alignas(128) Store state[2][DK * DV];
  __shared__ alignas(16) float old_scales[2][DK];
  __shared__ float2 sum_coef[DK];     // (k_i, q_i) after normalisation, times decay and the old scale
  __shared__ float2 update_coef[DK];  // (decay times the old scale, k_i after normalisation)
  __shared__ float us[DV];
  __shared__ float part[kWarps][2][DV];
  __shared__ float scratch[kWarps];
  __shared__ float scratch3[3][kWarps];
  __shared__ alignas(8) uint64_t loaded[2];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int col = (tid % kTpr) * kVec, row0 = tid / kTpr;
  const bool scaled = a.quant.scaled;
  auto valid = [&](int64_t slot) { return slot >= 0 && slot < a.pool_slots; };
  // Thread 0 starts the copies of item `item` (slot known) into buffer `buf`.
  auto fetch = [&](int item, int64_t slot, int buf) {
    const int64_t head = slot * a.heads + item % a.heads;
    // The buffer's last reads (ordinary loads, ordered before this by a barrier) come before the copy's
    // writes.
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
      float qq = 0, kk = 0, qk = 0;
      if (tid < DK) {
        qq = cur.q * cur.q;
        kk = cur.k * cur.k;
        qk = cur.q * cur.k;
      }
      BlockSum3<kWarps>(qq, kk, qk, scratch3);  // while the state may still be arriving
      float qn = a.qscale, kn = 1.0f;
      if (a.l2norm) {
        qn = a.qscale * rsqrtf(qq + 1e-6f);
        kn = rsqrtf(kk + 1e-6f);
      }
      const float kq = qk * qn * kn;  // k . q after normalisation and scale
      MbarrierWait(&loaded[buf], (phases >> buf) & 1u);
      phases ^= 1u << buf;
      if (tid < DK) {
        const float si = expf(cur.g) * (scaled ? old_scales[buf][tid] : 1.0f), kin = cur.k * kn;
        sum_coef[tid] = make_float2(kin * si, (cur.q * qn) * si);
        update_coef[tid] = make_float2(si, kin);
      }
      __syncthreads();

      // Pass 1: column sums of (decayed, dequantized) S^T k and S^T q.
      float kv[kCols1] = {}, sq[kCols1] = {};
#pragma unroll
      for (int rr = 0; rr < kRows1; ++rr) {
        const int i = warp * kRows1 + rr;
        float x[kCols1];
        C::template DecodeWord<kCols1>(*reinterpret_cast<const Word1*>(&state[buf][i * DV + lane * kCols1]),
                                       x);
        const float2 c = sum_coef[i];
#pragma unroll
        for (int e = 0; e < kCols1; ++e) {
          kv[e] += c.x * x[e];
          sq[e] += c.y * x[e];
        }
      }
#pragma unroll
      for (int e = 0; e < kCols1; ++e) {
        part[warp][0][lane * kCols1 + e] = kv[e];
        part[warp][1][lane * kCols1 + e] = sq[e];
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
        const float2 c = update_coef[i];
        float mx = 0;
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          r[e] = __fmaf_rn(c.y, u[e], r[e] * c.x);
          mx = fmaxf(mx, fabsf(r[e]));
        }
        return mx;
      };
      float head_scale = 1.0f;
      if (scaled && a.quant.coarse) {  // one scale for the head: the max over every new value
        float mx = 0;
#pragma unroll
        for (int m = 0; m < kRpt; ++m) {
          float r[kVec];
          mx = fmaxf(mx, row_values(m, r));
        }
        head_scale = fmaxf(BlockReduce<kWarps>(mx, scratch, MaxOp()), 1e-30f) / a.quant.qmax;
      }
      const uint64_t head_key = Mix64(a.quant.base ^ static_cast<uint64_t>(head));
      constexpr int kLanesPerRow = kTpr / kGroup;  // lanes that end up holding one row's maximum
      const int segment = lane & ~(kTpr - 1), owned = (lane % kTpr) / kLanesPerRow;
#pragma unroll
      for (int g = 0; g < kRpt / kGroup; ++g) {
        float r[kGroup][kVec], mx[kGroup], inv[kGroup];
#pragma unroll
        for (int j = 0; j < kGroup; ++j) mx[j] = row_values(g * kGroup + j, r[j]);
        float scale = head_scale;
        if (scaled && !a.quant.coarse) {  // each lane finds one row's scale, then all lanes share them
          scale = fmaxf(RowMaxima<kTpr, kGroup>(mx, lane), 1e-30f) / a.quant.qmax;
          const float own_inv = 1.0f / scale;
#pragma unroll
          for (int j = 0; j < kGroup; ++j)
            inv[j] = __shfl_sync(0xffffffffu, own_inv, segment + j * kLanesPerRow);
        } else {
#pragma unroll
          for (int j = 0; j < kGroup; ++j) inv[j] = scaled ? 1.0f / head_scale : 1.0f;
        }
#pragma unroll
        for (int j = 0; j < kGroup; ++j) {
          const int i = row0 + (g * kGroup + j) * kRowsPerPass;
          const uint32_t row_key =
              kStochastic ? static_cast<uint32_t>(Mix64(head_key + static_cast<uint64_t>(i))) : 0u;
          *reinterpret_cast<Raw*>(s + i * DV + col) =
              C::Encode(r[j], inv[j], a.quant.qmax, kStochastic, row_key, col);
        }
        if (scaled && lane % kLanesPerRow == 0) sc[row0 + (g * kGroup + owned) * kRowsPerPass] = scale;
      }
    }
    __syncthreads();  // this item's buffer and shared scalars are free again
    cur = next;
    LoadItem<In, DK, DV>(a, item + 2 * stride, items, next);
  }
}

// Blocks that stay resident: the grid is one wave of them, each walking items gridDim.x apart. The
// occupancy is the kernel's (asked once); the SM count is the current device's (ATen caches it).
template <typename Kernel>
int ResidentBlocks(Kernel kernel) {
  static const int per_sm = [&] {
    int n = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0));
    return std::max(1, n);
  }();
  return per_sm * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}


bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool StreamedStepFits(const RecurrentStatePool& pool, int64_t dk, int64_t dv, at::ScalarType dtype) {
  if (!TiledStepFits(dk, dv, dtype) || pool.values.element_size() != 1 || !pool.values.is_contiguous())
    return false;
  if (!Aligned16(pool.values.data_ptr())) return false;
  if (IsScaled(pool.dtype) && !(pool.scales.is_contiguous() && Aligned16(pool.scales.data_ptr())))
    return false;
  // Bulk copies and mbarrier byte counts, on the pool's GPU (not necessarily the current one).
  return at::cuda::getDeviceProperties(pool.values.device().index())->major >= 9;
}

at::Tensor RecurrentStepStreamedCuda(const DecodeInputs& in, RecurrentStatePool& pool) {
  const c10::cuda::CUDAGuard guard(pool.values.device());  // launches and the stream on the pool's GPU
  at::Tensor out = at::empty({in.v.size(0), in.v.size(1), in.v.size(2)}, in.v.options());
  if (in.v.size(0) == 0) return out;
  DispatchTiledStep(pool, in.v.scalar_type(), in.q.size(2), [&](auto store, auto input, auto dim, auto stochastic) {
    using Store = decltype(store);
    using In = decltype(input);
    constexpr int kDim = decltype(dim)::value;
    constexpr bool kStochastic = decltype(stochastic)::value;
    Store* values = reinterpret_cast<Store*>(pool.values.data_ptr());
    if constexpr (sizeof(Store) == 1) {  // StreamedStepFits admits the 1-byte states only
      const StepArgs<In> a = MakeStepArgs<In>(in, pool, out);
      const int items = static_cast<int>(in.v.size(0) * a.heads);
      auto kernel = StreamedStepKernel<Store, In, kDim, kDim, kStochastic>;
      const int grid = std::min(items, ResidentBlocks(kernel));
      kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(values, a, items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace deltaserve::kernels::internal
