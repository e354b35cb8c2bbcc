#include "runner/batch_sampler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace deltaserve::runner {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Column 2 of the packed result, and the messages Sampler::Sample gives for the same logits.
constexpr double kFlagNanOrInf = 1;
constexpr double kFlagNoFinite = 2;
constexpr char kNanOrInfMessage[] = "logits contain NaN or +inf";
constexpr char kNoFiniteMessage[] = "logits have no finite value";

// A run of the parameter buffer.
struct Segment {
  int64_t offset = 0;
  int64_t size = 0;
};

// What the host decides for one step: which rows take which path, and every number the device needs,
// packed into one float64 buffer so that it goes up in one copy. float64 holds the float32 parameters,
// the flat ids (below 2^53) and the uniforms exactly.
struct Plan {
  int64_t batch = 0;
  int64_t vocab = 0;
  bool on_cuda = false;

  bool any_greedy = false;
  bool any_temperature = false;
  bool any_top_k = false;
  bool any_top_p = false;
  bool any_min_p = false;
  bool any_processed_logprobs = false;
  int64_t top_k_max = 0;
  int64_t top_n = 0;
  int64_t num_sampled = 0;
  int64_t num_logprob_rows = 0;
  int64_t num_top_rows = 0;
  int64_t num_repetition = 0;  // (row, id) entries of the repetition penalty
  int64_t num_output = 0;      // (row, id, count) entries of the frequency and presence penalties

  std::vector<double> buffer;
  // Per batch row.
  Segment temperature;  // divisor (CPU) or reciprocal (CUDA), see DivideAsSample; 1 = none
  Segment repetition_mul, repetition_div, frequency, presence;
  // Penalty entries: flat index row * vocab + id, and the output counts.
  Segment repetition_index, output_index, output_count;
  // Per sampled row, in batch order: the rows, the top-k threshold's index (into the ascending sort, or
  // into topk's descending values; 0 when off), whether top-k is on, top-p's cut 1 - top_p (-1 = off),
  // min_p (0 = off) and the uniform.
  Segment sampled_rows, k_index, has_k, top_p_cut, min_p, uniform;
  // Rows with logprobs on, whether each wants kProcessed, and the positions among them of the rows that
  // want top logprobs.
  Segment logprob_rows, processed, top_positions, top_rows;

  bool has_penalties() const { return num_repetition > 0 || num_output > 0; }
  bool all_sampled() const { return num_sampled == batch; }

  template <typename Fill>
  Segment Add(int64_t size, Fill fill) {
    Segment s{static_cast<int64_t>(buffer.size()), size};
    buffer.resize(buffer.size() + size);
    fill(buffer.data() + s.offset);
    return s;
  }
  Segment AddValues(const std::vector<double>& values) {
    return Add(static_cast<int64_t>(values.size()),
               [&](double* out) { std::copy(values.begin(), values.end(), out); });
  }
};

// `v` as Sampler::Sample divides by it on `device`. ATen divides a CUDA tensor by a host scalar as a
// product with the scalar's float32 reciprocal (div_true_kernel_cuda), and a CPU tensor by the scalar
// itself; Sample divides by host scalars, the batch path by per-row tensors, so it does the same by hand
// (DivideAsSample) to give the same bits on both devices.
double DivisorAsSample(double v, bool on_cuda) {
  const float f = static_cast<float>(v);
  return on_cuda ? 1.0f / f : f;
}

at::Tensor DivideAsSample(const at::Tensor& x, const at::Tensor& divisor, bool on_cuda) {
  return on_cuda ? x * divisor : x / divisor;
}

absl::Status CheckLogits(const at::Tensor& logits, size_t rows) {
  if (!logits.defined() || logits.dim() != 2 || logits.size(0) != static_cast<int64_t>(rows) ||
      logits.size(1) < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "logits must have shape [B = ", rows, " rows, vocab >= 1], got ",
        logits.defined() ? absl::StrCat("[", absl::StrJoin(logits.sizes(), ", "), "]") : "undefined"));
  }
  if (!at::isFloatingType(logits.scalar_type())) {
    return absl::InvalidArgumentError(
        absl::StrCat("logits must be floating point, got ", c10::toString(logits.scalar_type())));
  }
  return absl::OkStatus();
}

absl::Status CheckRow(const SamplingRow& row, size_t i, int64_t vocab) {
  if (row.params == nullptr || row.history == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("rows[", i, "] has no params or history"));
  }
  if (absl::Status s = ValidateSamplingParams(*row.params, vocab); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("rows[", i, "]: ", s.message()));
  }
  if (!IsGreedy(*row.params) && !(row.uniform >= 0 && row.uniform < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows[", i, "].uniform must be in [0, 1), got ", row.uniform));
  }
  return absl::OkStatus();
}

absl::Status CheckIds(const std::vector<int64_t>& ids, size_t i, int64_t vocab) {
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("rows[", i, "].history holds id ", id, ", outside [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

bool RepetitionOn(const SamplingParams& p, const TokenHistory& h) {
  return p.repetition_penalty != 1.0 && !h.seen_ids().empty();
}
bool OutputPenaltiesOn(const SamplingParams& p, const TokenHistory& h) {
  return (p.frequency_penalty != 0 || p.presence_penalty != 0) && !h.output_ids().empty();
}
bool TopKOn(const SamplingParams& p, int64_t vocab) { return p.top_k > 0 && p.top_k < vocab; }

absl::StatusOr<Plan> MakePlan(const at::Tensor& logits, absl::Span<const SamplingRow> rows) {
  Plan plan;
  plan.batch = static_cast<int64_t>(rows.size());
  plan.vocab = logits.size(1);
  plan.on_cuda = logits.is_cuda();
  const int64_t vocab = plan.vocab;

  std::vector<int64_t> sampled, logprob, top;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (absl::Status s = CheckRow(rows[i], i, vocab); !s.ok()) return s;
    const SamplingParams& p = *rows[i].params;
    const TokenHistory& h = *rows[i].history;
    if (absl::Status s = CheckIds(h.seen_ids(), i, vocab); !s.ok()) return s;
    if (IsGreedy(p)) {
      plan.any_greedy = true;
    } else {
      sampled.push_back(static_cast<int64_t>(i));
      plan.any_temperature |= p.temperature != 1.0;
      if (TopKOn(p, vocab)) {
        plan.any_top_k = true;
        plan.top_k_max = std::max(plan.top_k_max, p.top_k);
      }
      plan.any_top_p |= p.top_p < 1.0;
      plan.any_min_p |= p.min_p > 0;
    }
    if (RepetitionOn(p, h)) plan.num_repetition += static_cast<int64_t>(h.seen_ids().size());
    if (OutputPenaltiesOn(p, h)) plan.num_output += static_cast<int64_t>(h.output_ids().size());
    if (p.logprobs) {
      if (p.top_logprobs > 0) {
        top.push_back(static_cast<int64_t>(logprob.size()));
        plan.top_n = std::max(plan.top_n, std::min(p.top_logprobs, vocab));
      }
      logprob.push_back(static_cast<int64_t>(i));
      plan.any_processed_logprobs |= p.logprobs_mode == LogprobsMode::kProcessed;
    }
  }
  plan.num_sampled = static_cast<int64_t>(sampled.size());
  plan.num_logprob_rows = static_cast<int64_t>(logprob.size());
  plan.num_top_rows = static_cast<int64_t>(top.size());

  const auto per_row = [&](auto value) {
    return plan.Add(plan.batch, [&](double* out) {
      for (int64_t i = 0; i < plan.batch; ++i) out[i] = value(*rows[i].params);
    });
  };
  if (plan.any_temperature) {
    plan.temperature = per_row([&](const SamplingParams& p) {
      return IsGreedy(p) || p.temperature == 1.0 ? 1.0 : DivisorAsSample(p.temperature, plan.on_cuda);
    });
  }
  if (plan.num_repetition > 0) {
    // float32 as ATen converts Sample's double scalars.
    plan.repetition_mul =
        per_row([](const SamplingParams& p) { return double{static_cast<float>(p.repetition_penalty)}; });
    plan.repetition_div =
        per_row([&](const SamplingParams& p) { return DivisorAsSample(p.repetition_penalty, plan.on_cuda); });
    plan.repetition_index = plan.Add(plan.num_repetition, [&](double* out) {
      for (int64_t i = 0; i < plan.batch; ++i) {
        if (!RepetitionOn(*rows[i].params, *rows[i].history)) continue;
        for (int64_t id : rows[i].history->seen_ids()) *out++ = static_cast<double>(i * vocab + id);
      }
    });
  }
  if (plan.num_output > 0) {
    plan.frequency =
        per_row([](const SamplingParams& p) { return double{static_cast<float>(p.frequency_penalty)}; });
    plan.presence =
        per_row([](const SamplingParams& p) { return double{static_cast<float>(p.presence_penalty)}; });
    plan.output_index = plan.Add(plan.num_output, [&](double* out) {
      for (int64_t i = 0; i < plan.batch; ++i) {
        if (!OutputPenaltiesOn(*rows[i].params, *rows[i].history)) continue;
        for (int64_t id : rows[i].history->output_ids()) *out++ = static_cast<double>(i * vocab + id);
      }
    });
    plan.output_count = plan.Add(plan.num_output, [&](double* out) {
      for (int64_t i = 0; i < plan.batch; ++i) {
        if (!OutputPenaltiesOn(*rows[i].params, *rows[i].history)) continue;
        for (float c : rows[i].history->output_counts()) *out++ = c;
      }
    });
  }

  if (!sampled.empty()) {
    std::vector<double> rows_d(sampled.begin(), sampled.end());
    if (!plan.all_sampled()) plan.sampled_rows = plan.AddValues(rows_d);
    const auto per_sampled = [&](auto value) {
      return plan.Add(plan.num_sampled, [&](double* out) {
        for (int64_t j = 0; j < plan.num_sampled; ++j) out[j] = value(rows[sampled[j]]);
      });
    };
    if (plan.any_top_k) {
      // With top-p the rows are sorted ascending, where the k-th largest sits at vocab - k and index 0 (the
      // smallest) removes nothing; without, topk's descending values hold it at k - 1.
      plan.k_index = per_sampled([&](const SamplingRow& r) -> double {
        if (!TopKOn(*r.params, vocab)) return 0;
        return plan.any_top_p ? vocab - r.params->top_k : r.params->top_k - 1;
      });
      plan.has_k = per_sampled([&](const SamplingRow& r) -> double { return TopKOn(*r.params, vocab); });
    }
    if (plan.any_top_p) {
      plan.top_p_cut = per_sampled([](const SamplingRow& r) -> double {
        // Sample compares float32 sums with the double 1 - top_p, which ATen converts to float32.
        return r.params->top_p < 1.0 ? double{static_cast<float>(1.0 - r.params->top_p)} : -1.0;
      });
    }
    if (plan.any_min_p) {
      plan.min_p =
          per_sampled([](const SamplingRow& r) { return double{static_cast<float>(r.params->min_p)}; });
    }
    plan.uniform = per_sampled([](const SamplingRow& r) { return r.uniform; });
  }

  if (!logprob.empty()) {
    if (plan.num_logprob_rows < plan.batch)
      plan.logprob_rows = plan.AddValues({logprob.begin(), logprob.end()});
    if (plan.any_processed_logprobs) {
      plan.processed = plan.Add(plan.num_logprob_rows, [&](double* out) {
        for (int64_t j = 0; j < plan.num_logprob_rows; ++j) {
          out[j] = rows[logprob[j]].params->logprobs_mode == LogprobsMode::kProcessed;
        }
      });
    }
    if (!top.empty() && plan.num_top_rows < plan.num_logprob_rows) {
      plan.top_positions = plan.AddValues({top.begin(), top.end()});
      std::vector<double> top_rows;
      for (int64_t j : top) top_rows.push_back(static_cast<double>(logprob[j]));
      plan.top_rows = plan.AddValues(top_rows);
    }
  }
  return plan;
}

// The plan's buffer on the logits' device, seen as float64, float32 and int64.
class DeviceParams {
 public:
  DeviceParams(const std::vector<double>& buffer, const at::Device& device) {
    if (buffer.empty()) return;
    // Pinned, so the copy is truly asynchronous; the caching host allocator keeps the block until the
    // copy has run, even after `host` goes out of scope.
    at::Tensor host = at::empty({static_cast<int64_t>(buffer.size())},
                                at::TensorOptions().dtype(at::kDouble).pinned_memory(device.is_cuda()));
    std::memcpy(host.data_ptr<double>(), buffer.data(), buffer.size() * sizeof(double));
    d_ = device.is_cpu() ? host : host.to(at::TensorOptions().device(device), /*non_blocking=*/true);
    f_ = d_.to(at::kFloat);
    l_ = d_.to(at::kLong);
  }
  at::Tensor Double(Segment s) const { return d_.narrow(0, s.offset, s.size); }
  at::Tensor Float(Segment s) const { return f_.narrow(0, s.offset, s.size); }
  at::Tensor Long(Segment s) const { return l_.narrow(0, s.offset, s.size); }
  at::Tensor Column(Segment s) const { return Float(s).unsqueeze(1); }  // [n, 1], broadcasts over vocab

 private:
  at::Tensor d_, f_, l_;
};

// Rows `rows` of x, or x itself when the rows are all of them (the segment is then empty).
at::Tensor Rows(const at::Tensor& x, const DeviceParams& dp, Segment rows) {
  return rows.size == 0 ? x : x.index_select(0, dp.Long(rows));
}

// Penalties and temperature over the whole batch (ProcessLogits' PenalizeAndScale, row by row the same
// arithmetic): a gather, the update and a scatter over the packed (row, id) entries, then one division.
at::Tensor PenalizeAndScale(const at::Tensor& raw, const Plan& plan, const DeviceParams& dp) {
  if (!plan.has_penalties() && !plan.any_temperature) return raw;
  at::Tensor x = raw.clone(at::MemoryFormat::Contiguous);
  at::Tensor flat = x.view({-1});
  const auto entry_rows = [&](const at::Tensor& index) { return at::div(index, plan.vocab, "trunc"); };
  if (plan.num_repetition > 0) {
    const at::Tensor index = dp.Long(plan.repetition_index);
    const at::Tensor row = entry_rows(index);
    const at::Tensor s = flat.index_select(0, index);
    const at::Tensor mul = dp.Float(plan.repetition_mul).index_select(0, row);
    const at::Tensor div = dp.Float(plan.repetition_div).index_select(0, row);
    flat.index_copy_(0, index, at::where(s < 0, s * mul, DivideAsSample(s, div, plan.on_cuda)));
  }
  if (plan.num_output > 0) {
    const at::Tensor index = dp.Long(plan.output_index);
    const at::Tensor row = entry_rows(index);
    at::Tensor s = flat.index_select(0, index);
    s = s - dp.Float(plan.output_count) * dp.Float(plan.frequency).index_select(0, row);
    s = s - dp.Float(plan.presence).index_select(0, row);
    flat.index_copy_(0, index, s);
  }
  if (plan.any_temperature) {
    const at::Tensor t = dp.Column(plan.temperature);
    plan.on_cuda ? x.mul_(t) : x.div_(t);  // DivideAsSample, in place
  }
  return x;
}

// top-k, top-p and min-p over the sampled rows y ([S, vocab]), each with the per-row parameter and the
// masks ProcessLogits' FilterInPlace computes. Out of place: y may be the batch's scaled logits, which the
// logprobs still need.
at::Tensor Filter(at::Tensor y, const Plan& plan, const DeviceParams& dp) {
  const int64_t vocab = plan.vocab;
  if (plan.any_top_p) {
    // One stable ascending sort of the reversed rows: equal logits then sort by descending id, so top-p
    // cuts the higher ids first, as Sample's sort of the reversed candidates does. Removed tokens (-inf)
    // sort first and add nothing to the cumulative sums, so sorting the whole row decides as Sample's sort
    // of the finite candidates, up to the float rounding of the softmax's sum.
    auto [sorted, order] = at::sort(y.flip(1), /*stable=*/true, /*dim=*/1, /*descending=*/false);
    if (plan.any_top_k) {
      // Everything below the k-th largest is a prefix of the ascending order; ties with it stay.
      const at::Tensor kth = sorted.gather(1, dp.Long(plan.k_index).unsqueeze(1));
      sorted.masked_fill_(sorted < kth, kNegInf);
    }
    at::Tensor remove = sorted.softmax(1).cumsum(1) <= dp.Column(plan.top_p_cut);
    remove.select(1, vocab - 1).fill_(false);  // transformers' min_tokens_to_keep = 1: the most likely
    sorted.masked_fill_(remove, kNegInf);
    y = at::empty_like(sorted).scatter_(1, at::rsub(order, vocab - 1), sorted);
  } else if (plan.any_top_k) {
    // No sort needed: topk's k-th value is the threshold; rows without top-k get -inf.
    const at::Tensor top = std::get<0>(at::topk(y, plan.top_k_max, /*dim=*/1));
    const at::Tensor kth = top.gather(1, dp.Long(plan.k_index).unsqueeze(1));
    y = y.masked_fill(y < at::where(dp.Column(plan.has_k) > 0, kth, kNegInf), kNegInf);
  }
  if (plan.any_min_p) {
    const at::Tensor probs = y.softmax(1);
    y = y.masked_fill(probs < probs.amax(1, /*keepdim=*/true) * dp.Column(plan.min_p), kNegInf);
  }
  return y;
}

// Sample's inverse CDF, one row each: float64 cumulative sums and the first index whose CDF exceeds
// uniform * total (right = true never lands on a zero-probability token).
at::Tensor Draw(const at::Tensor& y, const at::Tensor& uniform, int64_t vocab) {
  const at::Tensor cdf = y.softmax(1).to(at::kDouble).cumsum(1);
  const at::Tensor target = cdf.narrow(1, vocab - 1, 1) * uniform.unsqueeze(1);
  return at::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).squeeze(1).clamp_max(vocab - 1);
}

// The top n ids of each row of lp (float32 log-probabilities), most likely first and equal values by lower
// id, as Sample orders them. topk alone breaks ties arbitrarily (and differently per device), so it ranks
// int64 keys that are unique per row: the float's bits made monotone, above the id reversed. (The bit map
// orders -0 below +0; log_softmax gives +0 for the maximum, never -0.)
at::Tensor TopIds(const at::Tensor& lp, int64_t n) {
  const int64_t vocab = lp.size(1);
  at::Tensor key = lp.contiguous().view(at::kInt).to(at::kLong);
  key.bitwise_xor_(at::bitwise_right_shift(key, 31).bitwise_and_(0x7fffffff));  // negative floats reversed
  key.mul_(int64_t{1} << 32).add_(at::arange(vocab - 1, -1, -1, key.options()));
  return std::get<1>(at::topk(key, n, /*dim=*/1));
}

at::Tensor ErrorFlags(const at::Tensor& max_raw) {
  // ATen's max propagates NaN; +inf wins the max; -inf is the max only when nothing is finite.
  const at::Tensor nan_or_inf =
      max_raw.isnan().logical_or_(max_raw == std::numeric_limits<float>::infinity());
  return at::where(nan_or_inf, kFlagNanOrInf, at::where(max_raw == kNegInf, kFlagNoFinite, 0.0));
}

}  // namespace

SamplingRow NextRow(Sampler& sampler) {
  SamplingRow row;
  row.params = &sampler.params();
  row.history = &sampler.history();
  row.uniform = sampler.DrawUniform();
  return row;
}

absl::StatusOr<at::Tensor> SampleRows(const at::Tensor& logits, absl::Span<const SamplingRow> rows,
                                      BatchSampleLayout* layout) {
  if (absl::Status s = CheckLogits(logits, rows.size()); !s.ok()) return s;
  absl::StatusOr<Plan> plan_or = MakePlan(logits, rows);
  if (!plan_or.ok()) return plan_or.status();
  const Plan& plan = *plan_or;
  const int64_t batch = plan.batch;
  const int64_t vocab = plan.vocab;
  *layout = BatchSampleLayout{batch, plan.top_n};

  // Every row greedy, nothing to apply, no logprobs: the first maximum of the logits as they come. A
  // bf16 -> float32 cast is exact and keeps order (ties included), so this is the float32 path's token and
  // flag, without writing and re-reading a float32 copy of [batch, vocab]: at batch 128 and Qwen3.5's
  // vocabulary, 64 MB read instead of 318 MB moved per decode step.
  if (plan.num_sampled == 0 && plan.num_logprob_rows == 0 && !plan.has_penalties() && !plan.any_temperature) {
    at::Tensor out = at::zeros({batch, layout->width()}, logits.options().dtype(at::kDouble));
    if (batch == 0) return out;
    const auto [max_raw, tokens] = at::max(logits, /*dim=*/1);  // ties: the first maximum, as argmax
    out.select(1, 0).copy_(tokens);
    out.select(1, 2).copy_(ErrorFlags(max_raw.to(at::kFloat)));
    return out;
  }

  const at::Tensor raw = logits.to(at::kFloat).contiguous();
  at::Tensor out = at::zeros({batch, layout->width()}, raw.options().dtype(at::kDouble));
  if (batch == 0) return out;
  const DeviceParams dp(plan.buffer, raw.device());

  // Greedy rows over unmodified logits need only the first maximum, which the error check's max brings.
  const at::Tensor scaled = PenalizeAndScale(raw, plan, dp);
  at::Tensor max_raw, tokens;
  if (plan.any_greedy && scaled.is_same(raw)) {
    std::tie(max_raw, tokens) = at::max(raw, /*dim=*/1);  // ties: the first maximum, as argmax
  } else {
    max_raw = raw.amax(1);
    if (plan.any_greedy) tokens = scaled.argmax(1);
  }
  if (plan.num_sampled > 0) {
    const at::Tensor drawn =
        Draw(Filter(Rows(scaled, dp, plan.sampled_rows), plan, dp), dp.Double(plan.uniform), vocab);
    tokens = plan.all_sampled() ? drawn : tokens.index_copy_(0, dp.Long(plan.sampled_rows), drawn);
  }
  out.select(1, 0).copy_(tokens);
  out.select(1, 2).copy_(ErrorFlags(max_raw));

  if (plan.num_logprob_rows > 0) {
    at::Tensor source = Rows(raw, dp, plan.logprob_rows);
    if (plan.any_processed_logprobs && !scaled.is_same(raw)) {
      source = at::where(dp.Column(plan.processed) > 0, Rows(scaled, dp, plan.logprob_rows), source);
    }
    const at::Tensor lp = at::log_softmax(source, 1);
    const at::Tensor token_lp =
        lp.gather(1, Rows(tokens, dp, plan.logprob_rows).unsqueeze(1)).squeeze(1).to(at::kDouble);
    if (plan.logprob_rows.size == 0) {
      out.select(1, 1).copy_(token_lp);
    } else {
      out.select(1, 1).index_copy_(0, dp.Long(plan.logprob_rows), token_lp);
    }
    if (plan.top_n > 0) {
      const at::Tensor top_lp = Rows(lp, dp, plan.top_positions);
      const at::Tensor ids = TopIds(top_lp, plan.top_n);
      const at::Tensor top = at::cat({ids.to(at::kDouble), top_lp.gather(1, ids).to(at::kDouble)}, 1);
      at::Tensor dest = out.narrow(1, 3, 2 * plan.top_n);
      if (plan.num_top_rows == batch) {
        dest.copy_(top);
      } else {
        dest.index_copy_(0, plan.top_rows.size == 0 ? dp.Long(plan.logprob_rows) : dp.Long(plan.top_rows),
                         top);
      }
    }
  }
  return out;
}

std::vector<absl::StatusOr<SampleResult>> UnpackSamples(const double* host, const BatchSampleLayout& layout,
                                                        absl::Span<const SamplingRow> rows) {
  std::vector<absl::StatusOr<SampleResult>> results;
  results.reserve(rows.size());
  if (static_cast<int64_t>(rows.size()) != layout.rows || (host == nullptr && layout.rows > 0)) {
    results.assign(rows.size(), absl::InvalidArgumentError(absl::StrCat(
                                    "the packed samples hold ", layout.rows, " rows, not ", rows.size())));
    return results;
  }
  const int64_t width = layout.width();
  for (size_t i = 0; i < rows.size(); ++i) {
    const double* r = host + static_cast<int64_t>(i) * width;
    if (r[2] == kFlagNanOrInf) {
      results.push_back(absl::InvalidArgumentError(kNanOrInfMessage));
      continue;
    }
    if (r[2] != 0) {
      results.push_back(absl::InvalidArgumentError(kNoFiniteMessage));
      continue;
    }
    if (rows[i].params == nullptr) {
      results.push_back(absl::InvalidArgumentError(absl::StrCat("rows[", i, "] has no params")));
      continue;
    }
    const SamplingParams& p = *rows[i].params;
    SampleResult s;
    s.token_id = static_cast<int32_t>(r[0]);
    if (p.logprobs) {
      s.logprob = static_cast<float>(r[1]);
      const int64_t n = std::min(p.top_logprobs, layout.top_n);
      s.top_logprobs.reserve(n);
      for (int64_t j = 0; j < n; ++j) {
        s.top_logprobs.push_back(
            {static_cast<int32_t>(r[3 + j]), static_cast<float>(r[3 + layout.top_n + j])});
      }
    }
    results.push_back(std::move(s));
  }
  return results;
}

absl::StatusOr<at::Tensor> ProcessRows(const at::Tensor& logits, absl::Span<const SamplingRow> rows) {
  if (absl::Status s = CheckLogits(logits, rows.size()); !s.ok()) return s;
  absl::StatusOr<Plan> plan_or = MakePlan(logits, rows);
  if (!plan_or.ok()) return plan_or.status();
  const Plan& plan = *plan_or;
  const at::Tensor raw = logits.to(at::kFloat).contiguous();
  if (plan.batch == 0) return raw.clone();
  const DeviceParams dp(plan.buffer, raw.device());
  at::Tensor result = PenalizeAndScale(raw, plan, dp);
  if (plan.num_sampled > 0) {
    const at::Tensor filtered = Filter(Rows(result, dp, plan.sampled_rows), plan, dp);
    if (plan.all_sampled()) {
      result = filtered;
    } else {
      if (result.is_same(raw)) result = raw.clone();
      result.index_copy_(0, dp.Long(plan.sampled_rows), filtered);
    }
  }
  return result.is_alias_of(logits) ? result.clone() : result;
}

}  // namespace deltaserve::runner
