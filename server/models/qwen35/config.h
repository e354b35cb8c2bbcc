// The Qwen3.5 text model's configuration, parsed from a Hugging Face config.json (nested text_config of
// Qwen3_5ForConditionalGeneration, or the flat qwen3_5_text form). Refuses what it cannot serve, by field.
#ifndef DELTASERVE_SERVER_MODELS_QWEN35_CONFIG_H_
#define DELTASERVE_SERVER_MODELS_QWEN35_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::models::qwen35 {

enum class LayerType { kLinearAttention, kFullAttention };

struct Qwen35Config {
  std::string architecture;         // e.g. "Qwen3_5ForConditionalGeneration" or "Qwen3_5ForCausalLM"
  bool nested_text_config = false;  // weights under model.language_model.* rather than model.*
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  std::vector<LayerType> layer_types;  // size num_hidden_layers
  // Full (gated) attention.
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  double partial_rotary_factor = 0.25;
  double rope_theta = 10000000.0;
  // Normally sums to rotary_dim / 2; empty when absent. Not enforced: with text-only input all three
  // position streams are equal, so the sections do not change the rotation.
  std::vector<int64_t> mrope_section;
  bool mrope_interleaved = false;
  // Gated DeltaNet (linear attention).
  int64_t linear_num_key_heads = 0;
  int64_t linear_num_value_heads = 0;
  int64_t linear_key_head_dim = 0;
  int64_t linear_value_head_dim = 0;
  int64_t linear_conv_kernel_dim = 4;
  // Common.
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;  // nested: the outer config's flag, as Qwen3_5ForConditionalGeneration
  int64_t max_position_embeddings = 0;
  std::string torch_dtype;             // "bfloat16", "float32", ... as declared (may be empty)
  std::vector<int64_t> eos_token_ids;  // from config (generation_config.json may add more)
  int64_t bos_token_id = -1;

  int64_t rotary_dim() const { return static_cast<int64_t>(head_dim * partial_rotary_factor); }
};

// Parses config.json text. Absent optional fields take transformers' defaults (head_dim 256, rope_theta
// 1e4, partial_rotary_factor 0.25, max_position_embeddings 32768, ...); absent layer_types mean layer i is
// full attention iff (i + 1) % full_attention_interval == 0 (interval 4 by default). Errors are
// InvalidArgument naming the field (e.g. "text_config.hidden_size: missing", "rope_scaling.rope_type:
// \"yarn\" is not supported", "num_experts: MoE variants are not supported yet").
absl::StatusOr<Qwen35Config> ParseQwen35Config(absl::string_view json_text);
// Reads and parses DIR/config.json.
absl::StatusOr<Qwen35Config> LoadQwen35Config(const std::string& model_dir);

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_CONFIG_H_
