// Qwen3.5 forward pass over packed sequences: embedding, hybrid decoder layers, final norm, lm_head.
// Sequence state lives in per-layer slot pools so prefill and decode of different requests can mix.
#include "models/qwen35/model.h"

#include <ATen/ATen.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>

#include "absl/strings/str_cat.h"
#include "deltaserve/kernels/causal_conv1d.h"
#include "models/qwen35/layers.h"

namespace deltaserve::models::qwen35 {

// One Forward call's layout: N sequences packed back to back into T tokens.
struct Qwen35Model::Batch {
  std::vector<int64_t> slots, starts, lengths, offsets;  // offsets: N + 1 prefix sums of lengths
  at::Tensor slot_index;                                 // [N] int64 on the device
  at::Tensor cu_seqlens;                                 // [N + 1] int64 on the device
  at::Tensor positions;                                  // [T] int64 on the device
  bool decode = false;  // every sequence appends one token to a started sequence
  int64_t total = 0;
};

absl::StatusOr<std::unique_ptr<Qwen35Model>> Qwen35Model::Load(const std::string& model_dir,
                                                               const ModelOptions& options) {
  if (options.max_seqs <= 0 || options.max_model_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_seqs and max_model_len must be positive, got ",
                                                   options.max_seqs, " and ", options.max_model_len));
  }
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
      LoadQwen35Weights(*model->checkpoint_, c, options.dtype, options.device);
  if (!weights.ok()) return weights.status();
  model->weights_ = *std::move(weights);
  try {
    const at::TensorOptions fopts = at::TensorOptions().device(options.device).dtype(at::kFloat);
    const int64_t rot = c.rotary_dim();
    model->inv_freq_ =
        1.0 / at::pow(c.rope_theta, at::arange(0, rot, 2, fopts.dtype(at::kLong)).to(at::kFloat) / rot);
    model->inv_freq_ = model->inv_freq_.to(fopts);
    const at::TensorOptions mopts = fopts.dtype(options.dtype);
    const size_t n = c.layer_types.size();
    model->recurrent_.resize(n);
    model->conv_state_.resize(n);
    model->k_cache_.resize(n);
    model->v_cache_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (c.layer_types[i] == LayerType::kLinearAttention) {
        absl::StatusOr<kernels::RecurrentStatePool> pool =
            kernels::MakeRecurrentStatePool(options.max_seqs, c.linear_num_value_heads, c.linear_key_head_dim,
                                            c.linear_value_head_dim, options.state_dtype, options.device);
        if (!pool.ok()) return pool.status();
        model->recurrent_[i] = *std::move(pool);
        const int64_t conv_dim = 2 * c.linear_num_key_heads * c.linear_key_head_dim +
                                 c.linear_num_value_heads * c.linear_value_head_dim;
        model->conv_state_[i] = at::zeros({options.max_seqs, conv_dim, c.linear_conv_kernel_dim - 1}, mopts);
      } else {
        model->k_cache_[i] =
            at::zeros({options.max_seqs, c.num_key_value_heads, options.max_model_len, c.head_dim}, mopts);
        model->v_cache_[i] = at::zeros_like(model->k_cache_[i]);
      }
    }
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("allocating state pools: ", e.what_without_backtrace()));
  }
  model->lengths_.assign(options.max_seqs, 0);
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

absl::Status Qwen35Model::ResetSlot(int64_t slot) {
  if (slot < 0 || slot >= options_.max_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot: ", slot, " is outside [0, ", options_.max_seqs, ")"));
  }
  try {
    for (size_t i = 0; i < recurrent_.size(); ++i) {
      if (conv_state_[i].defined()) {
        conv_state_[i][slot].zero_();
        recurrent_[i].values[slot].zero_();
        if (recurrent_[i].scales.defined()) recurrent_[i].scales[slot].zero_();
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("reset slot: ", e.what_without_backtrace()));
  }
  lengths_[slot] = 0;  // the KV cache needs no clearing: positions past the length are never read
  return absl::OkStatus();
}

at::Tensor Qwen35Model::Mlp(const LayerWeights& w, const at::Tensor& x) const {
  return at::linear(at::silu(at::linear(x, w.gate_proj)) * at::linear(x, w.up_proj), w.down_proj);
}

at::Tensor Qwen35Model::LinearAttention(size_t layer, const at::Tensor& x, const Batch& b) {
  const LinearAttentionWeights& w = weights_.layers[layer].linear;
  const Qwen35Config& c = config_;
  const int64_t hk = c.linear_num_key_heads, hv = c.linear_num_value_heads;
  const int64_t dk = c.linear_key_head_dim, dv = c.linear_value_head_dim;
  const int64_t t = x.size(0);
  at::Tensor qkv = at::linear(x, w.in_proj_qkv);  // [T, conv_dim]
  at::Tensor z = at::linear(x, w.in_proj_z);
  at::Tensor beta = at::sigmoid(at::linear(x, w.in_proj_b).to(at::kFloat));
  at::Tensor g = -w.a_log.exp() * at::softplus(at::linear(x, w.in_proj_a).to(at::kFloat) + w.dt_bias);
  kernels::RecurrentStatePool& pool = recurrent_[layer];
  at::Tensor o;
  // The kernels take one float dtype for all inputs and compute in float32; g and beta must not round
  // through bfloat16, so everything enters as float32.
  auto f32 = [](const at::Tensor& v) { return v.to(at::kFloat).contiguous(); };
  if (b.decode) {
    at::Tensor y = *kernels::CausalConv1dStep(qkv, w.conv1d, {}, conv_state_[layer], b.slot_index, true);
    at::Tensor q = f32(y.narrow(1, 0, hk * dk).reshape({t, hk, dk}));
    at::Tensor k = f32(y.narrow(1, hk * dk, hk * dk).reshape({t, hk, dk}));
    at::Tensor v = f32(y.narrow(1, 2 * hk * dk, hv * dv).reshape({t, hv, dv}));
    kernels::DecodeStepOptions step;
    step.l2norm_qk = true;
    absl::StatusOr<at::Tensor> out = kernels::RecurrentGatedDeltaStep(
        q, k, v, g.contiguous(), beta.contiguous(), b.slot_index, pool, step);
    TORCH_CHECK(out.ok(), std::string(out.status().message()));
    o = out->to(x.scalar_type());  // [T, hv, dv]
  } else {
    at::Tensor init = conv_state_[layer].index_select(0, b.slot_index);
    absl::StatusOr<kernels::CausalConv1dOutput> conv =
        kernels::CausalConv1d(qkv.unsqueeze(0), w.conv1d, {}, init, b.cu_seqlens, true);
    TORCH_CHECK(conv.ok(), std::string(conv.status().message()));
    conv_state_[layer].index_copy_(0, b.slot_index, conv->final_state);
    at::Tensor y = conv->y[0];
    at::Tensor q = f32(y.narrow(1, 0, hk * dk).reshape({1, t, hk, dk}));
    at::Tensor k = f32(y.narrow(1, hk * dk, hk * dk).reshape({1, t, hk, dk}));
    at::Tensor v = f32(y.narrow(1, 2 * hk * dk, hv * dv).reshape({1, t, hv, dv}));
    absl::StatusOr<at::Tensor> h0 = kernels::ReadStates(pool, b.slot_index);
    TORCH_CHECK(h0.ok(), std::string(h0.status().message()));
    absl::StatusOr<kernels::GatedDeltaRuleOutput> out = kernels::ChunkGatedDeltaRule(
        q, k, v, g.unsqueeze(0).contiguous(), beta.unsqueeze(0).contiguous(), *h0, b.cu_seqlens, delta_rule_);
    TORCH_CHECK(out.ok(), std::string(out.status().message()));
    absl::Status written = kernels::WriteStates(pool, b.slot_index, out->final_state);
    TORCH_CHECK(written.ok(), std::string(written.message()));
    o = out->o[0].to(x.scalar_type());  // [T, hv, dv]
  }
  at::Tensor normed = GatedRmsNorm(o, z.reshape({t, hv, dv}), w.norm, c.rms_norm_eps);
  return at::linear(normed.reshape({t, hv * dv}), w.out_proj);
}

at::Tensor Qwen35Model::FullAttention(size_t layer, const at::Tensor& x, const Batch& b) {
  const FullAttentionWeights& w = weights_.layers[layer].full;
  const Qwen35Config& c = config_;
  const int64_t heads = c.num_attention_heads, kvh = c.num_key_value_heads, hd = c.head_dim;
  const int64_t t = x.size(0);
  at::Tensor qg = at::linear(x, w.q_proj).view({t, heads, 2 * hd});  // per head: query, then gate
  at::Tensor q = RmsNormZeroCentred(qg.narrow(-1, 0, hd), w.q_norm, c.rms_norm_eps);
  at::Tensor gate = qg.narrow(-1, hd, hd).reshape({t, heads * hd});
  at::Tensor k = RmsNormZeroCentred(at::linear(x, w.k_proj).view({t, kvh, hd}), w.k_norm, c.rms_norm_eps);
  at::Tensor v = at::linear(x, w.v_proj).view({t, kvh, hd});
  at::Tensor cos, sin;
  RotaryCosSin(b.positions, inv_freq_, x.scalar_type(), &cos, &sin);
  q = ApplyRotary(q, cos, sin);
  k = ApplyRotary(k, cos, sin);
  at::Tensor& kc = k_cache_[layer];
  at::Tensor& vc = v_cache_[layer];
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < b.slots.size(); ++i) {
    const int64_t slot = b.slots[i], start = b.starts[i], len = b.lengths[i], off = b.offsets[i];
    kc[slot].narrow(1, start, len).copy_(k.narrow(0, off, len).transpose(0, 1));
    vc[slot].narrow(1, start, len).copy_(v.narrow(0, off, len).transpose(0, 1));
    const int64_t total = start + len;
    at::Tensor keys = kc[slot].narrow(1, 0, total).repeat_interleave(heads / kvh, 0);  // [heads, L, hd]
    at::Tensor values = vc[slot].narrow(1, 0, total).repeat_interleave(heads / kvh, 0);
    at::Tensor qi = q.narrow(0, off, len).transpose(0, 1);             // [heads, len, hd]
    at::Tensor scores = at::matmul(qi, keys.transpose(1, 2)) * scale;  // [heads, len, L]
    // Query r sits at position start + r and sees keys 0 .. start + r.
    at::Tensor mask = at::ones({len, total}, scores.options().dtype(at::kBool)).triu(start + 1);
    scores = scores.masked_fill(mask, -INFINITY);
    at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(x.scalar_type());
    outs.push_back(at::matmul(probs, values).transpose(0, 1).reshape({len, heads * hd}));
  }
  at::Tensor attn = at::cat(outs, 0);
  return at::linear(attn * at::sigmoid(gate), w.o_proj);
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

namespace {
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

absl::StatusOr<at::Tensor> Qwen35Model::Forward(const std::vector<std::vector<int32_t>>& tokens,
                                                const std::vector<int64_t>& slots, bool all_positions,
                                                LayerTimer* timer) {
  if (tokens.empty()) return absl::InvalidArgumentError("tokens: no sequences given");
  if (tokens.size() != slots.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots: ", slots.size(), " given for ", tokens.size(), " sequences"));
  }
  Batch b;
  b.decode = true;
  std::vector<int64_t> ids, positions;
  std::set<int64_t> seen;
  b.offsets.push_back(0);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t slot = slots[i];
    if (slot < 0 || slot >= options_.max_seqs) {
      return absl::InvalidArgumentError(
          absl::StrCat("slots[", i, "]: ", slot, " is outside [0, ", options_.max_seqs, ")"));
    }
    if (!seen.insert(slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("slots[", i, "]: slot ", slot, " appears twice"));
    }
    const int64_t len = static_cast<int64_t>(tokens[i].size());
    if (len == 0) return absl::InvalidArgumentError(absl::StrCat("tokens[", i, "]: empty"));
    if (lengths_[slot] + len > options_.max_model_len) {
      return absl::InvalidArgumentError(absl::StrCat("tokens[", i, "]: sequence would reach ",
                                                     lengths_[slot] + len, " tokens, over max_model_len ",
                                                     options_.max_model_len));
    }
    for (size_t j = 0; j < tokens[i].size(); ++j) {
      const int32_t id = tokens[i][j];
      if (id < 0 || id >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tokens[", i, "][", j, "]: id ", id, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
      ids.push_back(id);
      positions.push_back(lengths_[slot] + static_cast<int64_t>(j));
    }
    b.decode = b.decode && len == 1 && lengths_[slot] > 0;
    b.slots.push_back(slot);
    b.starts.push_back(lengths_[slot]);
    b.lengths.push_back(len);
    b.offsets.push_back(b.offsets.back() + len);
  }
  b.total = b.offsets.back();
  try {
    const at::TensorOptions lopts = at::TensorOptions().dtype(at::kLong);
    b.slot_index = at::tensor(b.slots, lopts).to(options_.device);
    b.cu_seqlens = at::tensor(b.offsets, lopts).to(options_.device);
    b.positions = at::tensor(positions, lopts).to(options_.device);
    at::Tensor x;
    {
      SpanScope span(timer, 0);
      x = at::embedding(weights_.embed_tokens, at::tensor(ids, lopts).to(options_.device));
    }
    for (size_t i = 0; i < weights_.layers.size(); ++i) {
      const LayerWeights& lw = weights_.layers[i];
      {
        SpanScope span(timer, 1 + 2 * i);
        at::Tensor h = RmsNormZeroCentred(x, lw.input_norm, config_.rms_norm_eps);
        h = lw.type == LayerType::kLinearAttention ? LinearAttention(i, h, b) : FullAttention(i, h, b);
        x = x + h;
      }
      SpanScope span(timer, 2 + 2 * i);
      x = x + Mlp(lw, RmsNormZeroCentred(x, lw.post_attention_norm, config_.rms_norm_eps));
    }
    at::Tensor logits;
    {
      SpanScope span(timer, 1 + 2 * weights_.layers.size());
      if (!all_positions) {
        at::Tensor last = at::tensor(std::vector<int64_t>(b.offsets.begin() + 1, b.offsets.end()), lopts) - 1;
        x = x.index_select(0, last.to(options_.device));
      }
      x = RmsNormZeroCentred(x, weights_.final_norm, config_.rms_norm_eps);
      logits = at::linear(x, weights_.lm_head).to(at::kFloat);
    }
    for (size_t i = 0; i < b.slots.size(); ++i) lengths_[b.slots[i]] += b.lengths[i];
    return logits;
  } catch (const c10::Error& e) {
    // State of the slots in this batch may be partly written: they are no longer usable.
    for (int64_t slot : b.slots) (void)ResetSlot(slot);
    return absl::InternalError(absl::StrCat("forward: ", e.what_without_backtrace()));
  }
}

}  // namespace deltaserve::models::qwen35
