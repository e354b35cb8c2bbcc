// The prefill's final states into a scaled recurrent-state pool (INT8 or FP8 e4m3 values, float32 scales):
// the one step of the prefill in the pool that the state pass cannot do itself, because a row's scale needs
// the whole row and the pass's column blocks each hold a part of it. One block per (sequence, head), one
// warp per row at a time; the rounding is WriteStates' on the GPU: scale = max(max |row|, 1e-30) * (1 / qmax)
// (per head for coarse pools), values divided by it, rounded to nearest (even) and clamped to +-qmax.
#include <c10/cuda/CUDAException.h>

#include "block_reduce.cuh"
#include "gdn_prefill_common.cuh"

namespace deltaserve::kernels::internal::gdn {
namespace {

constexpr int kQuantThreads = 256;
constexpr int kQuantWarps = kQuantThreads / 32;

__global__ void __launch_bounds__(kQuantThreads) QuantizeIntoPoolKernel(const float* states, PoolRef pool, int heads,
                                                                        int dk, int dv, bool coarse, float qmax) {
  __shared__ float scratch[kQuantWarps];
  const int h = static_cast<int>(blockIdx.x % heads), seq = static_cast<int>(blockIdx.x / heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* src = states + (static_cast<int64_t>(seq) * heads + h) * dk * dv;
  const int64_t row0 = (pool.slots[seq] * heads + h) * dk;  // the slot's first row
  const float inv_qmax = __fdiv_rn(1.0f, qmax);
  float head_max = 0.0f;
  if (coarse) {
    float m = 0.0f;
    for (int idx = threadIdx.x; idx < dk * dv; idx += blockDim.x) m = fmaxf(m, fabsf(src[idx]));
    head_max = BlockReduce<kQuantWarps>(m, scratch, MaxOp());
  }
  for (int d = warp; d < dk; d += kQuantWarps) {
    const float* row = src + static_cast<int64_t>(d) * dv;
    float amax = head_max;
    if (!coarse) {
      float m = 0.0f;
      for (int j = lane; j < dv; j += 32) m = fmaxf(m, fabsf(row[j]));
      amax = WarpReduce(m, MaxOp());
    }
    // ATen on CUDA divides by the scalar qmax as a multiply by its float reciprocal: the same bits here.
    const float scale = fmaxf(amax, 1e-30f) * inv_qmax;
    const int64_t out = (row0 + d) * dv;
    for (int j = lane; j < dv; j += 32) {
      const float x = row[j] / scale;
      if (pool.kind == PoolKind::kInt8) {
        static_cast<int8_t*>(pool.values)[out + j] = static_cast<int8_t>(fminf(fmaxf(rintf(x), -qmax), qmax));
      } else {
        static_cast<__nv_fp8_e4m3*>(pool.values)[out + j] = __nv_fp8_e4m3(fminf(fmaxf(x, -qmax), qmax));
      }
    }
    if (lane == 0) pool.scales[row0 + d] = scale;
  }
}

}  // namespace

void LaunchQuantizeIntoPool(const float* states, int n, int heads, int dk, int dv, const PoolRef& pool, bool coarse,
                            float qmax, cudaStream_t stream) {
  if (n == 0) return;
  QuantizeIntoPoolKernel<<<static_cast<unsigned>(n) * heads, kQuantThreads, 0, stream>>>(states, pool, heads, dk, dv,
                                                                                        coarse, qmax);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace deltaserve::kernels::internal::gdn
