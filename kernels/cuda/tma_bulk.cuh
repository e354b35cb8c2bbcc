// Hopper bulk copies (TMA, global -> shared, no tensor map) completed on a shared-memory mbarrier: one
// thread starts a contiguous copy of any multiple of 16 bytes, every thread waits on the barrier's phase.
#ifndef DELTASERVE_KERNELS_CUDA_TMA_BULK_CUH_
#define DELTASERVE_KERNELS_CUDA_TMA_BULK_CUH_

#include <cstdint>

namespace deltaserve::kernels::internal {

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One arrival per phase (the thread that starts the copies); then visible to the copy engine. Call from
// one thread, then __syncthreads() before any thread waits on it.
__device__ __forceinline__ void MbarrierInit(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(SharedAddress(bar)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// Announces `bytes` of copies in the barrier's current phase and arrives: the phase completes when they
// have landed.
__device__ __forceinline__ void MbarrierExpectBytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SharedAddress(bar)), "r"(bytes)
               : "memory");
}

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory,
// counted against `bar`.
__device__ __forceinline__ void BulkCopyToShared(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          SharedAddress(dst)),
      "l"(src), "r"(bytes), "r"(SharedAddress(bar))
      : "memory");
}

// Blocks until the barrier's phase with parity `parity` (0, 1, 0, ... for its successive phases) is done.
__device__ __forceinline__ void MbarrierWait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(SharedAddress(bar)), "r"(parity)
        : "memory");
  }
}

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_CUDA_TMA_BULK_CUH_
