// The CUDA prefill of the depthwise causal conv1d against the conv-state pool (causal_conv1d.h's
// CausalConv1dPrefill does the checks and calls it for float32 and bfloat16 inputs with K of 2 to 4).
#ifndef DELTASERVE_KERNELS_SRC_CAUSAL_CONV1D_PREFILL_CUDA_H_
#define DELTASERVE_KERNELS_SRC_CAUSAL_CONV1D_PREFILL_CUDA_H_

#include <ATen/core/Tensor.h>

namespace deltaserve::kernels::internal {

// x [T, D] (rows x.stride(0) apart), weight [D, K], bias [D] or undefined, conv_state [slots, D, K - 1] in x's
// dtype, updated in place at slots [N]; cu_seqlens [N + 1]; all checked by the caller and on x's device.
// Two launches on the current stream (outputs, then states), no host synchronisation, no allocation but
// y. Returns y [T, D] in x's dtype.
at::Tensor CausalConv1dPrefillCuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   at::Tensor& conv_state, const at::Tensor& slots, const at::Tensor& cu_seqlens,
                                   bool silu);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CAUSAL_CONV1D_PREFILL_CUDA_H_
