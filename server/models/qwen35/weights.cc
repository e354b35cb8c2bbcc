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
#include "models/tensor_loader.h"

namespace deltaserve::models::qwen35 {
namespace {

// Projections that read the same input are stacked into one weight, so each is one GEMM. Undefined when
// a part is (missing or mismatched), so that Finish reports every problem of the checkpoint at once.
// On the CPU the stacked weight goes on huge pages, like the loader's copies (decode streams it).
at::Tensor Stack(std::initializer_list<at::Tensor> parts) {
  int64_t rows = 0;
  for (const at::Tensor& p : parts) {
    if (!p.defined()) return at::Tensor();
    rows += p.size(0);
  }
  const at::Tensor& first = *parts.begin();
  if (!first.device().is_cpu()) return at::cat(std::vector<at::Tensor>(parts));
  at::Tensor out = EmptyOnHugePages({rows, first.size(1)}, first.scalar_type());
  at::cat_out(out, std::vector<at::Tensor>(parts));
  return out;
}

// Every projection as INT8 or 4-bit with group scales, the values moved onto huge pages (the embedding
// stays as loaded). The lm_head never goes below INT8, as llama.cpp's 4-bit types keep their output
// tensor at 6-8 bits: 4-bit logits cost a small model much of its accuracy (docs/accuracy.md).
absl::Status QuantizeProjections(Qwen35Weights& w, kernels::WeightDtype projections) {
  auto quantize = [](kernels::LinearWeight& lw, kernels::WeightDtype dtype) -> absl::Status {
    absl::StatusOr<kernels::LinearWeight> q = kernels::QuantizeWeight(lw.weight, dtype);
    if (!q.ok()) return q.status();
    lw.weight = EmptyOnHugePages(q->weight.sizes().vec(), q->weight.scalar_type()).copy_(q->weight);
    lw.scales = q->scales;
    return absl::OkStatus();
  };
  for (LayerWeights& l : w.layers) {
    for (kernels::LinearWeight* p : {&l.gate_up_proj, &l.down_proj, &l.linear.in_proj, &l.linear.out_proj,
                                     &l.full.qkv_proj, &l.full.o_proj}) {
      if (!p->weight.defined()) continue;  // the other layer kind's projections
      if (absl::Status s = quantize(*p, projections); !s.ok()) return s;
    }
  }
  return quantize(w.lm_head, kernels::WeightDtype::kInt8);
}

}  // namespace

absl::StatusOr<Qwen35Weights> LoadQwen35Weights(const SafetensorsCheckpoint& checkpoint,
                                                const Qwen35Config& c, at::ScalarType dtype,
                                                const c10::Device& device, kernels::WeightDtype weight_dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: must be float32 or bfloat16, got ", c10::toString(dtype)));
  }
  if (weight_dtype != kernels::WeightDtype::kSame && !device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("weight_dtype: ", kernels::WeightDtypeName(weight_dtype),
                                                   " weights run on the CPU only, not on ", device.str()));
  }
  // Multimodal checkpoints keep the text model under model.language_model.; text-only ones under model.
  const bool nested = checkpoint.tensors().count("model.language_model.embed_tokens.weight") > 0;
  try {
    TensorLoader load(checkpoint, nested ? "model.language_model." : "model.", dtype, device);
    // The conv weight is [C, 1, K] in checkpoints and read as [C, K].
    load.set_reshapeable([](const std::string& name) { return absl::StrContains(name, "conv1d.weight"); });
    // Multi-token prediction and vision towers are not served; a tied lm_head is the embedding.
    const bool tied = c.tie_word_embeddings;
    load.set_ignored([tied](const std::string& name) {
      return absl::StartsWith(name, "mtp.") || absl::StartsWith(name, "model.visual.") ||
             (tied && name == "lm_head.weight");
    });
    const int64_t h = c.hidden_size, inter = c.intermediate_size;
    Qwen35Weights w;
    w.embed_tokens = load.Take("embed_tokens.weight", {c.vocab_size, h});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const std::string p = absl::StrCat("layers.", i, ".");
      LayerWeights l;
      l.type = c.layer_types[i];
      l.input_norm = load.Take(p + "input_layernorm.weight", {h});
      l.post_attention_norm = load.Take(p + "post_attention_layernorm.weight", {h});
      l.gate_up_proj = Stack({load.Take(p + "mlp.gate_proj.weight", {inter, h}),
                                load.Take(p + "mlp.up_proj.weight", {inter, h})});
      l.down_proj = load.Take(p + "mlp.down_proj.weight", {h, inter});
      if (l.type == LayerType::kLinearAttention) {
        const int64_t hk = c.linear_num_key_heads, hv = c.linear_num_value_heads;
        const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
        const int64_t conv_dim = 2 * hk * dk + hv * dv;
        const std::string a = p + "linear_attn.";
        l.linear.in_proj = Stack({load.Take(a + "in_proj_qkv.weight", {conv_dim, h}),
                                    load.Take(a + "in_proj_z.weight", {hv * dv, h}),
                                    load.Take(a + "in_proj_b.weight", {hv, h}),
                                    load.Take(a + "in_proj_a.weight", {hv, h})});
        l.linear.conv1d = load.Take(a + "conv1d.weight", {conv_dim, c.linear_conv_kernel_dim});
        l.linear.dt_bias = load.Take(a + "dt_bias", {hv}, /*keep_float32=*/true);
        l.linear.a_log = load.Take(a + "A_log", {hv}, /*keep_float32=*/true);
        if (l.linear.a_log.defined()) l.linear.neg_a_exp = -l.linear.a_log.exp();
        l.linear.norm = load.Take(a + "norm.weight", {dv});
        l.linear.out_proj = load.Take(a + "out_proj.weight", {h, hv * dv});
      } else {
        const int64_t heads = c.num_attention_heads, kvh = c.num_key_value_heads, hd = c.head_dim;
        const std::string a = p + "self_attn.";
        l.full.qkv_proj = Stack({load.Take(a + "q_proj.weight", {heads * hd * 2, h}),
                                 load.Take(a + "k_proj.weight", {kvh * hd, h}),
                                 load.Take(a + "v_proj.weight", {kvh * hd, h})});
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
    if (weight_dtype != kernels::WeightDtype::kSame) {
      st = QuantizeProjections(w, weight_dtype);
      if (!st.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("weight_dtype ", kernels::WeightDtypeName(weight_dtype), ": ", st.message()));
      }
    }
    return w;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading weights: ", e.what_without_backtrace()));
  }
}

}  // namespace deltaserve::models::qwen35
