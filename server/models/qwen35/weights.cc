// Loading and checking Qwen3.5 text weights from a mapped safetensors checkpoint.
#include "models/qwen35/weights.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace deltaserve::models::qwen35 {
namespace {

std::optional<at::ScalarType> AtenType(TensorDtype d) {
  switch (d) {
    case TensorDtype::kF32:
      return at::kFloat;
    case TensorDtype::kF16:
      return at::kHalf;
    case TensorDtype::kBF16:
      return at::kBFloat16;
    case TensorDtype::kF64:
      return at::kDouble;
    default:
      return std::nullopt;
  }
}

std::string Shape(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

class Loader {
 public:
  Loader(const SafetensorsCheckpoint& checkpoint, std::string prefix, at::ScalarType dtype,
         const c10::Device& device)
      : checkpoint_(checkpoint), prefix_(std::move(prefix)), dtype_(dtype), device_(device) {}

  // `name` below the model prefix ("layers.0.mlp.up_proj.weight"), or absolute when `absolute`.
  at::Tensor Take(const std::string& name, const std::vector<int64_t>& shape, bool keep_float32 = false,
                  bool absolute = false) {
    const std::string full = absolute ? name : prefix_ + name;
    auto it = checkpoint_.tensors().find(full);
    if (it == checkpoint_.tensors().end()) {
      missing_.push_back(absl::StrCat(full, " ", Shape(shape)));
      return at::Tensor();
    }
    used_.insert(full);
    const TensorView& view = it->second;
    std::optional<at::ScalarType> source = AtenType(view.dtype);
    if (!source.has_value()) {
      mismatched_.push_back(absl::StrCat(full, ": dtype ", TensorDtypeName(view.dtype),
                                         " is not a float type (F32, F16, BF16, F64)"));
      return at::Tensor();
    }
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    int64_t view_numel = 1;
    for (int64_t d : view.shape) view_numel *= d;
    // The conv weight is [C, 1, K] in checkpoints; any shape with the same elements in the same order is
    // accepted only for it, every other tensor must match exactly.
    const bool squeezable = absl::StrContains(full, "conv1d.weight") && numel == view_numel;
    if (view.shape != shape && !squeezable) {
      mismatched_.push_back(
          absl::StrCat(full, ": expected shape ", Shape(shape), ", found ", Shape(view.shape)));
      return at::Tensor();
    }
    const at::ScalarType target = keep_float32 ? at::kFloat : dtype_;
    at::Tensor mapped =
        at::from_blob(const_cast<void*>(view.data), shape, at::TensorOptions().dtype(*source));
    const bool aligned = reinterpret_cast<uintptr_t>(view.data) % c10::elementSize(*source) == 0;
    // Zero-copy when the mapping already holds what we need; otherwise one converted copy.
    if (aligned && *source == target && device_.is_cpu()) return mapped;
    return mapped.to(device_, target, /*non_blocking=*/false, /*copy=*/true);
  }

  absl::Status Finish() {
    for (const auto& [name, view] : checkpoint_.tensors()) {
      if (used_.count(name) || absl::StartsWith(name, "mtp.") || absl::StartsWith(name, "model.visual."))
        continue;
      if (name == "lm_head.weight" && tied_) continue;  // tied: the embedding serves, as in transformers
      unexpected_.push_back(name);
    }
    if (missing_.empty() && unexpected_.empty() && mismatched_.empty()) return absl::OkStatus();
    std::string msg = "checkpoint does not match the config:";
    if (!missing_.empty()) absl::StrAppend(&msg, " missing [", absl::StrJoin(missing_, "; "), "]");
    if (!mismatched_.empty()) absl::StrAppend(&msg, " mismatched [", absl::StrJoin(mismatched_, "; "), "]");
    if (!unexpected_.empty()) absl::StrAppend(&msg, " unexpected [", absl::StrJoin(unexpected_, "; "), "]");
    return absl::InvalidArgumentError(msg);
  }

  void set_tied(bool tied) { tied_ = tied; }

 private:
  const SafetensorsCheckpoint& checkpoint_;
  std::string prefix_;
  at::ScalarType dtype_;
  c10::Device device_;
  bool tied_ = false;
  std::set<std::string> used_;
  std::vector<std::string> missing_, unexpected_, mismatched_;
};

}  // namespace

absl::StatusOr<Qwen35Weights> LoadQwen35Weights(const SafetensorsCheckpoint& checkpoint,
                                                const Qwen35Config& c, at::ScalarType dtype,
                                                const c10::Device& device) {
  if (dtype != at::kFloat && dtype != at::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: must be float32 or bfloat16, got ", c10::toString(dtype)));
  }
  // Multimodal checkpoints keep the text model under model.language_model.; text-only ones under model.
  const bool nested = checkpoint.tensors().count("model.language_model.embed_tokens.weight") > 0;
  try {
    Loader load(checkpoint, nested ? "model.language_model." : "model.", dtype, device);
    load.set_tied(c.tie_word_embeddings);
    const int64_t h = c.hidden_size, inter = c.intermediate_size;
    Qwen35Weights w;
    w.embed_tokens = load.Take("embed_tokens.weight", {c.vocab_size, h});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const std::string p = absl::StrCat("layers.", i, ".");
      LayerWeights l;
      l.type = c.layer_types[i];
      l.input_norm = load.Take(p + "input_layernorm.weight", {h});
      l.post_attention_norm = load.Take(p + "post_attention_layernorm.weight", {h});
      l.gate_proj = load.Take(p + "mlp.gate_proj.weight", {inter, h});
      l.up_proj = load.Take(p + "mlp.up_proj.weight", {inter, h});
      l.down_proj = load.Take(p + "mlp.down_proj.weight", {h, inter});
      if (l.type == LayerType::kLinearAttention) {
        const int64_t hk = c.linear_num_key_heads, hv = c.linear_num_value_heads;
        const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
        const int64_t conv_dim = 2 * hk * dk + hv * dv;
        const std::string a = p + "linear_attn.";
        l.linear.in_proj_qkv = load.Take(a + "in_proj_qkv.weight", {conv_dim, h});
        l.linear.in_proj_z = load.Take(a + "in_proj_z.weight", {hv * dv, h});
        l.linear.in_proj_b = load.Take(a + "in_proj_b.weight", {hv, h});
        l.linear.in_proj_a = load.Take(a + "in_proj_a.weight", {hv, h});
        l.linear.conv1d = load.Take(a + "conv1d.weight", {conv_dim, c.linear_conv_kernel_dim});
        l.linear.dt_bias = load.Take(a + "dt_bias", {hv}, /*keep_float32=*/true);
        l.linear.a_log = load.Take(a + "A_log", {hv}, /*keep_float32=*/true);
        l.linear.norm = load.Take(a + "norm.weight", {dv});
        l.linear.out_proj = load.Take(a + "out_proj.weight", {h, hv * dv});
      } else {
        const int64_t heads = c.num_attention_heads, kvh = c.num_key_value_heads, hd = c.head_dim;
        const std::string a = p + "self_attn.";
        l.full.q_proj = load.Take(a + "q_proj.weight", {heads * hd * 2, h});
        l.full.k_proj = load.Take(a + "k_proj.weight", {kvh * hd, h});
        l.full.v_proj = load.Take(a + "v_proj.weight", {kvh * hd, h});
        l.full.o_proj = load.Take(a + "o_proj.weight", {h, heads * hd});
        l.full.q_norm = load.Take(a + "q_norm.weight", {hd});
        l.full.k_norm = load.Take(a + "k_norm.weight", {hd});
      }
      w.layers.push_back(std::move(l));
    }
    w.final_norm = load.Take("norm.weight", {h});
    w.lm_head = c.tie_word_embeddings
                    ? w.embed_tokens
                    : load.Take("lm_head.weight", {c.vocab_size, h}, false, /*absolute=*/true);
    absl::Status st = load.Finish();
    if (!st.ok()) return st;
    return w;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading weights: ", e.what_without_backtrace()));
  }
}

}  // namespace deltaserve::models::qwen35
