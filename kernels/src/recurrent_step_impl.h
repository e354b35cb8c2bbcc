// The device implementations of one decode step over a state pool, behind RecurrentGatedDeltaStep,
// which has already validated, normalised, scaled and head-repeated the inputs.
#ifndef DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_
#define DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/types/span.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels::internal {

// Raw step inputs as float32: normalisation, scale and the key-head lookup happen inside the kernels,
// so a step is one pass and, on CUDA, one launch.
struct DecodeInputs {
  at::Tensor q, k;      // [B, Hk, dk] float32
  at::Tensor v;         // [B, Hv, dv] float32
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
at::Tensor RecurrentStepCuda(const DecodeInputs& in, RecurrentStatePool& pool);
#endif

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_
