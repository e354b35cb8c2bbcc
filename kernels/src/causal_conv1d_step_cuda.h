// The fused CUDA decode step of the causal conv1d, behind CausalConv1dStep, which has already validated
// the arguments (shapes, dtypes, devices, strides, slot ranges).
#ifndef DELTASERVE_KERNELS_SRC_CAUSAL_CONV1D_STEP_CUDA_H_
#define DELTASERVE_KERNELS_SRC_CAUSAL_CONV1D_STEP_CUDA_H_

#include <ATen/ATen.h>

namespace deltaserve::kernels::internal {

// x [B, D] (float32, float64 or bfloat16; rows may be strided, channels contiguous); weight [D, K] and bias [D] (or undefined) in x's dtype;
// conv_state [slots, D, K - 1] in x's dtype, updated in place; slots int64 [B] on x's device, a negative
// index marking a padding row (y row zero, no state touched). One launch on the current stream, no host
// synchronisation, no allocation but y. Returns y [B, D] in x's dtype.
at::Tensor CausalConv1dStepCuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::Tensor& conv_state, const at::Tensor& slots, bool silu);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CAUSAL_CONV1D_STEP_CUDA_H_
