// The Qwen3.5 model options both binaries take on the command line (--dtype, --device,
// --inverse-method, --state-dtype, --weight-dtype), parsed and checked once; errors name the flag.
#ifndef DELTASERVE_SERVER_CLI_MODEL_FLAGS_H_
#define DELTASERVE_SERVER_CLI_MODEL_FLAGS_H_

#include <string>

#include "absl/status/statusor.h"
#include "models/qwen35/model.h"

namespace deltaserve::cli {

// InvalidArgument starting with the flag ("--dtype: ...") for an unknown dtype, device, state or weight
// dtype, or a CUDA device on a machine without one (int8 weights off the CPU are refused where the weights
// load, LoadQwen35Weights). The other ModelOptions fields keep their defaults.
absl::StatusOr<models::qwen35::ModelOptions> ModelOptionsFromFlags(const std::string& dtype,
                                                                   const std::string& device,
                                                                   const std::string& inverse_method,
                                                                   const std::string& state_dtype,
                                                                   const std::string& weight_dtype = "");

}  // namespace deltaserve::cli

#endif  // DELTASERVE_SERVER_CLI_MODEL_FLAGS_H_
