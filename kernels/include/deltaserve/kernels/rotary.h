// Attention's per-head q/k norm and partial rotary embedding as one pass: replaces the norm, the cos/sin
// tables and the slicing, negation, concatenation and multiplies of the unfused composition.
#ifndef DELTASERVE_KERNELS_ROTARY_H_
#define DELTASERVE_KERNELS_ROTARY_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

// Per-head zero-centred RMSNorm (weight [head_dim], y = norm(x) * (1 + w)) followed by partial rotary
// embedding (halves convention, first rotary_dim features rotated by angle position * inv_freq[j],
// rest unchanged), for attention q or k. x [T, heads, head_dim] whose last dim is contiguous but whose
// rows may be strided (q is a narrow() of a wider projection: stride(0) and stride(1) arbitrary);
// positions [T] int64 on x's device; inv_freq [rotary_dim / 2] fp32. Returns a new contiguous
// [T, heads, head_dim] tensor in x's dtype. fp32 math; cos/sin computed in fp32 in the kernel.
// x fp32 or bf16; norm_weight x's dtype or fp32; 2 <= rotary_dim <= head_dim.
absl::StatusOr<at::Tensor> QkNormRotary(const at::Tensor& x, const at::Tensor& norm_weight,
                                        const at::Tensor& positions, const at::Tensor& inv_freq, double eps);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_ROTARY_H_
