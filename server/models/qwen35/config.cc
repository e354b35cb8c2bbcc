#include "models/qwen35/config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::models::qwen35 {
namespace {

using Json = nlohmann::json;

// Defaults follow transformers' Qwen3_5TextConfig and RoPE mixin, so a config that transformers loads
// means the same model here. The size fields whose transformers default is one particular model (the
// 9B) are required instead: silently building a 9B-shaped model from a config missing hidden_size
// would only fail later, at weight loading, with a far less useful message.
constexpr int64_t kDefaultHeadDim = 256;
constexpr int64_t kDefaultLinearKeyHeadDim = 128;
constexpr int64_t kDefaultLinearValueHeadDim = 128;
constexpr int64_t kDefaultLinearConvKernelDim = 4;
constexpr int64_t kDefaultMaxPositionEmbeddings = 32768;
constexpr int64_t kDefaultFullAttentionInterval = 4;
constexpr double kDefaultRmsNormEps = 1e-6;
constexpr double kDefaultRopeTheta = 10000.0;  // transformers' default_theta, used only when none is given
constexpr double kDefaultPartialRotaryFactor = 0.25;

std::string Kind(const Json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "floating-point number";
  return j.type_name();
}

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status TypeError(absl::string_view field, absl::string_view expected, const Json& got) {
  return FieldError(field, absl::StrCat("expected ", expected, ", got ", Kind(got)));
}

// Reads typed fields of one JSON object, naming each as "<prefix><key>" in errors. A JSON null counts
// as absent only where transformers types the field as optional (`| None`); elsewhere it is a type error.
class Fields {
 public:
  Fields(const Json& obj, std::string prefix) : obj_(obj), prefix_(std::move(prefix)) {}

  std::string Name(absl::string_view key) const { return absl::StrCat(prefix_, key); }
  const Json* Find(absl::string_view key) const {
    auto it = obj_.find(std::string(key));
    return it == obj_.end() ? nullptr : &*it;
  }
  bool Has(absl::string_view key) const { return Find(key) != nullptr; }
  bool HasNonNull(absl::string_view key) const {
    const Json* j = Find(key);
    return j != nullptr && !j->is_null();
  }

  absl::StatusOr<int64_t> Int(absl::string_view key, std::optional<int64_t> fallback) const {
    const Json* j = Find(key);
    if (j == nullptr) {
      if (fallback) return *fallback;
      return FieldError(Name(key), "missing");
    }
    if (!j->is_number_integer()) return TypeError(Name(key), "an integer", *j);
    if (j->is_number_unsigned() && j->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return FieldError(Name(key), "integer out of range");
    }
    return j->get<int64_t>();
  }

  absl::StatusOr<int64_t> PositiveInt(absl::string_view key, std::optional<int64_t> fallback) const {
    auto v = Int(key, fallback);
    if (v.ok() && *v <= 0) return FieldError(Name(key), absl::StrCat("must be positive, got ", *v));
    return v;
  }

  absl::StatusOr<double> Number(absl::string_view key, double fallback) const {
    const Json* j = Find(key);
    if (j == nullptr) return fallback;
    if (!j->is_number()) return TypeError(Name(key), "a number", *j);
    return j->get<double>();
  }

  absl::StatusOr<bool> Bool(absl::string_view key, bool fallback) const {
    const Json* j = Find(key);
    if (j == nullptr) return fallback;
    if (!j->is_boolean()) return TypeError(Name(key), "a boolean", *j);
    return j->get<bool>();
  }

  // Absent and null both give `fallback`.
  absl::StatusOr<std::string> OptionalString(absl::string_view key, std::string fallback) const {
    const Json* j = Find(key);
    if (j == nullptr || j->is_null()) return fallback;
    if (!j->is_string()) return TypeError(Name(key), "a string", *j);
    return j->get<std::string>();
  }

 private:
  const Json& obj_;
  std::string prefix_;
};

#define DS_ASSIGN_OR_RETURN(lhs, expr)      \
  do {                                      \
    auto _ds_v = (expr);                    \
    if (!_ds_v.ok()) return _ds_v.status(); \
    lhs = *std::move(_ds_v);                \
  } while (0)

std::string Quoted(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

absl::Status RefuseMoe(const Fields& f) {
  // Any of these marks a routed-experts checkpoint (Qwen3.5-35B-A3B and larger); 0 or null means dense.
  for (const char* key :
       {"num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size"}) {
    const Json* j = f.Find(key);
    if (j == nullptr || j->is_null() || (j->is_number() && j->get<double>() == 0)) continue;
    return FieldError(f.Name(key), "MoE variants are not supported yet");
  }
  return absl::OkStatus();
}

absl::Status CheckModelType(const Fields& f, absl::string_view expected) {
  auto model_type = f.OptionalString("model_type", std::string(expected));
  if (!model_type.ok()) return model_type.status();
  if (*model_type == expected) return absl::OkStatus();
  if (absl::StrContains(*model_type, "moe")) {
    return FieldError(f.Name("model_type"),
                      absl::StrCat(Quoted(*model_type), ": MoE variants are not supported yet"));
  }
  return FieldError(f.Name("model_type"),
                    absl::StrCat(Quoted(*model_type), " is not supported (expected ", Quoted(expected), ")"));
}

absl::Status ParseLayerTypes(const Fields& f, Qwen35Config* c) {
  const Json* given = f.Find("layer_types");
  if (given == nullptr || given->is_null()) {
    // transformers: layer i is full attention when (i + 1) % full_attention_interval == 0.
    int64_t interval = 0;
    DS_ASSIGN_OR_RETURN(interval, f.PositiveInt("full_attention_interval", kDefaultFullAttentionInterval));
    c->layer_types.clear();
    for (int64_t i = 0; i < c->num_hidden_layers; ++i) {
      c->layer_types.push_back((i + 1) % interval == 0 ? LayerType::kFullAttention
                                                       : LayerType::kLinearAttention);
    }
    return absl::OkStatus();
  }
  const std::string name = f.Name("layer_types");
  if (!given->is_array()) return TypeError(name, "an array of strings", *given);
  if (static_cast<int64_t>(given->size()) != c->num_hidden_layers) {
    return FieldError(name, absl::StrCat("has ", given->size(), " entries but ", f.Name("num_hidden_layers"),
                                         " is ", c->num_hidden_layers));
  }
  for (size_t i = 0; i < given->size(); ++i) {
    const Json& t = (*given)[i];
    const std::string item = absl::StrCat(name, "[", i, "]");
    if (!t.is_string()) return TypeError(item, "a string", t);
    const std::string s = t.get<std::string>();
    // "attention" and "mamba" are the legacy spellings transformers still remaps.
    if (s == "full_attention" || s == "attention") {
      c->layer_types.push_back(LayerType::kFullAttention);
    } else if (s == "linear_attention" || s == "mamba") {
      c->layer_types.push_back(LayerType::kLinearAttention);
    } else {
      return FieldError(item, absl::StrCat(Quoted(s),
                                           " is not supported (expected \"linear_attention\" or "
                                           "\"full_attention\")"));
    }
  }
  return absl::OkStatus();
}

// transformers reads RoPE settings from rope_scaling when it is a non-empty object, else from
// rope_parameters; rope_theta and partial_rotary_factor fall back to the text config's top level.
absl::Status ParseRope(const Json& text, const Fields& f, Qwen35Config* c) {
  const char* key = nullptr;
  for (const char* candidate : {"rope_scaling", "rope_parameters"}) {
    const Json* j = f.Find(candidate);
    if (j == nullptr || j->is_null()) continue;
    if (!j->is_object()) return TypeError(f.Name(candidate), "an object", *j);
    if (j->empty()) continue;  // Python treats {} as false and moves on
    key = candidate;
    break;
  }
  static const Json kEmpty = Json::object();
  const Json* rope = key != nullptr ? &text[key] : &kEmpty;
  std::string prefix = key != nullptr ? absl::StrCat(f.Name(key), ".") : f.Name("rope_parameters.");
  // Per-layer-type RoPE (a dict keyed by layer type): only full-attention layers use RoPE here.
  if (rope->contains("full_attention") || rope->contains("linear_attention")) {
    const Json* full = rope->contains("full_attention") ? &(*rope)["full_attention"] : nullptr;
    if (full == nullptr || full->is_null()) {
      return FieldError(absl::StrCat(prefix, "full_attention"), "missing");
    }
    if (!full->is_object()) return TypeError(absl::StrCat(prefix, "full_attention"), "an object", *full);
    rope = full;
    prefix = absl::StrCat(prefix, "full_attention.");
  }
  const Fields r(*rope, prefix);

  const char* type_key = r.Has("rope_type") ? "rope_type" : "type";
  std::string rope_type;
  DS_ASSIGN_OR_RETURN(rope_type, r.OptionalString(type_key, "default"));
  if (rope_type != "default") {
    return FieldError(r.Name(type_key),
                      absl::StrCat(Quoted(rope_type), " is not supported (only \"default\")"));
  }

  double top_theta = kDefaultRopeTheta;
  DS_ASSIGN_OR_RETURN(top_theta, f.Number("rope_theta", kDefaultRopeTheta));
  DS_ASSIGN_OR_RETURN(c->rope_theta, r.Number("rope_theta", top_theta));
  const std::string theta_name = r.Has("rope_theta") ? r.Name("rope_theta") : f.Name("rope_theta");
  if (!(c->rope_theta > 0))
    return FieldError(theta_name, absl::StrCat("must be positive, got ", c->rope_theta));

  double top_factor = kDefaultPartialRotaryFactor;
  DS_ASSIGN_OR_RETURN(top_factor, f.Number("partial_rotary_factor", kDefaultPartialRotaryFactor));
  DS_ASSIGN_OR_RETURN(c->partial_rotary_factor, r.Number("partial_rotary_factor", top_factor));
  const std::string factor_name =
      r.Has("partial_rotary_factor") ? r.Name("partial_rotary_factor") : f.Name("partial_rotary_factor");
  if (!(c->partial_rotary_factor > 0 && c->partial_rotary_factor <= 1)) {
    return FieldError(factor_name, absl::StrCat("must be in (0, 1], got ", c->partial_rotary_factor));
  }
  const int64_t rotary_dim = c->rotary_dim();
  if (rotary_dim < 2 || rotary_dim % 2 != 0) {
    return FieldError(factor_name,
                      absl::StrCat("gives rotary dim ", rotary_dim, " (head_dim ", c->head_dim, " x ",
                                   c->partial_rotary_factor, "), which must be even and >= 2"));
  }

  if (const Json* s = r.Find("mrope_section"); s != nullptr && !s->is_null()) {
    const std::string name = r.Name("mrope_section");
    if (!s->is_array()) return TypeError(name, "an array of integers", *s);
    for (size_t i = 0; i < s->size(); ++i) {
      const Json& v = (*s)[i];
      if (!v.is_number_integer() || v.get<int64_t>() < 0) {
        return TypeError(absl::StrCat(name, "[", i, "]"), "a non-negative integer", v);
      }
      c->mrope_section.push_back(v.get<int64_t>());
    }
  }
  DS_ASSIGN_OR_RETURN(c->mrope_interleaved, r.Bool("mrope_interleaved", false));
  return absl::OkStatus();
}

// eos_token_id is an int, a list of ints, or null.
absl::Status ParseEos(const Fields& f, std::vector<int64_t>* out) {
  const Json* j = f.Find("eos_token_id");
  const std::string name = f.Name("eos_token_id");
  if (j->is_number_integer()) {
    out->push_back(j->get<int64_t>());
    return absl::OkStatus();
  }
  if (!j->is_array()) return TypeError(name, "an integer or a list of integers", *j);
  for (size_t i = 0; i < j->size(); ++i) {
    const Json& v = (*j)[i];
    if (!v.is_number_integer()) return TypeError(absl::StrCat(name, "[", i, "]"), "an integer", v);
    out->push_back(v.get<int64_t>());
  }
  return absl::OkStatus();
}

absl::StatusOr<Qwen35Config> ParseRoot(const Json& root) {
  if (!root.is_object())
    return absl::InvalidArgumentError(absl::StrCat("expected a JSON object, got ", Kind(root)));
  const Fields top(root, "");
  Qwen35Config c;

  if (const Json* archs = top.Find("architectures"); archs != nullptr && !archs->is_null()) {
    if (!archs->is_array()) return TypeError("architectures", "an array of strings", *archs);
    if (!archs->empty()) {
      if (!(*archs)[0].is_string()) return TypeError("architectures[0]", "a string", (*archs)[0]);
      c.architecture = (*archs)[0].get<std::string>();
    }
  }
  if (absl::StrContains(c.architecture, "Moe")) {
    return FieldError("architectures[0]",
                      absl::StrCat(Quoted(c.architecture), ": MoE variants are not supported yet"));
  }

  // The nested form is what the multimodal checkpoints ship; the flat one is a text-only export.
  std::string model_type;
  DS_ASSIGN_OR_RETURN(model_type, top.OptionalString("model_type", ""));
  if (absl::StrContains(model_type, "moe")) {
    return FieldError("model_type", absl::StrCat(Quoted(model_type), ": MoE variants are not supported yet"));
  }
  const Json* text_json = top.Find("text_config");
  if (model_type == "qwen3_5" || (model_type.empty() && text_json != nullptr)) {
    if (text_json == nullptr) return FieldError("text_config", "missing");
    if (!text_json->is_object()) return TypeError("text_config", "an object", *text_json);
    c.nested_text_config = true;
  } else if (model_type == "qwen3_5_text" || model_type.empty()) {
    c.nested_text_config = false;
  } else {
    return FieldError("model_type", absl::StrCat(Quoted(model_type),
                                                 " is not a Qwen3.5 model (expected \"qwen3_5\" or "
                                                 "\"qwen3_5_text\")"));
  }
  const char* expected_arch = c.nested_text_config ? "Qwen3_5ForConditionalGeneration" : "Qwen3_5ForCausalLM";
  if (c.architecture.empty()) {
    c.architecture = expected_arch;
  } else if (c.architecture != expected_arch) {
    // The architecture fixes the weight names (model.language_model.* vs model.*), so it must agree
    // with the config's shape.
    return FieldError("architectures[0]",
                      absl::StrCat(Quoted(c.architecture), " is not supported with a ",
                                   c.nested_text_config ? "nested text_config" : "flat config", " (expected ",
                                   Quoted(expected_arch), ")"));
  }

  const Json& text = c.nested_text_config ? *text_json : root;
  const Fields f(text, c.nested_text_config ? "text_config." : "");
  if (c.nested_text_config) {
    if (absl::Status s = CheckModelType(f, "qwen3_5_text"); !s.ok()) return s;
  }
  if (absl::Status s = RefuseMoe(f); !s.ok()) return s;

  DS_ASSIGN_OR_RETURN(c.vocab_size, f.PositiveInt("vocab_size", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.hidden_size, f.PositiveInt("hidden_size", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.intermediate_size, f.PositiveInt("intermediate_size", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.num_hidden_layers, f.PositiveInt("num_hidden_layers", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.num_attention_heads, f.PositiveInt("num_attention_heads", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.num_key_value_heads, f.PositiveInt("num_key_value_heads", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.head_dim, f.PositiveInt("head_dim", kDefaultHeadDim));
  DS_ASSIGN_OR_RETURN(c.linear_num_key_heads, f.PositiveInt("linear_num_key_heads", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.linear_num_value_heads, f.PositiveInt("linear_num_value_heads", std::nullopt));
  DS_ASSIGN_OR_RETURN(c.linear_key_head_dim, f.PositiveInt("linear_key_head_dim", kDefaultLinearKeyHeadDim));
  DS_ASSIGN_OR_RETURN(c.linear_value_head_dim,
                      f.PositiveInt("linear_value_head_dim", kDefaultLinearValueHeadDim));
  DS_ASSIGN_OR_RETURN(c.linear_conv_kernel_dim,
                      f.PositiveInt("linear_conv_kernel_dim", kDefaultLinearConvKernelDim));
  DS_ASSIGN_OR_RETURN(c.max_position_embeddings,
                      f.PositiveInt("max_position_embeddings", kDefaultMaxPositionEmbeddings));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError(f.Name("num_key_value_heads"),
                      absl::StrCat(c.num_key_value_heads, " does not divide ", f.Name("num_attention_heads"),
                                   " (", c.num_attention_heads, ")"));
  }
  if (c.linear_num_value_heads % c.linear_num_key_heads != 0) {
    return FieldError(f.Name("linear_num_key_heads"),
                      absl::StrCat(c.linear_num_key_heads, " does not divide ",
                                   f.Name("linear_num_value_heads"), " (", c.linear_num_value_heads, ")"));
  }

  DS_ASSIGN_OR_RETURN(c.rms_norm_eps, f.Number("rms_norm_eps", kDefaultRmsNormEps));
  if (!(c.rms_norm_eps > 0)) {
    return FieldError(f.Name("rms_norm_eps"), absl::StrCat("must be positive, got ", c.rms_norm_eps));
  }
  std::string act;
  DS_ASSIGN_OR_RETURN(act, f.OptionalString("hidden_act", "silu"));
  if (act != "silu")
    return FieldError(f.Name("hidden_act"), absl::StrCat(Quoted(act), " is not supported (only \"silu\")"));
  bool flag = false;
  DS_ASSIGN_OR_RETURN(flag, f.Bool("attention_bias", false));
  if (flag) return FieldError(f.Name("attention_bias"), "true is not supported (the model has no biases)");
  DS_ASSIGN_OR_RETURN(flag, f.Bool("attn_output_gate", true));
  if (!flag)
    return FieldError(f.Name("attn_output_gate"), "false is not supported (Qwen3.5 gates attention)");

  if (absl::Status s = ParseLayerTypes(f, &c); !s.ok()) return s;
  if (absl::Status s = ParseRope(text, f, &c); !s.ok()) return s;

  // Qwen3_5ForConditionalGeneration ties by the outer config's flag; the text config's flag decides
  // only when the outer one is absent.
  const Fields& tie_from = (c.nested_text_config && top.Has("tie_word_embeddings")) ? top : f;
  DS_ASSIGN_OR_RETURN(c.tie_word_embeddings, tie_from.Bool("tie_word_embeddings", false));

  // Token ids and dtype: the text config's, else the outer config's.
  const Fields* token_src =
      f.HasNonNull("eos_token_id") ? &f : (top.HasNonNull("eos_token_id") ? &top : nullptr);
  if (token_src != nullptr) {
    if (absl::Status s = ParseEos(*token_src, &c.eos_token_ids); !s.ok()) return s;
  }
  const Fields* bos_src =
      f.HasNonNull("bos_token_id") ? &f : (top.HasNonNull("bos_token_id") ? &top : nullptr);
  if (bos_src != nullptr) DS_ASSIGN_OR_RETURN(c.bos_token_id, bos_src->Int("bos_token_id", std::nullopt));
  // transformers 5 writes "dtype"; older exports write "torch_dtype".
  for (const Fields* src : {&f, &top}) {
    for (const char* key : {"dtype", "torch_dtype"}) {
      if (!c.torch_dtype.empty()) break;
      DS_ASSIGN_OR_RETURN(c.torch_dtype, src->OptionalString(key, ""));
    }
  }
  return c;
}

#undef DS_ASSIGN_OR_RETURN

}  // namespace

absl::StatusOr<Qwen35Config> ParseQwen35Config(absl::string_view json_text) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config is not valid JSON: ", e.what()));
  }
  return ParseRoot(root);
}

absl::StatusOr<Qwen35Config> LoadQwen35Config(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/config.json");
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot read ", path));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  auto config = ParseQwen35Config(ss.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace deltaserve::models::qwen35
