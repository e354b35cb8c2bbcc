// See linear_weight.h: the weight dtype names, INT8 and 4-bit group quantization at load and its inverse.
#include "deltaserve/kernels/linear_weight.h"

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "check.h"

namespace deltaserve::kernels {

absl::StatusOr<WeightDtype> ParseWeightDtype(const std::string& name) {
  if (name.empty() || name == "same") return WeightDtype::kSame;
  if (name == "int8") return WeightDtype::kInt8;
  if (name == "int4") return WeightDtype::kInt4;
  return absl::InvalidArgumentError(absl::StrCat(
      "weight dtype: expected \"same\" (the activations' dtype), \"int8\" or \"int4\", got \"", name, "\""));
}

const char* WeightDtypeName(WeightDtype dtype) {
  switch (dtype) {
    case WeightDtype::kInt8:
      return "int8";
    case WeightDtype::kInt4:
      return "int4";
    default:
      return "same";
  }
}

namespace {

// The one rule for what quantization takes: a float32 or bfloat16 CPU matrix with K a multiple of the group.
absl::Status CheckQuantizable(const at::Tensor& weight, const char* what) {
  if (!weight.defined() || weight.dim() != 2 || !weight.device().is_cpu() ||
      (weight.scalar_type() != at::kFloat && weight.scalar_type() != at::kBFloat16)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: ", what, " quantization takes a float32 or bfloat16 CPU tensor [N, K]"));
  }
  if (weight.size(1) % kWeightQuantGroup != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weight: ", what, " quantization needs K a multiple of ",
                                                   kWeightQuantGroup, ", got [", weight.size(0), ", ",
                                                   weight.size(1), "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LinearWeight> QuantizeWeightInt8(const at::Tensor& weight) {
  DS_RETURN_IF_ERROR(CheckQuantizable(weight, "INT8"));
  const int64_t n = weight.size(0), k = weight.size(1);
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

absl::StatusOr<LinearWeight> QuantizeWeightInt4(const at::Tensor& weight) {
  DS_RETURN_IF_ERROR(CheckQuantizable(weight, "4-bit"));
  const int64_t n = weight.size(0), k = weight.size(1), groups = k / kWeightQuantGroup;
  DS_CATCH_ATEN({
    const at::Tensor g = weight.to(at::kFloat).reshape({n, groups, kWeightQuantGroup});
    const at::Tensor largest = g.gather(-1, g.abs().argmax(-1, /*keepdim=*/true));  // signed, [n, groups, 1]
    const at::Tensor scales = largest / -8.0f;
    // An all-zero group keeps scale 0 and values 0 (stored as 8).
    const at::Tensor inv = at::where(scales == 0, at::zeros_like(scales), scales.reciprocal());
    const at::Tensor q = (at::round(g * inv) + 8).clamp(0, 15).to(at::kByte);
    const at::Tensor packed = q.narrow(-1, 0, 16).bitwise_or(q.narrow(-1, 16, 16).bitwise_left_shift(4));
    LinearWeight out;
    out.weight = packed.reshape({n, k / 2}).contiguous();
    out.scales = scales.squeeze(-1).contiguous();
    return out;
  })
}

absl::StatusOr<LinearWeight> QuantizeWeight(const at::Tensor& weight, WeightDtype dtype) {
  if (dtype == WeightDtype::kInt4) return QuantizeWeightInt4(weight);
  if (dtype == WeightDtype::kInt8) return QuantizeWeightInt8(weight);
  return absl::InvalidArgumentError("weight: QuantizeWeight needs int8 or int4");
}

at::Tensor DequantizeWeight(const LinearWeight& weight, at::ScalarType dtype) {
  if (!weight.quantized()) return weight.weight.to(dtype);
  const int64_t n = weight.out_features(), k = weight.in_features();
  at::Tensor values = weight.weight;
  if (weight.int4()) {  // [n, groups, 16] bytes -> [n, groups, 32] values in -8..7
    const at::Tensor bytes = values.reshape({n, k / kWeightQuantGroup, 16}).to(at::kInt);
    values = at::cat({bytes.bitwise_and(15), bytes.bitwise_right_shift(4)}, -1) - 8;
  }
  return (values.to(at::kFloat).reshape({n, k / kWeightQuantGroup, kWeightQuantGroup}) *
          weight.scales.unsqueeze(-1))
      .reshape({n, k})
      .to(dtype);
}

}  // namespace deltaserve::kernels
