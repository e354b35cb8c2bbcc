// The device implementations of one decode step over a state pool, behind RecurrentGatedDeltaStep,
// which has already validated, normalised, scaled and head-repeated the inputs.
#ifndef DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_
#define DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/types/span.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels::internal {

// Raw step inputs: normalisation, scale and the key-head lookup happen inside the kernels, so a step is
// one pass and, on CUDA, one launch. q, k, v are contiguous float32, except for the tiled CUDA kernel,
// which reads them in their own dtype (float32 or bfloat16) from views whose batch rows may be strided.
struct DecodeInputs {
  at::Tensor q, k;      // [B, Hk, dk]
  at::Tensor v;         // [B, Hv, dv]
  at::Tensor g, beta;   // [B, Hv] float32
  at::Tensor slots;     // [B] int64 on the pool's device; negative: a padding row (zero output)
  bool l2norm = false;  // L2-normalise q and k (eps 1e-6 inside the square root, as Qwen3.5)
  float scale = 1.0f;   // applied to q after normalisation
  int64_t group = 1;    // Hv / Hk: value head h reads key head h / group
  // The slots' values on the host, for paths that select rows on the host (the ATen step); empty
  // means no row is padding.
  absl::Span<const int64_t> host_slots;
};

// Fused loop over (sequence, head): one read and one write of each state, quantization in registers.
at::Tensor RecurrentStepCpu(const DecodeInputs& in, RecurrentStatePool& pool);
// The same step as ATen ops (normalise, gather, dequantize, update, quantize, scatter): any device; the
// reference the fused kernels are tested against.
at::Tensor RecurrentStepAten(const DecodeInputs& in, RecurrentStatePool& pool);
#ifdef DELTASERVE_WITH_CUDA
// General CUDA kernel: any dk, dv <= 256 with dv % 4 == 0 (else the ATen step); float32 inputs.
at::Tensor RecurrentStepCuda(const DecodeInputs& in, RecurrentStatePool& pool);
// Register-tiled CUDA kernel for the shapes TiledStepFits accepts: each state byte read and written once
// with 16-byte accesses; o in v's dtype.
at::Tensor RecurrentStepTiledCuda(const DecodeInputs& in, RecurrentStatePool& pool);
// Persistent kernel for 1-byte states on Hopper where StreamedStepFits: the next head's state is copied
// into shared memory while the current one is computed; the same bytes as the tiled kernel.
at::Tensor RecurrentStepStreamedCuda(const DecodeInputs& in, RecurrentStatePool& pool);
// TiledStepFits, a contiguous 1-byte pool with 16-byte aligned values and scales, and a Hopper GPU.
bool StreamedStepFits(const RecurrentStatePool& pool, int64_t dk, int64_t dv, at::ScalarType dtype);
#endif
// T tokens a sequence: q, k [B, T, Hk, dk], v [B, T, Hv, dv], g, beta [B, T, Hv] (float32, contiguous
// unless the CUDA kernel reads them in place), slots [B]; the rest as DecodeInputs.
struct MultiStepInputs {
  DecodeInputs step;  // its q, k, v, g, beta carry the token dimension
  int64_t tokens = 1;
};
// The T-token step as ATen ops on any device (gather and dequantize once, T float32 updates, quantize
// and scatter once): the CPU path and the reference of the CUDA kernel.
at::Tensor RecurrentStepsAten(const MultiStepInputs& in, RecurrentStatePool& pool);
#ifdef DELTASERVE_WITH_CUDA
// The T-token step for the shapes TiledStepFits accepts: one block per (sequence, head) keeps the head's
// state in registers in float32 across the T tokens (recurrent_multi_step_cuda.cu).
at::Tensor RecurrentStepsTiledCuda(const MultiStepInputs& in, RecurrentStatePool& pool);
#endif
// Shapes and input dtypes the tiled CUDA kernel is compiled for.
inline bool TiledStepFits(int64_t dk, int64_t dv, at::ScalarType dtype) {
  return dk == dv && (dk == 64 || dk == 128) && (dtype == at::kFloat || dtype == at::kBFloat16);
}

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_
