// Qwen3.5's small building blocks as free functions on tensors: the zero-centred RMSNorm, the gated
// RMSNorm of the delta-rule output, and partial rotary embeddings.
#ifndef DELTASERVE_SERVER_MODELS_QWEN35_LAYERS_H_
#define DELTASERVE_SERVER_MODELS_QWEN35_LAYERS_H_

#include <ATen/core/Tensor.h>

namespace deltaserve::models::qwen35 {

// y = x / rms(x) * (1 + w), computed in float32, returned in x's dtype. Normalises the last dimension.
at::Tensor RmsNormZeroCentred(const at::Tensor& x, const at::Tensor& weight, double eps);

// y = w * (x / rms(x)) * silu(gate): the norm in float32, the weight applied in x's dtype, the gate in
// float32, as the reference does. Normalises the last dimension.
at::Tensor GatedRmsNorm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps);

// cos and sin [T, rotary_dim] in `dtype` for integer positions [T] and inv_freq [rotary_dim / 2].
void RotaryCosSin(const at::Tensor& positions, const at::Tensor& inv_freq, at::ScalarType dtype,
                  at::Tensor* cos, at::Tensor* sin);

// Rotates the first rotary_dim features of x [T, heads, head_dim] (halves convention), leaves the rest.
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_LAYERS_H_
