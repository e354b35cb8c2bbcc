// Token sampling for one request: the request's decoding parameters, their validation, and a per-request
// Sampler (own seeded RNG, penalty bookkeeping) that turns one row of model logits into the next token.
#ifndef DELTASERVE_SERVER_RUNNER_SAMPLER_H_
#define DELTASERVE_SERVER_RUNNER_SAMPLER_H_

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace deltaserve::runner {

// Which distribution SampleResult's logprobs describe.
enum class LogprobsMode {
  // log_softmax of the model's logits as returned, before penalties, temperature and filters. vLLM's
  // default (logprobs_mode="raw_logprobs"), so clients comparing against vLLM see the same numbers, and
  // the values do not depend on the request's sampling knobs.
  kRaw,
  // log_softmax after the penalties and temperature but before top-k/top-p/min-p, i.e. the distribution
  // the filters cut from; filtered tokens keep finite logprobs. (vLLM's "processed" modes differ: they
  // are taken after the filters.) Greedy requests have no temperature, so this is after penalties only.
  kProcessed,
};

// One request's decoding parameters. Defaults are "off" (plain sampling at temperature 1), as in vLLM.
struct SamplingParams {
  // 0 = greedy (argmax, ties to the lowest id). Below 1e-5 counts as greedy too, as in vLLM: dividing by
  // such a temperature overflows float32 logits to infinity.
  double temperature = 1.0;
  int64_t top_k = 0;                // 0 = off
  double top_p = 1.0;               // 1 = off
  double min_p = 0.0;               // 0 = off
  double repetition_penalty = 1.0;  // transformers: over prompt + output tokens; 1 = off
  double presence_penalty = 0.0;    // OpenAI/vLLM: over output tokens only
  double frequency_penalty = 0.0;   // OpenAI/vLLM: over output tokens only
  std::optional<uint64_t> seed;     // set: the request's samples are reproducible
  int64_t max_new_tokens = 16;      // vLLM's default max_tokens
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // stop strings, matched on decoded text by the caller
  // The model's end-of-sequence ids (DefaultSamplingParams fills them from generation_config.json). Kept
  // apart from stop_token_ids so that ignore_eos drops only these.
  std::vector<int32_t> eos_token_ids;
  bool ignore_eos = false;
  bool logprobs = false;     // fill SampleResult::top_logprobs
  int64_t top_logprobs = 0;  // 0..20 alternatives per token; needs `logprobs`, as in the OpenAI API
  LogprobsMode logprobs_mode = LogprobsMode::kRaw;
};

// OK, or InvalidArgument naming the first bad field and its allowed range.
absl::Status ValidateSamplingParams(const SamplingParams& params, int64_t vocab_size);

// Whether `params` decode greedily (temperature below 1e-5, see SamplingParams::temperature).
bool IsGreedy(const SamplingParams& params);

// Whether sampling for `params` reads the request's token history (a repetition, presence or frequency
// penalty): each step then needs the previous step's token recorded on the host first.
bool UsesHistory(const SamplingParams& params);

// Whether generating `token` ends the request: a stop token, or an EOS id unless ignore_eos.
bool IsStopToken(const SamplingParams& params, int32_t token);

// The tokens a request has seen, kept in the shape the penalties consume (unique ids with counts), so a
// decode step costs O(distinct tokens) rather than O(sequence length) or O(vocab).
class TokenHistory {
 public:
  void AddPrompt(absl::Span<const int32_t> tokens);
  void AddOutput(int32_t token);

  // Distinct ids of prompt and output (the repetition penalty's set), in first-seen order.
  const std::vector<int64_t>& seen_ids() const { return seen_ids_; }
  // Distinct output ids and how often each was generated (presence/frequency penalties).
  const std::vector<int64_t>& output_ids() const { return output_ids_; }
  const std::vector<float>& output_counts() const { return output_counts_; }
  int64_t num_output_tokens() const { return num_output_tokens_; }

 private:
  void See(int32_t token);

  std::unordered_set<int32_t> seen_set_;
  std::vector<int64_t> seen_ids_;
  std::unordered_map<int32_t, size_t> output_index_;  // id -> position in output_ids_
  std::vector<int64_t> output_ids_;
  std::vector<float> output_counts_;
  int64_t num_output_tokens_ = 0;
};

// The logits the sampler draws from: float32 [vocab] on logits' device, -inf for removed tokens. Order,
// as transformers' _get_logits_processor builds its chain (penalties ahead of the warpers):
//   repetition penalty (prompt + output) -> frequency, then presence penalty (output; vLLM's order, after
//   the repetition penalty) -> temperature -> top-k -> top-p -> min-p.
// Each step is transformers' own tensor arithmetic, so results match RepetitionPenaltyLogitsProcessor,
// TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper (min_tokens_to_keep
// 1) bit for bit; only top-p sorts fewer tokens than transformers (the finite ones, or the most likely
// when the rest hold clearly less than 1 - top_p), which decides the same up to float rounding. Ties at the
// top-k threshold are all kept, as there; where top-p cuts through equal logits it keeps the lower ids
// (transformers' unstable sort picks arbitrarily, differently per device). A greedy request gets the
// penalties only: transformers adds no warpers without do_sample, and none of them can change the argmax.
// Expects `params` to have passed ValidateSamplingParams for logits' size and `logits` to be 1-D floating
// point; Sampler::Sample checks both.
at::Tensor ProcessLogits(const at::Tensor& logits, const SamplingParams& params, const TokenHistory& history);

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0;
};

struct SampleResult {
  int32_t token_id = 0;
  float logprob = 0;  // of token_id, in the request's LogprobsMode; always filled
  // params.top_logprobs entries when params.logprobs, most likely first, equal logprobs by lower id.
  std::vector<TokenLogprob> top_logprobs;
};

// One request's sampling state. Not thread-safe; move-only, because copies would share one RNG.
class Sampler {
 public:
  // Validates `params` (and the prompt's ids) for `vocab_size`; the prompt enters the repetition
  // penalty's set. Without params.seed a fresh random seed is drawn; seed() reports it so a request can
  // be replayed.
  static absl::StatusOr<Sampler> Create(const SamplingParams& params, int64_t vocab_size,
                                        absl::Span<const int32_t> prompt_tokens = {});

  Sampler(Sampler&&) = default;
  Sampler& operator=(Sampler&&) = default;
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Chooses the next token from `logits` ([vocab], floating point, any device; the model's float32 row)
  // and records it in the history. Sampling draws one uniform number from this request's RNG and inverts
  // the CDF of the processed distribution on logits' device, so a seed reproduces the same tokens for the
  // same logits on any device up to float rounding. InvalidArgument for a wrong shape or dtype, NaN or
  // +inf, or no finite logit; the history is then unchanged.
  absl::StatusOr<SampleResult> Sample(const at::Tensor& logits);

  // The two halves of Sample for the batched device path (batch_sampler.h), which samples many requests
  // in one pass and so cannot call Sample. DrawUniform takes the one draw Sample would take for the next
  // token (none for a greedy request, which gets 0), so a seed gives the same tokens on either path;
  // Record then enters the chosen token in the history, as Sample does.
  double DrawUniform();
  void Record(int32_t token) { history_.AddOutput(token); }

  const SamplingParams& params() const { return params_; }
  int64_t vocab_size() const { return vocab_size_; }
  uint64_t seed() const { return seed_; }
  const TokenHistory& history() const { return history_; }
  bool greedy() const;

 private:
  Sampler(const SamplingParams& params, int64_t vocab_size, uint64_t seed);
  double NextUniform();  // [0, 1) with 53 random bits

  SamplingParams params_;
  int64_t vocab_size_ = 0;
  uint64_t seed_ = 0;
  at::Generator generator_;  // CPU mt19937, private to the request
  TokenHistory history_;
};

// Samples row i of `logits` [B, vocab] with samplers[i]. Stops at the first error; the rows before it
// have been sampled and recorded.
absl::StatusOr<std::vector<SampleResult>> SampleBatch(const at::Tensor& logits,
                                                      absl::Span<Sampler* const> samplers);

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_SAMPLER_H_
