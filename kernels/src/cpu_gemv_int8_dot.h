// The quantized GEMV's integer-dot bodies for CPUs with AVX-512 VNNI: the rows of x quantized per group of 32
// to int8 (as llama.cpp's Q8_0 quantizes activations) and multiplied by INT8 or 4-bit weights with vpdpbusd.
#ifndef DELTASERVE_KERNELS_SRC_CPU_GEMV_INT8_DOT_H_
#define DELTASERVE_KERNELS_SRC_CPU_GEMV_INT8_DOT_H_

#include <cstdint>
#include <vector>

namespace deltaserve::kernels::internal {

// Whether this CPU runs the bodies below (AVX-512 F, BW and VNNI).
bool CpuHasInt8Dot();

// x's rows as the integer-dot bodies read them, in chunks of 64 values (two groups of 32; K is padded with
// zeros to a whole chunk): the bytes in the order the weight format's chunk unpacks to, and per int32 lane
// of vpdpbusd's result (four consecutive bytes) the activation scale and an integer offset to add.
struct Int8Activations {
  int64_t rows = 0, k = 0, chunks = 0;
  std::vector<uint8_t> bytes;    // [rows, chunks, 64]
  std::vector<float> scales;     // [rows, chunks, 16]
  std::vector<int32_t> offsets;  // [rows, chunks, 16]
};

// Quantizes x [rows, k] (float32, rows k apart) per group of 32: scale s = max |x| / 127, value
// q = round(x / s) (to nearest even), so |x - q s| <= s / 2, for weights of the 4-bit format (`int4`) or
// INT8. Writes the dequantized values q * s into `dequantized` [rows, k] when given (tests' reference).
void QuantizeActivationsInt8(const float* x, int64_t rows, int64_t k, bool int4, Int8Activations& out,
                             float* dequantized = nullptr);

// y[m * n_total + n] (+)= sum over groups g of s_x s_w(n, g) dot(q_x, q_w) for the rows of `x` and weight rows
// [n0, n1) of the quantized values `q` (INT8 [N, K] or 4-bit [N, K / 2]) with scales [N, K / 32]; rows of x
// in tiles of up to 4.
void DotRowsInt8Dot(const Int8Activations& x, int64_t m0, int64_t rows, const uint8_t* q, const float* scales,
                    bool int4, int64_t n0, int64_t n1, float* y, int64_t n_total, bool accumulate);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CPU_GEMV_INT8_DOT_H_
