// y = x W^T for the model's projections, with the RMS norm before and the residual add after folded in:
// memory-bound kernels for decode's few rows (CUDA and CPU), at::linear (cuBLAS, MKL) and the norm kernels
// otherwise.
#ifndef DELTASERVE_KERNELS_LINEAR_H_
#define DELTASERVE_KERNELS_LINEAR_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "deltaserve/kernels/linear_weight.h"

namespace deltaserve::kernels {

// The most rows of x that take the small-batch kernel; more go to at::linear (cuBLAS). Inside the
// decode step's CUDA graph (H100, 0.8B model) the kernel beat cuBLAS at one row and lost at 4 and 8.
inline constexpr int64_t kSmallBatchLinearMaxRows = 2;
// On CUDA, wider weights stay with cuBLAS: it streams the 248k-row lm_head at about 2.9 TB/s (H100),
// where the small-batch kernel reads the projections at about 1.7.
inline constexpr int64_t kSmallBatchLinearMaxOutputsCuda = 65536;

// x [..., K] fp32 or bf16, weight [N, K] of x's dtype and device; returns [..., N] in x's dtype (fp32
// accumulation). On CUDA, bf16 x with at most kSmallBatchLinearMaxRows rows, a contiguous weight of at
// most kSmallBatchLinearMaxOutputsCuda rows and K % 8 == 0 runs the small-batch kernel; on the CPU, fp32 x with at most 4 rows (bf16: 2) and a contiguous
// weight runs the CPU GEMV (each weight read once, split over the intra-op threads); everything else is
// at::linear.
// An INT8 weight (linear_weight.h) takes x of either dtype on the CPU only: up to 4 rows through the
// dequantizing GEMV, more through blocks dequantized into at::mm.
absl::StatusOr<at::Tensor> Linear(const at::Tensor& x, const LinearWeight& weight);

// y = RmsNorm(x, norm_weight, eps) W^T, with kernels::RmsNorm's zero-centred norm and its argument
// rules. Where the small-batch kernel runs and the rows of x fit its shared memory, each block
// normalises x as it loads it and no normalised copy is written; otherwise RmsNorm, then Linear.
absl::StatusOr<at::Tensor> RmsNormLinear(const at::Tensor& x, const at::Tensor& norm_weight, double eps,
                                         const LinearWeight& weight);

// What a projection reads of its input x.
enum class LinearInput {
  kAsIs,        // x [..., K]
  kSiluAndMul,  // x [..., 2K] = [gate | up]: the projection reads kernels::SiluAndMul(x) [..., K]
};

// residual += input(x) W^T in place, in residual's dtype (fp32 accumulation, one rounding of the sum).
// residual [..., N] contiguous with x's leading shape, dtype and device. The small-batch kernel adds in
// its epilogue (and applies kSiluAndMul as it loads x); otherwise SiluAndMul where asked, then one
// addmm with beta 1 (cuBLAS on CUDA).
absl::Status LinearAccumulate(const at::Tensor& x, const LinearWeight& weight, at::Tensor& residual,
                              LinearInput input = LinearInput::kAsIs);

// Whether Linear(x, weight) would take the small-batch kernel, CUDA or CPU (for benchmarks and tests).
bool UsesSmallBatchLinear(const at::Tensor& x, const at::Tensor& weight);

// Process-wide switch (on by default): off sends every Linear to at::linear, so a benchmark can measure
// the model with and without the small-batch kernels in one run. Set it before capturing CUDA graphs.
void SetSmallBatchLinearEnabled(bool enabled);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_LINEAR_H_
