#include "runner/sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace deltaserve::runner {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// vLLM's _SAMPLING_EPS: temperatures below it are greedy (see SamplingParams::temperature).
constexpr double kGreedyTemperature = 1e-5;
constexpr double kMaxTemperature = 100.0;
constexpr double kMaxAbsPenalty = 2.0;   // OpenAI's range for presence/frequency penalties
constexpr int64_t kMaxTopLogprobs = 20;  // OpenAI's limit
// Top-p narrows candidate sets larger than this with top-k before sorting (see TopPInPlace).
constexpr int64_t kTopPNarrowFrom = 1024;
// How far below 1 - top_p the mass that narrowing leaves out must stay: far above the float32 rounding
// of a vocabulary-sized sum, so that no left-out token is near the cut.
constexpr double kTopPTailMargin = 1e-4;

absl::Status RangeError(absl::string_view field, absl::string_view range, absl::string_view got) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be in ", range, ", got ", got));
}

std::string Num(double v) { return absl::StrCat(v); }

absl::Status CheckTokenIds(absl::string_view field, absl::Span<const int32_t> ids, int64_t vocab_size) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return RangeError(absl::StrCat(field, "[", i, "]"), absl::StrCat("[0, ", vocab_size, ")"),
                        absl::StrCat(ids[i]));
    }
  }
  return absl::OkStatus();
}

at::Tensor IdTensor(const std::vector<int64_t>& ids, const at::Device& device) {
  // from_blob borrows the vector; the copy (to device, or clone on CPU) owns its data before we return.
  at::Tensor cpu = at::from_blob(const_cast<int64_t*>(ids.data()), {static_cast<int64_t>(ids.size())},
                                 at::TensorOptions().dtype(at::kLong));
  return device.is_cpu() ? cpu.clone() : cpu.to(device);
}

// Penalties and temperature: the distribution that kProcessed logprobs describe and the filters cut.
at::Tensor PenalizeAndScale(const at::Tensor& logits, const SamplingParams& p, const TokenHistory& h) {
  // A private float32 copy: the caller's logits (often a view into the model's [N, vocab] output) stay
  // untouched.
  at::Tensor x = logits.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  if (p.repetition_penalty != 1.0 && !h.seen_ids().empty()) {
    // transformers' RepetitionPenaltyLogitsProcessor: gather, where(<0, *, /), scatter. Gathering the
    // distinct ids once is the same arithmetic as its gather over the raw (repeating) input ids.
    const at::Tensor ids = IdTensor(h.seen_ids(), x.device());
    at::Tensor s = x.index_select(0, ids);
    s = at::where(s < 0, s * p.repetition_penalty, s / p.repetition_penalty);
    x.index_copy_(0, ids, s);
  }
  if ((p.frequency_penalty != 0 || p.presence_penalty != 0) && !h.output_ids().empty()) {
    // vLLM's apply_penalties: logits -= frequency * count, then logits -= presence * (count > 0).
    const at::Tensor ids = IdTensor(h.output_ids(), x.device());
    const at::Tensor counts =
        at::from_blob(const_cast<float*>(h.output_counts().data()),
                      {static_cast<int64_t>(h.output_counts().size())}, at::TensorOptions().dtype(at::kFloat))
            .to(x.device(), /*non_blocking=*/false, /*copy=*/true);
    at::Tensor s = x.index_select(0, ids);
    s = s - counts * p.frequency_penalty;
    s = s - p.presence_penalty;
    x.index_copy_(0, ids, s);
  }
  if (!IsGreedy(p) && p.temperature != 1.0) x = x / p.temperature;
  return x;
}

// transformers' TopPLogitsWarper: sort ascending, cumulative softmax, remove where it is <= 1 - top_p
// (never the last, most likely token). Sorting is all of its cost, so it sorts as few tokens as it can.
void TopPInPlace(at::Tensor& x, double top_p) {
  const int64_t vocab = x.size(0);
  const double cut = 1.0 - top_p;
  // Removed tokens have probability 0 and sort first in transformers' ascending order, adding nothing to
  // the cumulative sums; so sorting only the finite entries decides the same, and after top-k it sorts k
  // values instead of the vocabulary.
  const at::Tensor finite = x > kNegInf;
  const int64_t num_finite = finite.sum().item<int64_t>();
  at::Tensor ids;  // the candidates, ascending; undefined: every token
  if (num_finite < vocab) ids = finite.nonzero().squeeze(1);
  // Without top-k, a large vocabulary is first narrowed to its k most likely tokens when those leave out
  // a mass clearly below the cut: every left-out token then has cumulative probability at most that mass,
  // so transformers removes it too. The rest are decided with the left-out mass as the sums' start.
  at::Tensor inside, inside_probs, left_out_mass;
  if (num_finite > kTopPNarrowFrom) {
    const at::Tensor probs = x.softmax(0);
    for (int64_t k = kTopPNarrowFrom; k < num_finite; k *= 8) {
      const at::Tensor kth = std::get<0>(at::topk(probs, k)).select(0, k - 1);
      at::Tensor in = probs >= kth;  // ties with the k-th all inside, so the tie rule below still holds
      const at::Tensor mass = probs.masked_fill(in, 0).sum();
      if (mass.item<double>() <= cut - kTopPTailMargin) {
        inside = std::move(in);
        ids = inside.nonzero().squeeze(1);
        inside_probs = probs.index_select(0, ids);
        left_out_mass = mass;
        break;
      }
    }
  }
  // transformers' unstable sort splits a group of equal logits at the cut arbitrarily. Ours is stable on
  // the reversed candidates, so equal logits sort by descending id, the cut removes the higher ids first
  // and, as in greedy, ties favour the lowest id, on every device.
  const at::Tensor reversed = (ids.defined() ? x.index_select(0, ids) : x).flip(0);
  auto [sorted, order] = at::sort(reversed, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor cumulative = left_out_mass.defined()
                                    ? inside_probs.flip(0).index_select(0, order).cumsum(0) + left_out_mass
                                    : sorted.softmax(0).cumsum(0);
  at::Tensor remove = cumulative <= cut;
  remove.select(0, remove.size(0) - 1).fill_(false);  // transformers' min_tokens_to_keep = 1
  // Positions in `reversed` back to positions in the candidates, then to token ids.
  at::Tensor removed = (reversed.size(0) - 1) - order.masked_select(remove);
  if (ids.defined()) removed = ids.index_select(0, removed);
  x.index_fill_(0, removed, kNegInf);
  if (inside.defined()) x.masked_fill_(inside.logical_not(), kNegInf);
}

// top-k, top-p, min-p in place, each with the masks transformers' warpers compute.
void FilterInPlace(at::Tensor& x, const SamplingParams& p) {
  const int64_t vocab = x.size(0);
  if (p.top_k > 0 && p.top_k < vocab) {
    const at::Tensor kth = std::get<0>(at::topk(x, p.top_k)).select(0, p.top_k - 1);
    x.masked_fill_(x < kth, kNegInf);
  }
  if (p.top_p < 1.0) TopPInPlace(x, p.top_p);
  if (p.min_p > 0) {
    // transformers also re-keeps the most likely token, a no-op since min_p <= 1 never removes it.
    const at::Tensor probs = x.softmax(0);
    x.masked_fill_(probs < probs.amax() * p.min_p, kNegInf);
  }
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p, int64_t vocab_size) {
  if (vocab_size <= 0) return RangeError("vocab_size", "[1, inf)", absl::StrCat(vocab_size));
  // Written as !(in range) so that NaN fails every check.
  if (!(p.temperature >= 0 && p.temperature <= kMaxTemperature)) {
    return RangeError("temperature", "[0, 100] (0 = greedy)", Num(p.temperature));
  }
  if (p.top_k < 0 || p.top_k > vocab_size) {
    return RangeError("top_k", absl::StrCat("[0, ", vocab_size, "] (0 = off; vocab_size = ", vocab_size, ")"),
                      absl::StrCat(p.top_k));
  }
  if (!(p.top_p > 0 && p.top_p <= 1)) return RangeError("top_p", "(0, 1] (1 = off)", Num(p.top_p));
  if (!(p.min_p >= 0 && p.min_p <= 1)) return RangeError("min_p", "[0, 1] (0 = off)", Num(p.min_p));
  if (!(p.repetition_penalty > 0 && std::isfinite(p.repetition_penalty))) {
    return RangeError("repetition_penalty", "(0, inf) (1 = off)", Num(p.repetition_penalty));
  }
  if (!(std::abs(p.presence_penalty) <= kMaxAbsPenalty)) {
    return RangeError("presence_penalty", "[-2, 2] (0 = off)", Num(p.presence_penalty));
  }
  if (!(std::abs(p.frequency_penalty) <= kMaxAbsPenalty)) {
    return RangeError("frequency_penalty", "[-2, 2] (0 = off)", Num(p.frequency_penalty));
  }
  if (p.top_logprobs < 0 || p.top_logprobs > kMaxTopLogprobs) {
    return RangeError("top_logprobs", "[0, 20]", absl::StrCat(p.top_logprobs));
  }
  if (p.top_logprobs > 0 && !p.logprobs) {
    return RangeError("top_logprobs", "[0, 0] unless logprobs is true", absl::StrCat(p.top_logprobs));
  }
  if (p.max_new_tokens < 1) {
    return RangeError("max_new_tokens", "[1, inf)", absl::StrCat(p.max_new_tokens));
  }
  if (auto s = CheckTokenIds("stop_token_ids", p.stop_token_ids, vocab_size); !s.ok()) return s;
  if (auto s = CheckTokenIds("eos_token_ids", p.eos_token_ids, vocab_size); !s.ok()) return s;
  return absl::OkStatus();
}

bool IsGreedy(const SamplingParams& params) { return params.temperature < kGreedyTemperature; }

bool UsesHistory(const SamplingParams& params) {
  return params.repetition_penalty != 1.0 || params.presence_penalty != 0.0 || params.frequency_penalty != 0.0;
}

bool IsStopToken(const SamplingParams& params, int32_t token) {
  const auto has = [token](const std::vector<int32_t>& ids) {
    return std::find(ids.begin(), ids.end(), token) != ids.end();
  };
  return has(params.stop_token_ids) || (!params.ignore_eos && has(params.eos_token_ids));
}

void TokenHistory::See(int32_t token) {
  if (seen_set_.insert(token).second) seen_ids_.push_back(token);
}

void TokenHistory::AddPrompt(absl::Span<const int32_t> tokens) {
  for (int32_t t : tokens) See(t);
}

void TokenHistory::AddOutput(int32_t token) {
  See(token);
  ++num_output_tokens_;
  auto [it, inserted] = output_index_.try_emplace(token, output_ids_.size());
  if (inserted) {
    output_ids_.push_back(token);
    output_counts_.push_back(0);
  }
  output_counts_[it->second] += 1;
}

at::Tensor ProcessLogits(const at::Tensor& logits, const SamplingParams& params,
                         const TokenHistory& history) {
  at::Tensor x = PenalizeAndScale(logits, params, history);
  if (!IsGreedy(params)) FilterInPlace(x, params);
  return x;
}

Sampler::Sampler(const SamplingParams& params, int64_t vocab_size, uint64_t seed)
    : params_(params),
      vocab_size_(vocab_size),
      seed_(seed),
      generator_(at::detail::createCPUGenerator(seed)) {}

absl::StatusOr<Sampler> Sampler::Create(const SamplingParams& params, int64_t vocab_size,
                                        absl::Span<const int32_t> prompt_tokens) {
  if (auto s = ValidateSamplingParams(params, vocab_size); !s.ok()) return s;
  if (auto s = CheckTokenIds("prompt_tokens", prompt_tokens, vocab_size); !s.ok()) return s;
  const uint64_t seed = params.seed.has_value() ? *params.seed : c10::detail::getNonDeterministicRandom();
  Sampler sampler(params, vocab_size, seed);
  sampler.history_.AddPrompt(prompt_tokens);
  return sampler;
}

bool Sampler::greedy() const { return IsGreedy(params_); }

double Sampler::NextUniform() {
  std::lock_guard<std::mutex> lock(generator_.mutex());
  const uint64_t bits = generator_.get<at::CPUGeneratorImpl>()->random64();
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

double Sampler::DrawUniform() { return greedy() ? 0.0 : NextUniform(); }

absl::StatusOr<SampleResult> Sampler::Sample(const at::Tensor& logits) {
  if (!logits.defined() || logits.dim() != 1 || logits.size(0) != vocab_size_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "logits must have shape [vocab_size = ", vocab_size_, "], got ",
        logits.defined() ? absl::StrCat("[", absl::StrJoin(logits.sizes(), ", "), "]") : "undefined"));
  }
  if (!at::isFloatingType(logits.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("logits must be floating point, got ", c10::toString(logits.scalar_type())));
  }
  const at::Tensor raw = logits.to(at::kFloat);
  // The maximum is NaN if any logit is (ATen's max propagates NaN), +inf if any is, and -inf only when
  // none is finite: one pass and one device-to-host copy catch what would poison the softmax.
  const float max_logit = raw.max().item<float>();
  if (std::isnan(max_logit) || max_logit == std::numeric_limits<float>::infinity()) {
    return absl::InvalidArgumentError("logits contain NaN or +inf");
  }
  if (max_logit == kNegInf) return absl::InvalidArgumentError("logits have no finite value");

  const at::Tensor scaled = PenalizeAndScale(raw, params_, history_);
  int64_t token = 0;
  if (greedy()) {
    token = scaled.argmax().item<int64_t>();  // the first maximum: ties go to the lowest id
  } else {
    at::Tensor filtered = scaled.clone();
    FilterInPlace(filtered, params_);
    // Inverse CDF in float64 so the cumulative sum over a large vocabulary keeps each token's share; with
    // right = true the first index whose CDF exceeds the target is never a zero-probability token.
    const at::Tensor cdf = filtered.softmax(0).to(at::kDouble).cumsum(0);
    const at::Tensor target = (cdf.select(0, vocab_size_ - 1) * NextUniform()).reshape({1});
    token = at::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).item<int64_t>();
    token = std::min(token, vocab_size_ - 1);
  }

  SampleResult result;
  result.token_id = static_cast<int32_t>(token);
  const at::Tensor logprobs = at::log_softmax(params_.logprobs_mode == LogprobsMode::kRaw ? raw : scaled, 0);
  result.logprob = logprobs.select(0, token).item<float>();
  if (params_.logprobs && params_.top_logprobs > 0) {
    const int64_t n = std::min(params_.top_logprobs, vocab_size_);
    auto [values, ids] = at::topk(logprobs, n);  // sorted, but equal values in no particular order
    // Every value above the n-th is in `ids`; the n-th value's slots go to its lowest ids, which nonzero
    // lists in ascending order.
    const at::Tensor threshold = values.select(0, n - 1);
    const at::Tensor above = ids.masked_select(values > threshold);
    const at::Tensor ties = (logprobs == threshold).nonzero().squeeze(1).narrow(0, 0, n - above.size(0));
    const at::Tensor chosen = at::cat({above, ties}).cpu();
    const at::Tensor chosen_lp = logprobs.index_select(0, chosen.to(logprobs.device())).cpu();
    const int64_t* id = chosen.data_ptr<int64_t>();
    const float* lp = chosen_lp.data_ptr<float>();
    result.top_logprobs.reserve(n);
    for (int64_t i = 0; i < n; ++i) result.top_logprobs.push_back({static_cast<int32_t>(id[i]), lp[i]});
    std::stable_sort(result.top_logprobs.begin(), result.top_logprobs.end(),
                     [](const TokenLogprob& a, const TokenLogprob& b) {
                       return a.logprob > b.logprob || (a.logprob == b.logprob && a.token_id < b.token_id);
                     });
  }
  history_.AddOutput(result.token_id);
  return result;
}

absl::StatusOr<std::vector<SampleResult>> SampleBatch(const at::Tensor& logits,
                                                      absl::Span<Sampler* const> samplers) {
  if (!logits.defined() || logits.dim() != 2 || logits.size(0) != static_cast<int64_t>(samplers.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "logits must have shape [B = ", samplers.size(), " samplers, vocab], got ",
        logits.defined() ? absl::StrCat("[", absl::StrJoin(logits.sizes(), ", "), "]") : "undefined"));
  }
  std::vector<SampleResult> results;
  results.reserve(samplers.size());
  for (size_t i = 0; i < samplers.size(); ++i) {
    if (samplers[i] == nullptr) return absl::InvalidArgumentError(absl::StrCat("samplers[", i, "] is null"));
    auto r = samplers[i]->Sample(logits.select(0, static_cast<int64_t>(i)));
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat("row ", i, ": ", r.status().message()));
    }
    results.push_back(*std::move(r));
  }
  return results;
}

}  // namespace deltaserve::runner
