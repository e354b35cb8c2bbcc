// A model's default decoding settings, read from the Hugging Face generation_config.json beside its
// weights, and the request defaults (SamplingParams) they imply.
#ifndef DELTASERVE_SERVER_ENGINE_GENERATION_CONFIG_H_
#define DELTASERVE_SERVER_ENGINE_GENERATION_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runner/sampler.h"

namespace deltaserve::engine {

using runner::SamplingParams;

// Defaults are transformers' GenerationConfig._get_default_generation_params(), which generate() fills in
// for every field the file leaves unset or null, so a checkpoint decodes here as it does in transformers.
// Note top_k = 50: a file that sets do_sample but no top_k samples from the top 50 in transformers too.
struct GenerationConfig {
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 50;
  double top_p = 1.0;
  double min_p = 0.0;  // transformers: None (no MinPLogitsWarper), which 0 matches exactly
  double repetition_penalty = 1.0;
  std::optional<int64_t> max_new_tokens;
  std::optional<int64_t> max_length;   // prompt + output, transformers' older limit
  std::vector<int32_t> eos_token_ids;  // the file's int or list, in order
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> pad_token_id;
};

// Parses generation_config.json text; `source` (the file's path) prefixes every error, which also names
// the field: "DIR/generation_config.json: top_k: expected an integer, got string". Unknown fields are
// ignored (the files carry transformers_version and sampling modes we do not implement).
absl::StatusOr<GenerationConfig> ParseGenerationConfig(absl::string_view json_text, absl::string_view source);

// Reads MODEL_DIR/generation_config.json. The file is optional (many checkpoints lack it): absent gives
// the defaults; present but unreadable or malformed is an error.
absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& model_dir);

// transformers' generation for the config as request defaults. do_sample false gives greedy
// (temperature 0) with top-k/top-p/min-p off, as transformers then builds no warpers; the repetition
// penalty applies in both modes, as in transformers. max_new_tokens comes from max_new_tokens, else
// max_length (an upper bound: the engine still caps prompt + output at the model length), else
// transformers' 20. EOS ids go to eos_token_ids. A vocab_size > 0 caps top_k at it as TopKLogitsWarper
// does, so the result passes ValidateSamplingParams for that vocabulary.
SamplingParams DefaultSamplingParams(const GenerationConfig& config, int64_t vocab_size = 0);

}  // namespace deltaserve::engine

#endif  // DELTASERVE_SERVER_ENGINE_GENERATION_CONFIG_H_
