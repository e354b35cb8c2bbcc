// See linear_weight.h: the weight dtype names, INT8 group quantization at load and its inverse.
#include "deltaserve/kernels/linear_weight.h"

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "check.h"

namespace deltaserve::kernels {

absl::StatusOr<WeightDtype> ParseWeightDtype(const std::string& name) {
  if (name.empty() || name == "same") return WeightDtype::kSame;
  if (name == "int8") return WeightDtype::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("weight dtype: expected \"same\" (the activations' dtype) or \"int8\", got \"", name, "\""));
}

const char* WeightDtypeName(WeightDtype dtype) { return dtype == WeightDtype::kInt8 ? "int8" : "same"; }

absl::StatusOr<LinearWeight> QuantizeWeightInt8(const at::Tensor& weight) {
  if (!weight.defined() || weight.dim() != 2 || !weight.device().is_cpu() ||
      (weight.scalar_type() != at::kFloat && weight.scalar_type() != at::kBFloat16)) {
    return absl::InvalidArgumentError("weight: INT8 quantization takes a float32 or bfloat16 CPU tensor [N, K]");
  }
  const int64_t n = weight.size(0), k = weight.size(1);
  if (k % kWeightQuantGroup != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weight: INT8 quantization needs K a multiple of ",
                                                   kWeightQuantGroup, ", got [", n, ", ", k, "]"));
  }
  DS_CATCH_ATEN({
    const at::Tensor groups = weight.to(at::kFloat).reshape({n, k / kWeightQuantGroup, kWeightQuantGroup});
    // An all-zero group keeps scale 0 and values 0 (dividing by the clamped scale gives 0).
    const at::Tensor scales = groups.abs().amax(-1) / 127.0f;
    const at::Tensor values =
        at::round(groups / scales.clamp_min(1e-30f).unsqueeze(-1)).clamp(-127, 127).to(at::kChar).reshape({n, k});
    LinearWeight out;
    out.weight = values.contiguous();
    out.scales = scales.contiguous();
    return out;
  })
}

at::Tensor DequantizeWeight(const LinearWeight& weight, at::ScalarType dtype) {
  if (!weight.quantized()) return weight.weight.to(dtype);
  const int64_t n = weight.weight.size(0), k = weight.weight.size(1);
  return (weight.weight.to(at::kFloat).reshape({n, k / kWeightQuantGroup, kWeightQuantGroup}) *
          weight.scales.unsqueeze(-1))
      .reshape({n, k})
      .to(dtype);
}

}  // namespace deltaserve::kernels
