// A projection's weight as kernels::Linear takes it: dense, or INT8 weight-only quantized (one fp32 scale per
// group of 32 values along K, as llama.cpp's Q8_0), quantized once at load and dequantized inside the kernels.
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

// How a model stores its projections' weights: in the activations' dtype, or INT8 with group scales.
enum class WeightDtype { kSame, kInt8 };

// "" or "same" -> kSame, "int8" -> kInt8; InvalidArgument naming the accepted values otherwise.
absl::StatusOr<WeightDtype> ParseWeightDtype(const std::string& name);
const char* WeightDtypeName(WeightDtype dtype);

struct LinearWeight {
  at::Tensor weight;  // dense [N, K] in the activations' dtype, or the int8 values [N, K] when quantized
  at::Tensor scales;  // float32 [N, K / kWeightQuantGroup] when quantized (w = value * scale); else undefined

  LinearWeight() = default;
  LinearWeight(at::Tensor dense) : weight(std::move(dense)) {}  // NOLINT(google-explicit-constructor)
  bool quantized() const { return scales.defined(); }
  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
};

// Rounds a float32 or bfloat16 CPU weight [N, K] (K a multiple of kWeightQuantGroup) to INT8: per group, the
// scale is max |w| / 127 and each value round(w / scale), so |w - value * scale| <= scale / 2.
absl::StatusOr<LinearWeight> QuantizeWeightInt8(const at::Tensor& weight);

// The weight as a dense tensor of `dtype` (values * scales for a quantized one): for references and tests.
at::Tensor DequantizeWeight(const LinearWeight& weight, at::ScalarType dtype);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_LINEAR_WEIGHT_H_
