// The PADRe detector's config.json (docs/vision.md): image and patch size, width, depth, mixer (padre
// or softmax), PADRe degree and kernel, classes and pixel normalisation; every field checked on parse.
#ifndef DELTASERVE_SERVER_MODELS_PADRE_CONFIG_H_
#define DELTASERVE_SERVER_MODELS_PADRE_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::models::padre {

enum class Mixer { kPadre, kSoftmax };

struct PadreConfig {
  Mixer mixer = Mixer::kPadre;
  int64_t image_size = 128, patch_size = 8, hidden_size = 96, num_layers = 4, mlp_hidden_size = 192;
  int64_t num_heads = 4, padre_degree = 3, padre_kernel_size = 7;
  double norm_eps = 1e-6;
  std::vector<std::string> class_names;  // num_classes entries
  std::array<double, 3> pixel_mean = {0.5, 0.5, 0.5}, pixel_std = {0.25, 0.25, 0.25};

  int64_t grid() const { return image_size / patch_size; }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
};

// InvalidArgument naming the field for a wrong type, a value out of range or sizes that do not fit
// (image_size a multiple of patch_size, hidden_size of num_heads, an odd kernel, class_names matching
// num_classes).
absl::StatusOr<PadreConfig> ParsePadreConfig(absl::string_view json_text);
// DIR/config.json; errors start with the path.
absl::StatusOr<PadreConfig> LoadPadreConfig(const std::string& model_dir);

}  // namespace deltaserve::models::padre

#endif  // DELTASERVE_SERVER_MODELS_PADRE_CONFIG_H_
