// y = x W^T for the model's projections: a memory-bound kernel for the few-row case of decode on CUDA
// (cuBLAS's tiles read bf16 weights at well under the GPU's bandwidth at M <= 8), at::linear otherwise.
#ifndef DELTASERVE_KERNELS_LINEAR_H_
#define DELTASERVE_KERNELS_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

// The most rows of x that take the small-batch kernel; more go to at::linear (cuBLAS).
inline constexpr int64_t kSmallBatchLinearMaxRows = 8;

// x [..., K] fp32 or bf16, weight [N, K] of x's dtype and device; returns [..., N] in x's dtype (fp32
// accumulation). On CUDA, bf16 x with at most kSmallBatchLinearMaxRows rows, a contiguous weight and
// K % 8 == 0 runs the small-batch kernel; everything else is at::linear.
absl::StatusOr<at::Tensor> Linear(const at::Tensor& x, const at::Tensor& weight);

// Whether Linear(x, weight) would take the small-batch CUDA kernel (for benchmarks and tests).
bool UsesSmallBatchLinear(const at::Tensor& x, const at::Tensor& weight);

// Process-wide switch (on by default): off sends every Linear to at::linear, so a benchmark can measure
// the model with and without the small-batch kernel in one run. Set it before capturing CUDA graphs.
void SetSmallBatchLinearEnabled(bool enabled);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_LINEAR_H_
