// The standalone batched chunk inverse on CUDA (chunk_inverse_cuda.cu): one block per C x C matrix running
// the fused prefill's in-kernel inverse on its own, for TriInverseOptions::fused_cuda and the inverse table.
#ifndef DELTASERVE_KERNELS_SRC_CHUNK_INVERSE_CUDA_H_
#define DELTASERVE_KERNELS_SRC_CHUNK_INVERSE_CUDA_H_

#include <cstdint>

namespace deltaserve::kernels::internal {

// Raw pointers to contiguous float32 CUDA memory (InvertUnitLowerTriangular has validated the rest).
struct ChunkInverseArgs {
  const float* a;        // [chunks, c, c]; only the strictly lower triangle is read
  float* out;            // [chunks, c, c]: T = (I + A)^-1, zero above the diagonal
  int* guard_counters;   // [2], zeroed: chunks the guard sent to forward substitution, largest residual
                         // bound (float bits; the bound is >= 0, so int order is float order)
  int64_t chunks;
  int c;                 // 16, 32 or 64
  int method;            // 0 forward substitution, 1 Neumann, 2 product form
  int order, band, residual_steps;  // Neumann
  bool guard;            // Neumann: check the residual bound and fall back where it exceeds guard_tol
  float guard_tol;
  bool int8;             // Neumann: the products in INT8 with one scale per 16 x 16 tile (block_scales)
  bool refine;           // int8: the residuals in full precision (refine_residual)
  int device;
};

// One launch on the device's current stream; no synchronisation, no allocation.
void ChunkInverseCuda(const ChunkInverseArgs& args);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CHUNK_INVERSE_CUDA_H_
