// The CPU projection for decode's few rows: y = x W^T with each weight row streamed from memory once for
// all rows of x, split over the intra-op threads, vectorised for the CPU it runs on (AVX-512, AVX2, SSE).
#ifndef DELTASERVE_KERNELS_SRC_CPU_GEMV_H_
#define DELTASERVE_KERNELS_SRC_CPU_GEMV_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "deltaserve/kernels/linear_weight.h"

namespace deltaserve::kernels::internal {

// The most rows of x the CPU GEMV takes (a decode step of up to 16 sequences); more go to at::linear, whose
// GEMM blocking wins once the product is bound by arithmetic rather than by reading the weight.
inline constexpr int64_t kCpuGemvMaxRows = 16;

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

// Whether CpuGemvQuantized can take x [..., K] (checked against its quantized weight): at most
// kCpuGemvMaxRows rows addressable with one stride.
bool CpuGemvQuantizedApplies(const at::Tensor& x);

// CpuGemv over a quantized weight (linear_weight.h: INT8 values int8 [N, K] or 4-bit values uint8 [N, K / 2],
// float32 scales [N, K / 32]; K a multiple of 32), read at one byte (half a byte) a value. On CPUs with
// AVX-512 VNNI the rows of x are quantized per group of 32 to int8 (Q8_0, as llama.cpp does: scale
// max |x| / 127, |x - q s| <= s / 2) and multiplied in integers (cpu_gemv_int8_dot.h); elsewhere each group of
// weights is converted and scaled in registers and multiplied by x as it is. Same contract as CpuGemv
// otherwise (x float32 or bfloat16, at most kCpuGemvMaxRows rows).
void CpuGemvQuantized(const at::Tensor& x, int64_t row_stride, const LinearWeight& w, at::Tensor& out,
                      bool accumulate, bool silu_and_mul);

// Whether CpuGemvQuantized quantizes x (the body this CPU, or a test's override, runs).
bool CpuGemvQuantizesActivations();

// Which of the quantized GEMV's bodies runs: the best the CPU has (kAuto), or one named, so tests run each on
// a CPU that has them all. Not for production use.
enum class CpuIsa { kAuto, kAvx512Vnni, kAvx512, kAvx2, kGeneric };
void SetCpuGemvQuantizedIsaForTesting(CpuIsa isa);

// x [M, K] (contiguous, float32 or bfloat16) times a quantized weight for any M: blocks of 128 output features
// are dequantized to float32 in a per-thread buffer and multiplied by at::mm (float32 accumulation); the
// result [M, N] in x's dtype.
at::Tensor CpuLinearQuantized(const at::Tensor& x, const LinearWeight& w);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CPU_GEMV_H_
