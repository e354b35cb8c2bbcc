// config.json of the PADRe detector (see config.h).
#include "models/padre/config.h"

#include <cerrno>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::models::padre {
namespace {

using Json = nlohmann::json;

absl::Status Bad(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status ReadInt(const Json& j, const char* key, int64_t lo, int64_t hi, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();  // keep the default
  if (!it->is_number_integer()) return Bad(key, absl::StrCat("expected an integer, got ", it->type_name()));
  const int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) return Bad(key, absl::StrCat("must be in [", lo, ", ", hi, "], got ", v));
  *out = v;
  return absl::OkStatus();
}

absl::Status ReadTriple(const Json& j, const char* key, bool positive, std::array<double, 3>* out) {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  if (!it->is_array() || it->size() != 3) return Bad(key, "expected an array of 3 numbers (R, G, B)");
  for (size_t i = 0; i < 3; ++i) {
    if (!(*it)[i].is_number()) return Bad(key, "expected numbers");
    (*out)[i] = (*it)[i].get<double>();
    if (positive && !((*out)[i] > 0)) return Bad(key, "must be positive");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PadreConfig> ParsePadreConfig(absl::string_view json_text) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  PadreConfig c;
  if (auto it = j.find("architecture"); it != j.end() && *it != "PadreDetector")
    return Bad("architecture", absl::StrCat("expected \"PadreDetector\", got ", it->dump()));
  if (auto it = j.find("mixer"); it != j.end()) {
    if (*it == "padre") {
      c.mixer = Mixer::kPadre;
    } else if (*it == "softmax") {
      c.mixer = Mixer::kSoftmax;
    } else {
      return Bad("mixer", absl::StrCat("must be \"padre\" or \"softmax\", got ", it->dump()));
    }
  }
  for (const auto& [key, lo, hi, field] :
       {std::tuple{"image_size", 16, 4096, &c.image_size}, {"patch_size", 1, 256, &c.patch_size},
        {"hidden_size", 1, 8192, &c.hidden_size}, {"num_layers", 1, 256, &c.num_layers},
        {"mlp_hidden_size", 1, 65536, &c.mlp_hidden_size}, {"num_heads", 1, 256, &c.num_heads},
        {"padre_degree", 1, 8, &c.padre_degree}, {"padre_kernel_size", 1, 63, &c.padre_kernel_size}}) {
    absl::Status s = ReadInt(j, key, lo, hi, field);
    if (!s.ok()) return s;
  }
  if (c.image_size % c.patch_size != 0)
    return Bad("image_size", absl::StrCat(c.image_size, " is not a multiple of patch_size ", c.patch_size));
  if (c.hidden_size % c.num_heads != 0)
    return Bad("num_heads", absl::StrCat(c.num_heads, " does not divide hidden_size ", c.hidden_size));
  if (c.padre_kernel_size % 2 == 0) return Bad("padre_kernel_size", "must be odd");
  if (auto it = j.find("norm_eps"); it != j.end()) {
    if (!it->is_number() || !(it->get<double>() > 0)) return Bad("norm_eps", "must be a positive number");
    c.norm_eps = it->get<double>();
  }
  auto names = j.find("class_names");
  if (names == j.end() || !names->is_array() || names->empty())
    return Bad("class_names", "required: a non-empty array of strings");
  for (const Json& n : *names) {
    if (!n.is_string()) return Bad("class_names", "every entry must be a string");
    c.class_names.push_back(n.get<std::string>());
  }
  if (auto it = j.find("num_classes"); it != j.end() && (!it->is_number_integer() || it->get<int64_t>() != c.num_classes()))
    return Bad("num_classes", absl::StrCat("must equal the ", c.num_classes(), " class_names"));
  absl::Status s = ReadTriple(j, "pixel_mean", false, &c.pixel_mean);
  if (!s.ok()) return s;
  s = ReadTriple(j, "pixel_std", true, &c.pixel_std);
  if (!s.ok()) return s;
  return c;
}

absl::StatusOr<PadreConfig> LoadPadreConfig(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/config.json");
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<PadreConfig> c = ParsePadreConfig(ss.str());
  if (!c.ok()) return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

}  // namespace deltaserve::models::padre
