// The fused prefill's chunk inverse as a kernel of its own (see chunk_inverse_cuda.h): each block loads
// one strictly lower-triangular C x C matrix into shared memory, inverts (I + A) with InvertChunk (blocked
// forward substitution, or the Neumann series with residual corrections and the guard's exact fallback, or
// the product form; products in 3xTF32 on tensor cores, float32-accurate; or the Neumann series with INT8
// tile-scaled products, optionally refined against full-precision residuals) and stores T. The inverse
// table of bench_kernels times it against the ATen composition and FLA's solve_tril on the same matrices.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../src/chunk_inverse_cuda.h"
#include "gdn_prefill_prepare.cuh"

namespace deltaserve::kernels::internal {
namespace {

using gdn::kPad;
using gdn::kThreads;

// Shared memory: A and three scratch matrices of C x (C + kPad) floats and BlockMax's per-warp slots; with
// INT8 products then, from a 128-byte boundary, a 16 x 16 int32 tile per warp (1 KB each), the two
// quantized operands (C x C bytes each, whole 256-byte tiles) and the two operands' tile scales. 69.8 KB at
// C = 64, 88.2 KB with INT8. The host sizes the launch with it and the kernel carves its buffers by it.
struct InverseLayout {
  size_t low_bit_offset, tile_sums_bytes, operand_bytes, scales_bytes;
  __host__ __device__ InverseLayout(int c, bool int8) {
    low_bit_offset = ((4 * static_cast<size_t>(c) * (c + kPad) + kThreads / 32) * sizeof(float) + 127) / 128 * 128;
    tile_sums_bytes = int8 ? (kThreads / 32) * 256 * sizeof(int) : 0;
    operand_bytes = int8 ? static_cast<size_t>(c) * c : 0;
    scales_bytes = int8 ? static_cast<size_t>(c / 16) * (c / 16) * sizeof(float) : 0;
  }
  __host__ __device__ size_t total() const {
    return low_bit_offset + tile_sums_bytes + 2 * operand_bytes + 2 * scales_bytes;
  }
};

template <bool kInt8>
__global__ void __launch_bounds__(kThreads) ChunkInverseKernel(ChunkInverseArgs p, gdn::InverseParams ip) {
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  float* smem = reinterpret_cast<float*>(smem_bytes);
  const int c = p.c, ld = c + kPad, nb = c / 16;
  float* sa = smem;
  float* b0 = sa + c * ld;
  float* b1 = b0 + c * ld;
  float* b2 = b1 + c * ld;
  float* scratch = b2 + c * ld;  // kThreads / 32 floats for BlockMax
  gdn::LowBitScratch low_bit{};
  if constexpr (kInt8) {
    const InverseLayout layout(c, true);
    unsigned char* q = smem_bytes + layout.low_bit_offset;
    low_bit.tile_sums = reinterpret_cast<int*>(q);
    low_bit.qx = reinterpret_cast<int8_t*>(q + layout.tile_sums_bytes);
    low_bit.qy = low_bit.qx + layout.operand_bytes;
    low_bit.sx = reinterpret_cast<float*>(low_bit.qy + layout.operand_bytes);
    low_bit.sy = low_bit.sx + nb * nb;
  }
  const int64_t base = static_cast<int64_t>(blockIdx.x) * c * c;
  for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
    const int i = idx / c, j = idx % c;
    sa[i * ld + j] = j < i ? p.a[base + idx] : 0.0f;
  }
  __syncthreads();
  const float* t = gdn::InvertChunk<true, kInt8>(sa, b0, b1, b2, c, ld, ip, scratch, p.guard_counters, low_bit);
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
  ip.refine = a.refine;
  const size_t bytes = InverseLayout(a.c, a.int8).total();
  auto launch = [&](auto kernel) {
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    kernel<<<static_cast<unsigned>(a.chunks), kThreads, bytes, stream>>>(a, ip);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (a.int8) {
    launch(ChunkInverseKernel<true>);
  } else {
    launch(ChunkInverseKernel<false>);
  }
}

}  // namespace deltaserve::kernels::internal
