// The device implementations of one decode step over a state pool, behind RecurrentGatedDeltaStep,
// which has already validated, normalised, scaled and head-repeated the inputs.
#ifndef DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_
#define DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_

#include <ATen/ATen.h>

#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels::internal {

struct DecodeInputs {
  at::Tensor q, k;   // [B, Hv, dk] float32, normalised and scaled, heads repeated
  at::Tensor v;      // [B, Hv, dv] float32
  at::Tensor g, beta;  // [B, Hv] float32
  at::Tensor slots;  // [B] int64 on the pool's device
};

// Fused loop over (sequence, head): one read and one write of each state, quantization in registers.
at::Tensor RecurrentStepCpu(const DecodeInputs& in, RecurrentStatePool& pool);
// The same step as ATen ops (gather, dequantize, update, quantize, scatter): any device; the reference.
at::Tensor RecurrentStepAten(const DecodeInputs& in, RecurrentStatePool& pool);
#ifdef DELTASERVE_WITH_CUDA
at::Tensor RecurrentStepCuda(const DecodeInputs& in, RecurrentStatePool& pool);
#endif

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_RECURRENT_STEP_IMPL_H_
