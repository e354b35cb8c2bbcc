// Qwen3.5 forward pass over packed sequences: embedding, hybrid decoder layers, final norm, lm_head.
// The sequences' state lives in a Qwen35State the caller owns (the runner), addressed through the batch.
#include "models/qwen35/model.h"

#include <ATen/ATen.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "deltaserve/kernels/linear.h"
#include "deltaserve/kernels/causal_conv1d.h"
#include "deltaserve/kernels/chunk_gated_delta_rule_pool.h"
#include "deltaserve/kernels/gdn_gates.h"
#include "deltaserve/kernels/paged_attention.h"
#include "deltaserve/kernels/rms_norm.h"
#include "deltaserve/kernels/rotary.h"

namespace deltaserve::models::qwen35 {
namespace {

// Kernel entry points return statuses; inside the forward pass a failure is an exception, which the
// runner turns back into a status at its boundary.
template <typename T>
T Unwrap(absl::StatusOr<T> r) {
  TORCH_CHECK(r.ok(), std::string(r.status().message()));
  return *std::move(r);
}
void Unwrap(const absl::Status& s) { TORCH_CHECK(s.ok(), std::string(s.message())); }

// Brackets a span when a timer is given; the index layout is TimedSpans()'.
struct SpanScope {
  SpanScope(LayerTimer* timer, size_t span) : timer(timer), span(span) {
    if (timer) timer->Begin(span);
  }
  ~SpanScope() {
    if (timer) timer->End(span);
  }
  LayerTimer* timer;
  size_t span;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Qwen35Model>> Qwen35Model::Load(const std::string& model_dir,
                                                               const ModelOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  auto model = std::unique_ptr<Qwen35Model>(new Qwen35Model());
  model->options_ = options;
  absl::StatusOr<Qwen35Config> config = LoadQwen35Config(model_dir);
  if (!config.ok()) return config.status();
  model->config_ = *std::move(config);
  const Qwen35Config& c = model->config_;
  absl::StatusOr<kernels::TriInverseOptions> inverse = kernels::ParseTriInverseMethod(
      kernels::ResolveTriInverseMethod(options.inverse_method, options.device.is_cuda()), options.chunk_size,
      options.dtype);
  if (!inverse.ok()) return inverse.status();
  model->delta_rule_.chunk_size = options.chunk_size;
  model->delta_rule_.inverse = *inverse;
  model->delta_rule_.l2norm_qk = true;
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> checkpoint = SafetensorsCheckpoint::Open(model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  model->checkpoint_ = *std::move(checkpoint);
  absl::StatusOr<Qwen35Weights> weights =
      LoadQwen35Weights(*model->checkpoint_, c, options.dtype, options.device, options.weight_dtype);
  if (!weights.ok()) return weights.status();
  model->weights_ = *std::move(weights);
  try {
    const at::TensorOptions fopts = at::TensorOptions().device(options.device).dtype(at::kFloat);
    const int64_t rot = c.rotary_dim();
    model->inv_freq_ =
        1.0 / at::pow(c.rope_theta, at::arange(0, rot, 2, fopts.dtype(at::kLong)).to(at::kFloat) / rot);
    model->inv_freq_ = model->inv_freq_.to(fopts).contiguous();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("rotary frequencies: ", e.what_without_backtrace()));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::fprintf(
      stderr,
      "qwen35: loaded %s (%ld layers, hidden %ld, vocab %ld, %.1f MB mapped) in %.2f s; peak RSS %.0f MB "
      "(mapped weights count once touched)\n",
      model_dir.c_str(), c.num_hidden_layers, c.hidden_size, c.vocab_size,
      model->checkpoint_->mapped_bytes() / 1e6, secs, ru.ru_maxrss / 1024.0);
  return model;
}

StateShape Qwen35Model::MakeStateShape(int64_t slots, int64_t kv_blocks, int64_t block_size) const {
  StateShape s;
  s.slots = slots;
  s.kv_blocks = kv_blocks;
  s.block_size = block_size;
  s.dtype = options_.dtype;
  s.state_dtype = options_.state_dtype;
  s.device = options_.device;
  return s;
}

void Qwen35Model::LinearAttention(size_t layer, at::Tensor& residual, const ForwardBatch& b,
                                  Qwen35State& state) const {
  const LinearAttentionWeights& w = weights_.layers[layer].linear;
  const Qwen35Config& c = config_;
  const int64_t hk = c.linear_num_key_heads, hv = c.linear_num_value_heads;
  const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
  const int64_t conv_dim = 2 * hk * dk + hv * dv;
  const int64_t t = residual.size(0);
  // One GEMM for the four input projections of the normalised stream: [qkv | z | b | a].
  at::Tensor proj =
      Unwrap(kernels::RmsNormLinear(residual, weights_.layers[layer].input_norm, c.rms_norm_eps, w.in_proj));
  at::Tensor qkv = proj.narrow(1, 0, conv_dim);  // a view: the conv step reads strided rows
  at::Tensor z = proj.narrow(1, conv_dim, hv * dv).contiguous();
  // The gates in float32 from the [b | a] columns, in one fused pass.
  const kernels::GdnGates gates =
      Unwrap(kernels::GatedDeltaGates(proj.narrow(1, conv_dim + hv * dv, 2 * hv), w.neg_a_exp, w.dt_bias));
  const at::Tensor& beta = gates.beta;
  const at::Tensor& g = gates.g;
  kernels::RecurrentStatePool& pool = state.recurrent[layer];
  at::Tensor o;
  if (b.decode) {
    at::Tensor y = Unwrap(
        kernels::CausalConv1dStep(qkv, w.conv1d, {}, state.conv[layer], b.state_slots, true, b.host_state_slots));
    // Views into the conv output in the model's dtype: the CUDA step reads them in place and computes in
    // float32 (other paths convert); g and beta are float32 already, so they never round through bf16.
    at::Tensor q = y.narrow(1, 0, hk * dk).view({t, hk, dk});
    at::Tensor k = y.narrow(1, hk * dk, hk * dk).view({t, hk, dk});
    at::Tensor v = y.narrow(1, 2 * hk * dk, hv * dv).view({t, hv, dv});
    kernels::DecodeStepOptions step;
    step.l2norm_qk = true;
    step.host_slots = b.host_state_slots;
    o = Unwrap(kernels::RecurrentGatedDeltaStep(q, k, v, g.contiguous(), beta.contiguous(), b.state_slots, pool,
                                                step))
            .to(residual.scalar_type());  // [T, hv, dv]
  } else {
    // The conv reads each sequence's state from its slot of the pool and leaves its last inputs there.
    at::Tensor y = Unwrap(kernels::CausalConv1dPrefill(qkv, w.conv1d, {}, state.conv[layer], b.state_slots,
                                                       b.cu_seqlens, true, b.host_cu_seqlens, b.host_state_slots));
    // The chunked rule reads q, k, v in the model's dtype (the fused CUDA kernels convert on load) and
    // g, beta as float32.
    at::Tensor q = y.narrow(1, 0, hk * dk).reshape({1, t, hk, dk}).contiguous();
    at::Tensor k = y.narrow(1, hk * dk, hk * dk).reshape({1, t, hk, dk}).contiguous();
    at::Tensor v = y.narrow(1, 2 * hk * dk, hv * dv).reshape({1, t, hv, dv}).contiguous();
    // Each sequence starts from its slot's state and leaves its final state there (on CUDA the kernels
    // read and write the pool themselves).
    kernels::GatedDeltaRuleOptions rule = delta_rule_;
    rule.host_cu_seqlens = b.host_cu_seqlens;
    kernels::GatedDeltaRuleOutput out = Unwrap(kernels::ChunkGatedDeltaRuleInPool(
        q, k, v, g.unsqueeze(0).contiguous(), beta.unsqueeze(0).contiguous(), b.cu_seqlens, pool, b.state_slots,
        b.host_state_slots, rule));
    o = out.o[0].to(residual.scalar_type());  // [T, hv, dv]
  }
  at::Tensor normed = Unwrap(kernels::GatedRmsNorm(o.contiguous(), z.view({t, hv, dv}), w.norm, c.rms_norm_eps));
  Unwrap(kernels::LinearAccumulate(normed.reshape({t, hv * dv}), w.out_proj, residual));
}

void Qwen35Model::FullAttention(size_t layer, at::Tensor& residual, const ForwardBatch& b,
                                Qwen35State& state) const {
  const FullAttentionWeights& w = weights_.layers[layer].full;
  const Qwen35Config& c = config_;
  const int64_t heads = c.num_attention_heads, kvh = c.num_key_value_heads, hd = c.head_dim;
  const int64_t t = residual.size(0);
  // [q and gate per head | k | v] of the normalised stream, in one GEMM; the pieces are views of it.
  at::Tensor qkv =
      Unwrap(kernels::RmsNormLinear(residual, weights_.layers[layer].input_norm, c.rms_norm_eps, w.qkv_proj));
  at::Tensor qg = qkv.narrow(1, 0, heads * 2 * hd).view({t, heads, 2 * hd});
  at::Tensor q = Unwrap(kernels::QkNormRotary(qg.narrow(-1, 0, hd), w.q_norm, b.positions, inv_freq_, c.rms_norm_eps));
  at::Tensor gate = qg.narrow(-1, hd, hd).reshape({t, heads * hd});
  at::Tensor k = Unwrap(kernels::QkNormRotary(qkv.narrow(1, heads * 2 * hd, kvh * hd).view({t, kvh, hd}), w.k_norm,
                                              b.positions, inv_freq_, c.rms_norm_eps));
  at::Tensor v = qkv.narrow(1, (heads * 2 + kvh) * hd, kvh * hd).reshape({t, kvh, hd}).contiguous();
  // Heads narrower than the kernels' smallest size (test models) are zero-padded to the cache's width.
  const int64_t cache_hd = state.k_cache[layer].size(3);
  if (cache_hd != hd) {
    q = at::constant_pad_nd(q, {0, cache_hd - hd});
    k = at::constant_pad_nd(k, {0, cache_hd - hd});
    v = at::constant_pad_nd(v, {0, cache_hd - hd});
  }
  Unwrap(kernels::WriteKvCache(k, v, b.kv_slots, state.k_cache[layer], state.v_cache[layer]));
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  at::Tensor attn =
      b.decode ? Unwrap(kernels::PagedDecodeAttention(q, state.k_cache[layer], state.v_cache[layer], b.block_tables,
                                                      b.seq_lens, scale, b.max_seq_len))
               : Unwrap(kernels::PagedPrefillAttention(q, state.k_cache[layer], state.v_cache[layer],
                                                       b.block_tables, b.host_cu_seqlens, b.host_starts, scale));
  if (cache_hd != hd) attn = attn.narrow(-1, 0, hd);
  Unwrap(kernels::LinearAccumulate(attn.reshape({t, heads * hd}) * at::sigmoid(gate), w.o_proj, residual));
}

std::vector<TimedSpan> Qwen35Model::TimedSpans() const {
  std::vector<TimedSpan> spans = {{"embedding", "embedding"}};
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    const bool linear = weights_.layers[i].type == LayerType::kLinearAttention;
    spans.push_back({std::to_string(i), linear ? "linear_attention" : "full_attention"});
    spans.push_back({std::to_string(i), "mlp"});
  }
  spans.push_back({"lm_head", "lm_head"});
  return spans;
}

at::Tensor Qwen35Model::Forward(const ForwardBatch& b, Qwen35State& state, LayerTimer* timer) const {
  TORCH_CHECK(b.num_tokens > 0 && b.token_ids.numel() == b.num_tokens, "forward: batch has ", b.num_tokens,
              " tokens but ", b.token_ids.numel(), " ids");
  TORCH_CHECK(static_cast<int64_t>(b.host_state_slots.size()) == b.num_seqs, "forward: ", b.num_seqs,
              " sequences but ", b.host_state_slots.size(), " host slots");
  const double eps = config_.rms_norm_eps;
  // `residual` carries the stream between blocks: each block normalises it as its first projection
  // reads it (RmsNormLinear) and adds its output to it in place in its last (LinearAccumulate).
  at::Tensor residual;
  {
    SpanScope span(timer, 0);
    residual = at::embedding(weights_.embed_tokens, b.token_ids);
  }
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    const LayerWeights& lw = weights_.layers[i];
    {
      SpanScope span(timer, 1 + 2 * i);
      if (lw.type == LayerType::kLinearAttention) {
        LinearAttention(i, residual, b, state);
      } else {
        FullAttention(i, residual, b, state);
      }
    }
    SpanScope span(timer, 2 + 2 * i);
    at::Tensor gate_up = Unwrap(kernels::RmsNormLinear(residual, lw.post_attention_norm, eps, lw.gate_up_proj));
    Unwrap(kernels::LinearAccumulate(gate_up, lw.down_proj, residual, kernels::LinearInput::kSiluAndMul));
  }
  SpanScope span(timer, 1 + 2 * weights_.layers.size());
  if (b.logit_rows.defined() && b.logit_rows.numel() == 0) {
    // A pass of prompt chunks none of which ends its prompt: nothing to predict, no lm_head.
    return at::empty({0, weights_.lm_head.out_features()}, residual.options().dtype(at::kFloat));
  }
  if (b.logit_rows.defined()) residual = residual.index_select(0, b.logit_rows);
  return Unwrap(kernels::RmsNormLinear(residual, weights_.final_norm, eps, weights_.lm_head)).to(at::kFloat);
}

}  // namespace deltaserve::models::qwen35
