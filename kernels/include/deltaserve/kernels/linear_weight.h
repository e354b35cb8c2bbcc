// A projection's weight as kernels::Linear takes it: dense, or weight-only quantized with one fp32 scale per
// group of 32 values along K (INT8 as llama.cpp's Q8_0, 4-bit as its Q4_0), quantized once at load and
// dequantized inside the kernels.
#ifndef DELTASERVE_KERNELS_LINEAR_WEIGHT_H_
#define DELTASERVE_KERNELS_LINEAR_WEIGHT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

// Values along K that share one scale.
inline constexpr int64_t kWeightQuantGroup = 32;

// How a model stores its projections' weights: in the activations' dtype, or INT8 / 4-bit with group scales.
enum class WeightDtype { kSame, kInt8, kInt4 };

// "" or "same" -> kSame, "int8" -> kInt8, "int4" -> kInt4; InvalidArgument naming the accepted values
// otherwise.
absl::StatusOr<WeightDtype> ParseWeightDtype(const std::string& name);
const char* WeightDtypeName(WeightDtype dtype);

// Quantized weights: INT8 values int8 [N, K]; 4-bit values uint8 [N, K / 2], each group of 32 values in 16
// bytes, byte j holding value j in its low nibble and value j + 16 in its high one, each stored as
// value + 8 (0..15 for -8..7).
struct LinearWeight {
  at::Tensor weight;  // dense [N, K] in the activations' dtype, or the quantized values (above)
  at::Tensor scales;  // float32 [N, K / kWeightQuantGroup] when quantized (w = value * scale); else undefined

  LinearWeight() = default;
  LinearWeight(at::Tensor dense) : weight(std::move(dense)) {}  // NOLINT(google-explicit-constructor)
  bool quantized() const { return scales.defined(); }
  bool int4() const { return quantized() && weight.scalar_type() == at::kByte; }
  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return int4() ? 2 * weight.size(1) : weight.size(1); }
};

// Rounds a float32 or bfloat16 CPU weight [N, K] (K a multiple of kWeightQuantGroup) to INT8: per group, the
// scale is max |w| / 127 and each value round(w / scale), so |w - value * scale| <= scale / 2.
absl::StatusOr<LinearWeight> QuantizeWeightInt8(const at::Tensor& weight);

// The same to 4 bits, as llama.cpp's Q4_0: per group, the value of largest magnitude m gives the scale
// m / -8 (so m itself is -8 exactly) and each value round(w / scale) clamped to -8..7: |w - value * scale| is
// at most |scale| / 2, or |scale| for values of the other sign near |m| (clamped at 7).
absl::StatusOr<LinearWeight> QuantizeWeightInt4(const at::Tensor& weight);

// QuantizeWeightInt8 or QuantizeWeightInt4 by `dtype` (not kSame).
absl::StatusOr<LinearWeight> QuantizeWeight(const at::Tensor& weight, WeightDtype dtype);

// The weight as a dense tensor of `dtype` (values * scales for a quantized one): for references and tests.
at::Tensor DequantizeWeight(const LinearWeight& weight, at::ScalarType dtype);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_LINEAR_WEIGHT_H_
