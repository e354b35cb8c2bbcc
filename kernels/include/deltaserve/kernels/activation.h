// SwiGLU's activation as one fused pass (instead of silu, a temporary and a multiply): the MLP's
// gate and up projections arrive as one [gate | up] tensor.
#ifndef DELTASERVE_KERNELS_ACTIVATION_H_
#define DELTASERVE_KERNELS_ACTIVATION_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

// SwiGLU's gate: x [..., 2F] holds [gate | up]; returns silu(gate) * up [..., F] in x's dtype (fp32 math).
// x fp32 or bf16, last dimension contiguous (rows may be strided).
absl::StatusOr<at::Tensor> SiluAndMul(const at::Tensor& x);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_ACTIVATION_H_
