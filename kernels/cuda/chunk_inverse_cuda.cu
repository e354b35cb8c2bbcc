// The fused prefill's chunk inverse as a kernel of its own (see chunk_inverse_cuda.h): each block loads
// one strictly lower-triangular C x C matrix into shared memory, inverts (I + A) with InvertChunk (blocked
// forward substitution, or the Neumann series with residual corrections and the guard's exact fallback, or
// the product form; products in 3xTF32 on tensor cores, float32-accurate) and stores T. The inverse table
// of bench_kernels times it against the ATen composition and FLA's solve_tril on the same matrices.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../src/chunk_inverse_cuda.h"
#include "gdn_prefill_prepare.cuh"

namespace deltaserve::kernels::internal {
namespace {

using gdn::kPad;
using gdn::kThreads;

__global__ void __launch_bounds__(kThreads) ChunkInverseKernel(ChunkInverseArgs p, gdn::InverseParams ip) {
  extern __shared__ float smem[];
  const int c = p.c, ld = c + kPad;
  float* sa = smem;
  float* b0 = sa + c * ld;
  float* b1 = b0 + c * ld;
  float* b2 = b1 + c * ld;
  float* scratch = b2 + c * ld;  // kThreads / 32 floats for BlockMax
  const int64_t base = static_cast<int64_t>(blockIdx.x) * c * c;
  for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
    const int i = idx / c, j = idx % c;
    sa[i * ld + j] = j < i ? p.a[base + idx] : 0.0f;
  }
  __syncthreads();
  const float* t = gdn::InvertChunk<true>(sa, b0, b1, b2, c, ld, ip, scratch, p.guard_counters);
  __syncthreads();
  for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
    const int i = idx / c, j = idx % c;
    p.out[base + idx] = j <= i ? t[i * ld + j] : 0.0f;
  }
}

}  // namespace

void ChunkInverseCuda(const ChunkInverseArgs& a) {
  if (a.chunks == 0) return;
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(a.device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(a.device));
  gdn::InverseParams ip{};
  ip.method = a.method;
  ip.order = a.order;
  ip.band = a.band;
  ip.residual_steps = a.residual_steps;
  ip.guard = a.guard;
  ip.guard_tol = a.guard_tol;
  // A and three scratch matrices of C x (C + kPad) floats, then BlockMax's per-warp slots: 69.8 KB at C = 64.
  const size_t bytes = (4 * static_cast<size_t>(a.c) * (a.c + kPad) + kThreads / 32) * sizeof(float);
  C10_CUDA_CHECK(cudaFuncSetAttribute(ChunkInverseKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  ChunkInverseKernel<<<static_cast<unsigned>(a.chunks), kThreads, bytes, stream>>>(a, ip);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace deltaserve::kernels::internal
