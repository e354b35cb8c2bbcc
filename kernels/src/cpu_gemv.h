// The CPU projection for decode's few rows: y = x W^T with each weight row streamed from memory once for
// all rows of x, split over the intra-op threads, vectorised for the CPU it runs on (AVX-512, AVX2, SSE).
#ifndef DELTASERVE_KERNELS_SRC_CPU_GEMV_H_
#define DELTASERVE_KERNELS_SRC_CPU_GEMV_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace deltaserve::kernels::internal {

// The most rows of x the CPU GEMV takes; more go to at::linear (MKL's sgemm reads each weight once per
// block of rows, and its blocking wins from here on).
inline constexpr int64_t kCpuGemvMaxRows = 4;

// Whether CpuGemv can take x [..., K] and weight [N, K]: both on the CPU, weight contiguous fp32 or bf16,
// x of the weight's dtype with at most kCpuGemvMaxRows rows (2 for bf16) addressable with one stride
// (RowStride).
bool CpuGemvApplies(const at::Tensor& x, const at::Tensor& weight);

// out [rows, N] = x W^T, or out += x W^T with `accumulate`, in out's dtype (x's; contiguous) with fp32
// accumulation and one rounding. x's rows start `row_stride` elements apart. `silu_and_mul`: each row
// of x is [gate | up] (2K wide) and the product reads silu(gate) * up, rounded to x's dtype first as
// SiluAndMul's output would be.
void CpuGemv(const at::Tensor& x, int64_t row_stride, const at::Tensor& weight, at::Tensor& out, bool accumulate,
             bool silu_and_mul);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CPU_GEMV_H_
