// Warp and block reductions (sum, max) that hand the result to every thread, shared by the decode-step
// kernels. The block versions contain barriers: every thread of the block calls them, or none.
#ifndef DELTASERVE_KERNELS_CUDA_BLOCK_REDUCE_CUH_
#define DELTASERVE_KERNELS_CUDA_BLOCK_REDUCE_CUH_

namespace deltaserve::kernels::internal {

struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float WarpReduce(float x, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// Over a block of kWarps whole warps; `scratch` holds kWarps floats (values >= 0 for MaxOp).
template <int kWarps, typename Op>
__device__ __forceinline__ float BlockReduce(float x, float* scratch, Op op) {
  x = WarpReduce(x, op);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float total = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total = op(total, scratch[w]);
  __syncthreads();  // scratch is free again for the next call
  return total;
}

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_CUDA_BLOCK_REDUCE_CUH_
