// The batched device sampler: on fresh random logits, batches mixing every kind of row give row by row
// the tokens and logprobs of Sampler::Sample on clones of the same requests; a row's result depends on
// nothing else in the batch; bad rows fail alone; on CUDA the same results with no host sync.
#include "runner/batch_sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runner/sampler.h"

#ifdef DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace deltaserve::runner {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

at::Tensor RandomLogits(int64_t rows, int64_t vocab, uint64_t seed, double scale = 3.0) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn({rows, vocab}, gen, at::TensorOptions().dtype(at::kFloat)) * scale;
}

// Coarse values: many equal logits, for the tie rules of argmax, top-k, top-p and the top logprobs.
at::Tensor TiedLogits(int64_t rows, int64_t vocab, uint64_t seed) {
  return at::round(RandomLogits(rows, vocab, seed, 2.0) / 0.5) * 0.5;
}

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor t = at::randint(vocab, {n}, gen, at::TensorOptions().dtype(at::kLong));
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(t[i].item<int64_t>()));
  return ids;
}

// Every kind of row the sampler knows, each with its own seed.
std::vector<SamplingParams> RowKinds() {
  std::vector<SamplingParams> kinds;
  const auto add = [&](SamplingParams p) {
    p.seed = 1000 + kinds.size();
    kinds.push_back(p);
  };
  SamplingParams p;
  p.temperature = 0;
  add(p);  // greedy
  p.repetition_penalty = 1.5;
  p.logprobs = true;
  p.top_logprobs = 5;
  p.logprobs_mode = LogprobsMode::kProcessed;
  add(p);  // greedy, penalised, processed logprobs
  p = {};
  p.temperature = 0;
  p.frequency_penalty = 0.7;
  p.presence_penalty = -0.4;
  p.logprobs = true;
  p.top_logprobs = 2;
  add(p);  // greedy, output penalties, raw logprobs
  p = {};
  p.temperature = 0.7;
  add(p);
  p = {};
  p.top_k = 10;
  add(p);
  p.top_k = 0;
  p.top_p = 0.9;
  add(p);
  p = {};
  p.temperature = 0.8;
  p.top_k = 40;
  p.top_p = 0.8;
  add(p);
  p = {};
  p.temperature = 1.3;
  p.min_p = 0.1;
  add(p);
  p = {};
  p.repetition_penalty = 1.3;
  add(p);
  p = {};
  p.presence_penalty = 0.5;
  add(p);
  p = {};
  p.temperature = 0.9;
  p.frequency_penalty = 0.4;
  p.presence_penalty = -0.3;
  add(p);
  p = {};
  p.temperature = 0.8;
  p.top_p = 0.95;
  p.logprobs = true;
  p.top_logprobs = 3;
  add(p);  // raw logprobs
  p = {};
  p.top_k = 5;
  p.logprobs = true;
  p.top_logprobs = 20;
  p.logprobs_mode = LogprobsMode::kProcessed;
  add(p);
  p = {};
  p.temperature = 1.1;
  p.logprobs = true;  // the token's logprob alone
  add(p);
  p = {};
  p.temperature = 0.8;
  p.top_k = 40;
  p.top_p = 0.9;
  p.min_p = 0.02;
  p.repetition_penalty = 1.2;
  p.presence_penalty = 0.3;
  p.frequency_penalty = 0.1;
  p.logprobs = true;
  p.top_logprobs = 4;
  p.logprobs_mode = LogprobsMode::kProcessed;
  add(p);  // everything
  p = {};
  p.top_p = 0.7;
  p.min_p = 0.05;
  p.repetition_penalty = 0.8;
  add(p);
  return kinds;
}

std::vector<SamplingParams> Select(const std::vector<SamplingParams>& kinds,
                                   bool (*keep)(const SamplingParams&)) {
  std::vector<SamplingParams> out;
  for (const SamplingParams& p : kinds) {
    if (keep(p)) out.push_back(p);
  }
  return out;
}

Sampler MakeSampler(const SamplingParams& params, int64_t vocab, const std::vector<int32_t>& prompt) {
  auto s = Sampler::Create(params, vocab, prompt);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

// The same request twice: one sampler drives the batch path, its twin Sampler::Sample. Both start with a
// random prompt and a few earlier outputs, so the penalties have something to act on.
struct Twins {
  std::vector<Sampler> batch;
  std::vector<Sampler> reference;
};

Twins MakeTwins(const std::vector<SamplingParams>& kinds, int64_t vocab, uint64_t seed) {
  Twins t;
  for (size_t i = 0; i < kinds.size(); ++i) {
    const std::vector<int32_t> prompt = RandomIds(30, vocab, seed + 17 * i);
    t.batch.push_back(MakeSampler(kinds[i], vocab, prompt));
    t.reference.push_back(MakeSampler(kinds[i], vocab, prompt));
    for (int32_t id : RandomIds(6, vocab, seed + 17 * i + 1)) {
      t.batch.back().Record(id);
      t.reference.back().Record(id);
    }
    t.batch.back().Record(prompt[0]);  // an output seen twice
    t.reference.back().Record(prompt[0]);
  }
  return t;
}

struct BatchOutput {
  BatchSampleLayout layout;
  at::Tensor packed;  // float64 on the host
  std::vector<absl::StatusOr<SampleResult>> results;
};

BatchOutput RunBatch(const at::Tensor& logits, const std::vector<SamplingRow>& rows) {
  BatchOutput out;
  auto packed = SampleRows(logits, rows, &out.layout);
  EXPECT_TRUE(packed.ok()) << packed.status();
  if (!packed.ok()) return out;
  EXPECT_EQ(packed->device(), logits.device());
  EXPECT_EQ(packed->scalar_type(), at::kDouble);
  EXPECT_EQ(packed->size(0), static_cast<int64_t>(rows.size()));
  EXPECT_EQ(packed->size(1), out.layout.width());
  out.packed = packed->cpu().contiguous();
  out.results = UnpackSamples(out.packed.data_ptr<double>(), out.layout, rows);
  return out;
}

void ExpectSameResult(const absl::StatusOr<SampleResult>& got, const absl::StatusOr<SampleResult>& want,
                      const SamplingParams& p, double tolerance = 1e-5) {
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->token_id, want->token_id);
  if (!p.logprobs) {
    EXPECT_EQ(got->logprob, 0);
    EXPECT_TRUE(got->top_logprobs.empty());
    return;
  }
  EXPECT_NEAR(got->logprob, want->logprob, tolerance);
  ASSERT_EQ(got->top_logprobs.size(), want->top_logprobs.size());
  for (size_t j = 0; j < got->top_logprobs.size(); ++j) {
    EXPECT_EQ(got->top_logprobs[j].token_id, want->top_logprobs[j].token_id) << "rank " << j;
    EXPECT_NEAR(got->top_logprobs[j].logprob, want->top_logprobs[j].logprob, tolerance) << "rank " << j;
  }
}

// Several decode steps of `kinds` as one batch against Sampler::Sample row by row, on fresh logits each
// step (every third step with many ties); both paths record their tokens, so the histories stay equal
// only while the tokens do.
void ExpectBatchMatchesSample(const std::vector<SamplingParams>& kinds, int64_t vocab, uint64_t seed,
                              const at::Device& device = at::kCPU) {
  Twins t = MakeTwins(kinds, vocab, seed);
  const int64_t batch = static_cast<int64_t>(kinds.size());
  for (int step = 0; step < 6; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    const at::Tensor logits = (step % 3 == 2 ? TiedLogits(batch, vocab, seed + 100 + step)
                                             : RandomLogits(batch, vocab, seed + 100 + step))
                                  .to(device);
    std::vector<SamplingRow> rows;
    for (Sampler& s : t.batch) rows.push_back(NextRow(s));
    const BatchOutput out = RunBatch(logits, rows);
    ASSERT_EQ(out.results.size(), kinds.size());
    for (int64_t i = 0; i < batch; ++i) {
      SCOPED_TRACE(absl::StrCat("row ", i));
      const absl::StatusOr<SampleResult> want = t.reference[i].Sample(logits[i]);
      ExpectSameResult(out.results[i], want, kinds[i]);
      if (out.results[i].ok()) t.batch[i].Record(out.results[i]->token_id);
    }
  }
}

bool IsGreedyKind(const SamplingParams& p) { return IsGreedy(p); }
bool IsSampledKind(const SamplingParams& p) { return !IsGreedy(p); }
bool HasLogprobs(const SamplingParams& p) { return p.logprobs; }

// ---------------------------------------------------------------------------------------------------------
// Equality with Sampler::Sample

TEST(BatchSampler, MixedBatchMatchesSampleRowByRow) { ExpectBatchMatchesSample(RowKinds(), 1000, 1); }

TEST(BatchSampler, LargeVocabularyMatchesSample) {
  // Above 1024 candidates Sample narrows top-p's sort; the batch sorts whole rows and must decide alike.
  ExpectBatchMatchesSample(RowKinds(), 6000, 2);
}

TEST(BatchSampler, UniformBatchesMatchSample) {
  // Batches of one kind take the whole-batch branches (no row subsets), and the greedy ones the fast path.
  ExpectBatchMatchesSample(Select(RowKinds(), IsGreedyKind), 800, 3);
  ExpectBatchMatchesSample(Select(RowKinds(), IsSampledKind), 800, 4);
  ExpectBatchMatchesSample(Select(RowKinds(), HasLogprobs), 800, 5);
  SamplingParams plain;  // greedy, nothing else: one argmax
  plain.temperature = 0;
  ExpectBatchMatchesSample({plain, plain, plain}, 500, 6);
  SamplingParams top_k;  // top-k without top-p: topk instead of a sort
  top_k.top_k = 3;
  top_k.seed = 1;
  SamplingParams top_k2 = top_k;
  top_k2.top_k = 50;
  top_k2.seed = 2;
  SamplingParams no_top_k;
  no_top_k.seed = 3;
  ExpectBatchMatchesSample({top_k, top_k2, no_top_k}, 500, 7);
}

TEST(BatchSampler, SingleRowAndTinyVocabulary) {
  ExpectBatchMatchesSample({RowKinds()[14]}, 300, 8);
  // top_logprobs above the vocabulary: n is capped at the vocabulary, as in Sample.
  SamplingParams p = RowKinds()[12];
  p.top_k = 2;
  ExpectBatchMatchesSample({p, RowKinds()[1]}, 7, 9);
}

TEST(BatchSampler, AcceptsDoubleLogits) {
  const std::vector<SamplingParams> kinds = RowKinds();
  Twins t = MakeTwins(kinds, 400, 10);
  const at::Tensor logits = RandomLogits(static_cast<int64_t>(kinds.size()), 400, 11).to(at::kDouble);
  std::vector<SamplingRow> rows;
  for (Sampler& s : t.batch) rows.push_back(NextRow(s));
  const BatchOutput out = RunBatch(logits, rows);
  for (size_t i = 0; i < kinds.size(); ++i) {
    ExpectSameResult(out.results[i], t.reference[i].Sample(logits[static_cast<int64_t>(i)]), kinds[i]);
  }
}

TEST(BatchSampler, ProcessRowsEqualsProcessLogits) {
  const std::vector<SamplingParams> kinds = RowKinds();
  Twins t = MakeTwins(kinds, 3000, 12);
  for (int trial = 0; trial < 3; ++trial) {
    const at::Tensor logits = trial == 2 ? TiedLogits(static_cast<int64_t>(kinds.size()), 3000, 13)
                                         : RandomLogits(static_cast<int64_t>(kinds.size()), 3000, 13 + trial);
    std::vector<SamplingRow> rows;
    for (Sampler& s : t.batch) rows.push_back(SamplingRow{&s.params(), &s.history(), 0.5});
    auto processed = ProcessRows(logits, rows);
    ASSERT_TRUE(processed.ok()) << processed.status();
    ASSERT_EQ(processed->sizes(), logits.sizes());
    for (size_t i = 0; i < kinds.size(); ++i) {
      const at::Tensor want = ProcessLogits(logits[static_cast<int64_t>(i)], kinds[i], t.batch[i].history());
      EXPECT_TRUE(at::equal((*processed)[static_cast<int64_t>(i)], want))
          << "row " << i << " trial " << trial;
    }
  }
  // The logits themselves are never written.
  const at::Tensor logits = RandomLogits(3, 100, 14);
  const at::Tensor copy = logits.clone();
  SamplingParams plain;
  plain.temperature = 0;
  TokenHistory h;
  std::vector<SamplingRow> rows(3, SamplingRow{&plain, &h, 0});
  auto processed = ProcessRows(logits, rows);
  ASSERT_TRUE(processed.ok());
  processed->fill_(0);
  EXPECT_TRUE(at::equal(logits, copy));
}

// ---------------------------------------------------------------------------------------------------------
// Independence from the batch

// One probe row (params, history, logits row, uniform) inside batches of other random rows.
TEST(BatchSampler, RowResultIgnoresOtherRowsAndPosition) {
  constexpr int64_t kVocab = 1500;
  const std::vector<SamplingParams> kinds = RowKinds();
  Twins t = MakeTwins(kinds, kVocab, 20);
  for (size_t probe = 0; probe < kinds.size(); ++probe) {
    SCOPED_TRACE(absl::StrCat("probe kind ", probe));
    const at::Tensor probe_logits = RandomLogits(1, kVocab, 21 + probe);
    const SamplingRow probe_row{&kinds[probe], &t.batch[probe].history(), 0.37 + 0.03 * probe};
    const BatchOutput alone = RunBatch(probe_logits, {probe_row});
    ASSERT_TRUE(alone.results[0].ok()) << alone.results[0].status();
    for (int trial = 0; trial < 4; ++trial) {
      const int64_t batch = 2 + trial * 3;
      const int64_t position = (probe + trial * 5) % batch;
      at::Tensor logits = RandomLogits(batch, kVocab, 500 + 31 * probe + trial, 1.0 + trial);
      logits[position].copy_(probe_logits[0]);
      std::vector<SamplingRow> rows;
      for (int64_t i = 0; i < batch; ++i) {
        const size_t other = (probe * 7 + trial * 3 + i * 5) % kinds.size();
        rows.push_back(i == position
                           ? probe_row
                           : SamplingRow{&kinds[other], &t.batch[other].history(), 0.01 + 0.09 * i});
      }
      const BatchOutput out = RunBatch(logits, rows);
      const absl::StatusOr<SampleResult>& got = out.results[position];
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->token_id, alone.results[0]->token_id);
      EXPECT_EQ(got->logprob, alone.results[0]->logprob);  // bit for bit
      ASSERT_EQ(got->top_logprobs.size(), alone.results[0]->top_logprobs.size());
      for (size_t j = 0; j < got->top_logprobs.size(); ++j) {
        EXPECT_EQ(got->top_logprobs[j].token_id, alone.results[0]->top_logprobs[j].token_id);
        EXPECT_EQ(got->top_logprobs[j].logprob, alone.results[0]->top_logprobs[j].logprob);
      }
    }
  }
}

// A seeded request draws the same tokens whether it runs alone or among others, at any position.
TEST(BatchSampler, SeededRequestReproducesAcrossBatches) {
  constexpr int64_t kVocab = 700;
  SamplingParams p = RowKinds()[14];
  p.seed = 4242;
  const std::vector<int32_t> prompt = RandomIds(10, kVocab, 30);
  const std::vector<SamplingParams> kinds = RowKinds();
  std::vector<std::vector<int32_t>> runs;
  for (int64_t batch : {1, 3, 8}) {
    Sampler probe = MakeSampler(p, kVocab, prompt);
    std::vector<Sampler> others;
    for (int64_t i = 0; i + 1 < batch; ++i) {
      SamplingParams o = kinds[(3 * i + batch) % kinds.size()];
      o.seed.reset();  // unseeded companions: their draws differ on every run
      others.push_back(MakeSampler(o, kVocab, RandomIds(5, kVocab, 40 + i)));
    }
    std::vector<int32_t> tokens;
    for (int step = 0; step < 12; ++step) {
      const int64_t position = (step + batch) % batch;
      at::Tensor logits = RandomLogits(batch, kVocab, 900 + batch * 50 + step);  // companions' rows vary
      logits[position].copy_(RandomLogits(1, kVocab, 77 + step)[0]);             // the probe's do not
      std::vector<SamplingRow> rows;
      std::vector<Sampler*> order;
      for (int64_t i = 0, o = 0; i < batch; ++i) order.push_back(i == position ? &probe : &others[o++]);
      for (Sampler* s : order) rows.push_back(NextRow(*s));
      const BatchOutput out = RunBatch(logits, rows);
      for (int64_t i = 0; i < batch; ++i) {
        ASSERT_TRUE(out.results[i].ok()) << out.results[i].status();
        order[i]->Record(out.results[i]->token_id);
      }
      tokens.push_back(out.results[position]->token_id);
    }
    runs.push_back(tokens);
  }
  EXPECT_EQ(runs[0], runs[1]);
  EXPECT_EQ(runs[0], runs[2]);
}

// ---------------------------------------------------------------------------------------------------------
// Bad logits and bad arguments

std::string SampleError(const SamplingParams& p, const at::Tensor& row) {
  Sampler s = MakeSampler(p, row.size(0), {});
  auto r = s.Sample(row);
  EXPECT_FALSE(r.ok());
  return std::string(r.status().message());
}

TEST(BatchSampler, BadRowsFailAloneWithSampleMessages) {
  constexpr int64_t kVocab = 600;
  const std::vector<SamplingParams> kinds = RowKinds();
  SamplingParams plain;
  plain.temperature = 0;
  const std::vector<SamplingParams> plain_kinds(6, plain);
  for (const std::vector<SamplingParams>* set : {&kinds, &plain_kinds}) {  // general path, fast path
    SCOPED_TRACE(set == &kinds ? "mixed batch" : "greedy fast path");
    const int64_t batch = static_cast<int64_t>(set->size());
    Twins t = MakeTwins(*set, kVocab, 50);
    const at::Tensor good = RandomLogits(batch, kVocab, 51);
    at::Tensor bad = good.clone();
    bad[1][17] = std::numeric_limits<float>::quiet_NaN();
    bad[2][3] = kInf;
    bad[4].fill_(-kInf);
    bad[5][0] = std::numeric_limits<float>::quiet_NaN();
    bad[5][1] = -kInf;
    std::vector<SamplingRow> rows;
    for (size_t i = 0; i < set->size(); ++i) {
      rows.push_back(SamplingRow{&(*set)[i], &t.batch[i].history(), 0.25 + 0.04 * i});
    }
    const BatchOutput want = RunBatch(good, rows);
    const BatchOutput got = RunBatch(bad, rows);
    for (int64_t i = 0; i < batch; ++i) {
      SCOPED_TRACE(absl::StrCat("row ", i));
      const at::Tensor row = bad[i];
      if (i == 1 || i == 2 || i == 4 || i == 5) {
        ASSERT_FALSE(got.results[i].ok());
        EXPECT_EQ(got.results[i].status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_EQ(got.results[i].status().message(), SampleError((*set)[i], row));
        EXPECT_EQ(got.packed[i][2].item<double>(), i == 4 ? 2.0 : 1.0);
      } else {
        ExpectSameResult(got.results[i], want.results[i], (*set)[i], 0);
        EXPECT_EQ(got.packed[i][2].item<double>(), 0.0);
      }
    }
  }
}

TEST(BatchSampler, GreedyFastPathIsFirstArgmax) {
  constexpr int64_t kVocab = 64;
  const at::Tensor logits = TiedLogits(9, kVocab, 60);
  SamplingParams plain;
  plain.temperature = 0;
  TokenHistory h;
  h.AddPrompt(std::vector<int32_t>{1, 2, 3});  // no penalty on: the history does not matter
  const std::vector<SamplingRow> rows(9, SamplingRow{&plain, &h, 0});
  const BatchOutput out = RunBatch(logits, rows);
  EXPECT_EQ(out.layout.top_n, 0);
  EXPECT_EQ(out.layout.width(), 3);
  for (int64_t i = 0; i < 9; ++i) {
    const at::Tensor row = logits[i];
    const float max = row.max().item<float>();
    int64_t first = 0;
    while (row[first].item<float>() != max) ++first;
    ASSERT_TRUE(out.results[i].ok());
    EXPECT_EQ(out.results[i]->token_id, first);
    EXPECT_EQ(out.results[i]->logprob, 0);
  }
}

// All-greedy batches take the logits in their own dtype: over bf16 logits with many ties, a NaN row, an
// infinite row and a row with nothing finite, tokens and flags equal the float32 path's on the exact cast.
TEST(BatchSampler, GreedyOverBFloat16LogitsEqualsTheFloat32Path) {
  constexpr int64_t kVocab = 3000;
  at::Tensor logits = TiedLogits(12, kVocab, 62).to(at::kBFloat16);
  logits[9][17] = std::numeric_limits<float>::quiet_NaN();
  logits[10][5] = std::numeric_limits<float>::infinity();
  logits[11].fill_(-std::numeric_limits<float>::infinity());
  SamplingParams plain;
  plain.temperature = 0;
  TokenHistory h;
  const std::vector<SamplingRow> rows(12, SamplingRow{&plain, &h, 0});
  const BatchOutput native = RunBatch(logits, rows);
  const BatchOutput widened = RunBatch(logits.to(at::kFloat), rows);
  ASSERT_EQ(native.layout.width(), widened.layout.width());
  EXPECT_TRUE(at::equal(native.packed, widened.packed)) << native.packed << widened.packed;
  for (int64_t i = 0; i < 9; ++i) {
    ASSERT_TRUE(native.results[i].ok()) << i;
    const at::Tensor row = logits[i].to(at::kFloat);
    const float max = row.max().item<float>();
    int64_t first = 0;
    while (row[first].item<float>() != max) ++first;
    EXPECT_EQ(native.results[i]->token_id, first) << i;
  }
  for (int64_t i = 9; i < 12; ++i) EXPECT_FALSE(native.results[i].ok()) << i;
}

TEST(BatchSampler, LayoutWidthFollowsTheLargestTopLogprobs) {
  const at::Tensor logits = RandomLogits(3, 50, 61);
  SamplingParams a, b, c;
  a.logprobs = true;
  a.top_logprobs = 3;
  b.logprobs = true;
  b.top_logprobs = 11;
  c.temperature = 0;
  TokenHistory h;
  const BatchOutput out = RunBatch(logits, {{&a, &h, 0.1}, {&c, &h, 0}, {&b, &h, 0.9}});
  EXPECT_EQ(out.layout.rows, 3);
  EXPECT_EQ(out.layout.top_n, 11);
  EXPECT_EQ(out.layout.width(), 25);
  EXPECT_EQ(out.results[0]->top_logprobs.size(), 3u);
  EXPECT_TRUE(out.results[1]->top_logprobs.empty());
  EXPECT_EQ(out.results[2]->top_logprobs.size(), 11u);
  // Rows without top logprobs leave their columns zero.
  EXPECT_TRUE(at::equal(out.packed[1].narrow(0, 1, 24), at::zeros({24}, at::kDouble)));
}

TEST(BatchSampler, RefusesBadArguments) {
  SamplingParams ok, bad_top_p;
  bad_top_p.top_p = 0;
  TokenHistory h, bad_history;
  bad_history.AddPrompt(std::vector<int32_t>{3, 120});
  const at::Tensor logits = RandomLogits(2, 100, 70);
  BatchSampleLayout layout;
  const auto code = [&](const at::Tensor& x, std::vector<SamplingRow> rows) {
    return SampleRows(x, rows, &layout).status().code();
  };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(logits, {{&ok, &h, 0.5}}), kInvalid);     // rows != B
  EXPECT_EQ(code(logits[0], {{&ok, &h, 0.5}}), kInvalid);  // 1-D
  EXPECT_EQ(code(logits.to(at::kLong), {{&ok, &h, 0.5}, {&ok, &h, 0.5}}), kInvalid);
  EXPECT_EQ(code(logits, {{&ok, &h, 0.5}, {nullptr, &h, 0.5}}), kInvalid);
  EXPECT_EQ(code(logits, {{&ok, &h, 0.5}, {&ok, nullptr, 0.5}}), kInvalid);
  EXPECT_EQ(code(logits, {{&ok, &h, 0.5}, {&bad_top_p, &h, 0.5}}), kInvalid);
  EXPECT_EQ(code(logits, {{&ok, &h, 0.5}, {&ok, &h, 1.0}}), kInvalid);  // uniform outside [0, 1)
  EXPECT_EQ(code(logits, {{&ok, &h, 0.5}, {&ok, &h, std::nan("")}}), kInvalid);
  SamplingParams penalised;
  penalised.repetition_penalty = 1.2;
  auto r =
      SampleRows(logits, std::vector<SamplingRow>{{&ok, &h, 0.5}, {&penalised, &bad_history, 0.5}}, &layout);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("rows[1].history holds id 120"));
  auto top = SampleRows(logits, std::vector<SamplingRow>{{&ok, &h, 0.5}, {&bad_top_p, &h, 0.5}}, &layout);
  EXPECT_THAT(top.status().message(), HasSubstr("rows[1]: top_p"));

  // A layout for other rows is refused row by row.
  const std::vector<double> host(3, 0.0);
  const std::vector<SamplingRow> two = {{&ok, &h, 0.5}, {&ok, &h, 0.5}};
  const auto unpacked = UnpackSamples(host.data(), BatchSampleLayout{1, 0}, two);
  ASSERT_EQ(unpacked.size(), 2u);
  EXPECT_EQ(unpacked[0].status().code(), kInvalid);
}

// ---------------------------------------------------------------------------------------------------------
// CUDA (skips without a GPU)

std::vector<SamplingRow> RowsOf(std::vector<Sampler>& samplers) {
  std::vector<SamplingRow> rows;
  for (Sampler& s : samplers) rows.push_back(NextRow(s));
  return rows;
}

TEST(BatchSamplerCuda, MatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kVocab = 50000;
  const std::vector<SamplingParams> kinds = RowKinds();
  Twins t = MakeTwins(kinds, kVocab, 80);
  for (int step = 0; step < 5; ++step) {
    SCOPED_TRACE(absl::StrCat("step ", step));
    const at::Tensor logits = RandomLogits(static_cast<int64_t>(kinds.size()), kVocab, 81 + step);
    const std::vector<SamplingRow> rows = RowsOf(t.batch);
    const BatchOutput cpu = RunBatch(logits, rows);
    const BatchOutput gpu = RunBatch(logits.cuda(), rows);
    ASSERT_EQ(gpu.layout.width(), cpu.layout.width());
    for (size_t i = 0; i < kinds.size(); ++i) {
      SCOPED_TRACE(absl::StrCat("row ", i));
      ExpectSameResult(gpu.results[i], cpu.results[i], kinds[i]);
      if (cpu.results[i].ok()) t.batch[i].Record(cpu.results[i]->token_id);
    }
  }
}

TEST(BatchSamplerCuda, MatchesSampleOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ExpectBatchMatchesSample(RowKinds(), 32000, 90, at::Device(at::kCUDA));
}

#ifdef DELTASERVE_WITH_CUDA
// Errors on any synchronising CUDA call while alive, and turns the check off again however the test ends.
class SyncIsAnError {
 public:
  SyncIsAnError() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
  ~SyncIsAnError() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
};
#endif

TEST(BatchSamplerCuda, LaunchesWithoutHostSync) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
#ifndef DELTASERVE_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  constexpr int64_t kVocab = 248320;  // Qwen3.5's
  const std::vector<SamplingParams> kinds = RowKinds();
  Twins t = MakeTwins(kinds, kVocab, 95);
  SamplingParams plain;
  plain.temperature = 0;
  TokenHistory empty;
  const std::vector<SamplingRow> greedy_rows(4, SamplingRow{&plain, &empty, 0});
  const at::Tensor logits = RandomLogits(static_cast<int64_t>(kinds.size()), kVocab, 96).cuda();
  const at::Tensor greedy_logits = logits.narrow(0, 0, 4);
  const std::vector<SamplingRow> rows = RowsOf(t.batch);
  // Warm up outside the check: allocator pools, the pinned host allocator and lazy CUDA state.
  BatchSampleLayout layout, greedy_layout;
  ASSERT_TRUE(SampleRows(logits, rows, &layout).ok());
  ASSERT_TRUE(SampleRows(greedy_logits, greedy_rows, &greedy_layout).ok());
  c10::cuda::device_synchronize();

  absl::StatusOr<at::Tensor> packed, greedy_packed;
  try {
    SyncIsAnError guard;
    packed = SampleRows(logits, rows, &layout);
    greedy_packed = SampleRows(greedy_logits, greedy_rows, &greedy_layout);
  } catch (const c10::Error& e) {
    FAIL() << "SampleRows synchronised with the host: " << e.what_without_backtrace();
  }
  ASSERT_TRUE(packed.ok()) << packed.status();
  ASSERT_TRUE(greedy_packed.ok()) << greedy_packed.status();
  // The check itself works: a read-back under it is an error.
  bool caught = false;
  try {
    SyncIsAnError guard;
    (void)logits.sum().item<float>();
  } catch (const c10::Error&) {
    caught = true;
  }
  EXPECT_TRUE(caught) << "sync debug mode let .item() through";

  // The results are still right: the same as a CPU run of the same rows. Over 248,320 logits the two
  // devices' float32 log-sum-exp differ by about 1e-5, hence the looser logprob tolerance.
  const at::Tensor host = packed->cpu();
  const auto got = UnpackSamples(host.data_ptr<double>(), layout, rows);
  const BatchOutput cpu = RunBatch(logits.cpu(), rows);
  for (size_t i = 0; i < kinds.size(); ++i) ExpectSameResult(got[i], cpu.results[i], kinds[i], 1e-4);
  const at::Tensor greedy_host = greedy_packed->cpu();
  EXPECT_TRUE(at::equal(greedy_host.select(1, 0).to(at::kLong), greedy_logits.argmax(1).cpu()));
#endif
}

}  // namespace
}  // namespace deltaserve::runner
