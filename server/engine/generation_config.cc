#include "engine/generation_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::engine {
namespace {

using Json = nlohmann::json;

// transformers' generate() default when neither max_new_tokens nor max_length is set.
constexpr int64_t kTransformersMaxNewTokens = 20;

std::string Kind(const Json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "floating-point number";
  return j.type_name();
}

// Ranges of the real-valued fields, as ValidateSamplingParams has them.
bool TemperatureRange(double v) { return v >= 0 && v <= 100; }
bool TopPRange(double v) { return v > 0 && v <= 1; }
bool MinPRange(double v) { return v >= 0 && v <= 1; }
bool PenaltyRange(double v) { return v > 0 && std::isfinite(v); }

// Reads fields of the root object. A null counts as unset: transformers stores None, and generate()
// then applies its global default, which is what our defaults are.
class Fields {
 public:
  Fields(const Json& obj, absl::string_view source) : obj_(obj), source_(source) {}

  absl::Status Error(absl::string_view field, absl::string_view problem) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", field, ": ", problem));
  }

  const Json* Find(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }

  absl::Status Bool(const char* key, bool* out) const {
    const Json* j = Find(key);
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_boolean()) return Error(key, absl::StrCat("expected a boolean, got ", Kind(*j)));
    *out = j->get<bool>();
    return absl::OkStatus();
  }

  // `ok(v)` decides the range; `range` describes it in the error.
  absl::Status Number(const char* key, absl::string_view range, bool (*ok)(double), double* out) const {
    const Json* j = Find(key);
    if (j == nullptr) return absl::OkStatus();
    if (!j->is_number()) return Error(key, absl::StrCat("expected a number, got ", Kind(*j)));
    const double v = j->get<double>();
    if (!ok(v)) return Error(key, absl::StrCat("must be in ", range, ", got ", v));
    *out = v;
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> IntValue(const std::string& name, const Json& j, int64_t lo, int64_t hi) const {
    if (!j.is_number_integer()) return Error(name, absl::StrCat("expected an integer, got ", Kind(j)));
    // nlohmann stores non-negative literals as unsigned: compare those as unsigned, so 2^64 - 1 cannot
    // wrap to -1 on the way.
    const bool in_range = j.is_number_unsigned() ? j.get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                                                       static_cast<int64_t>(j.get<uint64_t>()) >= lo
                                                 : j.get<int64_t>() >= lo && j.get<int64_t>() <= hi;
    if (!in_range) {
      return Error(name, absl::StrCat("must be in [", lo, ", ", hi, "], got ", j.dump()));
    }
    return j.get<int64_t>();
  }

  absl::Status Int(const char* key, int64_t lo, int64_t hi, std::optional<int64_t>* out) const {
    const Json* j = Find(key);
    if (j == nullptr) return absl::OkStatus();
    auto v = IntValue(key, *j, lo, hi);
    if (!v.ok()) return v.status();
    *out = *v;
    return absl::OkStatus();
  }

  absl::Status TokenId(const char* key, std::optional<int32_t>* out) const {
    std::optional<int64_t> v;
    if (auto s = Int(key, 0, std::numeric_limits<int32_t>::max(), &v); !s.ok()) return s;
    if (v) *out = static_cast<int32_t>(*v);
    return absl::OkStatus();
  }

  // transformers accepts one id or a list (models with several end tokens, e.g. Qwen's <|im_end|> and
  // <|endoftext|>).
  absl::Status TokenIds(const char* key, std::vector<int32_t>* out) const {
    const Json* j = Find(key);
    if (j == nullptr) return absl::OkStatus();
    constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
    out->clear();
    if (j->is_array()) {
      for (size_t i = 0; i < j->size(); ++i) {
        auto v = IntValue(absl::StrCat(key, "[", i, "]"), (*j)[i], 0, kMax);
        if (!v.ok()) return v.status();
        out->push_back(static_cast<int32_t>(*v));
      }
      return absl::OkStatus();
    }
    if (!j->is_number_integer()) {
      return Error(key, absl::StrCat("expected an integer or a list of integers, got ", Kind(*j)));
    }
    auto v = IntValue(key, *j, 0, kMax);
    if (!v.ok()) return v.status();
    out->push_back(static_cast<int32_t>(*v));
    return absl::OkStatus();
  }

 private:
  const Json& obj_;
  absl::string_view source_;
};

}  // namespace

absl::StatusOr<GenerationConfig> ParseGenerationConfig(absl::string_view json_text,
                                                       absl::string_view source) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object, got ", Kind(root)));
  }
  const Fields f(root, source);
  GenerationConfig c;
  std::optional<int64_t> top_k;
  // The ranges are ValidateSamplingParams' (less the vocabulary bound, unknown here), so a config that
  // loads gives request defaults that validate.
  for (absl::Status s : {
           f.Bool("do_sample", &c.do_sample),
           f.Number("temperature", "[0, 100]", TemperatureRange, &c.temperature),
           f.Int("top_k", 0, std::numeric_limits<int32_t>::max(), &top_k),
           f.Number("top_p", "(0, 1]", TopPRange, &c.top_p),
           f.Number("min_p", "[0, 1]", MinPRange, &c.min_p),
           f.Number("repetition_penalty", "(0, inf)", PenaltyRange, &c.repetition_penalty),
           f.Int("max_new_tokens", 1, std::numeric_limits<int64_t>::max(), &c.max_new_tokens),
           f.Int("max_length", 1, std::numeric_limits<int64_t>::max(), &c.max_length),
           f.TokenIds("eos_token_id", &c.eos_token_ids),
           f.TokenId("bos_token_id", &c.bos_token_id),
           f.TokenId("pad_token_id", &c.pad_token_id),
       }) {
    if (!s.ok()) return s;
  }
  if (top_k) c.top_k = *top_k;
  return c;
}

absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/generation_config.json");
  // POSIX rather than std::filesystem: libtorch.so exports broken copies of the latter's functions.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      // Only the file may be missing: a missing directory is a wrong path, not a checkpoint without one.
      struct stat st;
      if (::stat(model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        return absl::NotFoundError(absl::StrCat(model_dir, ": model directory not found"));
      }
      return GenerationConfig{};
    }
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot open"));
  }
  std::string text;
  char buf[1 << 14];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot read"));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return ParseGenerationConfig(text, path);
}

SamplingParams DefaultSamplingParams(const GenerationConfig& config, int64_t vocab_size) {
  SamplingParams p;
  p.repetition_penalty = config.repetition_penalty;
  if (config.do_sample) {
    p.temperature = config.temperature;
    p.top_k = vocab_size > 0 ? std::min(config.top_k, vocab_size) : config.top_k;
    p.top_p = config.top_p;
    p.min_p = config.min_p;
  } else {
    p.temperature = 0;
    p.top_k = 0;
    p.top_p = 1.0;
    p.min_p = 0;
  }
  p.max_new_tokens = config.max_new_tokens.value_or(config.max_length.value_or(kTransformersMaxNewTokens));
  p.eos_token_ids = config.eos_token_ids;
  return p;
}

}  // namespace deltaserve::engine
