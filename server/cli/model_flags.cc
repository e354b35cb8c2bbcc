// Model options from flag text (see model_flags.h).
#include "cli/model_flags.h"

#include <ATen/Context.h>

#include "absl/strings/str_cat.h"
#include "deltaserve/kernels/linear_weight.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::cli {

absl::StatusOr<models::qwen35::ModelOptions> ModelOptionsFromFlags(const std::string& dtype,
                                                                   const std::string& device,
                                                                   const std::string& inverse_method,
                                                                   const std::string& state_dtype,
                                                                   const std::string& weight_dtype) {
  models::qwen35::ModelOptions options;
  if (dtype != "float32" && dtype != "bfloat16")
    return absl::InvalidArgumentError("--dtype: must be float32 or bfloat16, got " + dtype);
  options.dtype = dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  try {
    options.device = c10::Device(device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError("--device: \"" + device + "\" is not a device (cpu, cuda, cuda:N)");
  }
  if (options.device.is_cuda() && !at::hasCUDA())
    return absl::InvalidArgumentError("--device: CUDA requested but not available");
  options.inverse_method = inverse_method;
  absl::StatusOr<kernels::StateDtype> state = kernels::ParseStateDtype(state_dtype);
  if (!state.ok()) return absl::InvalidArgumentError(absl::StrCat("--state-dtype: ", state.status().message()));
  options.state_dtype = *state;
  absl::StatusOr<kernels::WeightDtype> weights = kernels::ParseWeightDtype(weight_dtype);
  if (!weights.ok()) return absl::InvalidArgumentError(absl::StrCat("--weight-dtype: ", weights.status().message()));
  options.weight_dtype = *weights;
  return options;
}

}  // namespace deltaserve::cli
