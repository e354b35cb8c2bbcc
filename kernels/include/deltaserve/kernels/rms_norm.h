// Fused RMS norms of Qwen3.5's decode step: the zero-centred layer norm, the residual add folded into it,
// and the gated norm on the delta rule's output. One pass per row on CUDA; ATen in fp32 elsewhere.
#ifndef DELTASERVE_KERNELS_RMS_NORM_H_
#define DELTASERVE_KERNELS_RMS_NORM_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

// Qwen3.5's zero-centred RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * (1 + w),
// in fp32, returned in x's dtype. x [..., H] (last dim contiguous), weight [H].
// Dtypes: x fp32 or bf16; weight x's dtype or fp32.
absl::StatusOr<at::Tensor> RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// residual += x (in residual's dtype, in place: the rounded sum is what the next layer adds to, as in
// the unfused model), then returns RmsNorm(residual). One pass on CUDA. x and residual have the same
// shape and dtype.
absl::StatusOr<at::Tensor> AddRmsNorm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                      double eps);

// The delta rule's output norm: w * (x / rms(x)) * silu(gate), rows of the last dimension (H = head dim),
// x and gate [..., H] same shape, weight [H] (plain w, not 1 + w). fp32 math, x's dtype out.
absl::StatusOr<at::Tensor> GatedRmsNorm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight,
                                        double eps);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_RMS_NORM_H_
