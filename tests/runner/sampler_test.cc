// The token sampler: greedy is argmax, seeds reproduce, the empirical distribution matches the exact
// filtered softmax (computed here in double, independently of ATen), penalties match hand arithmetic,
// logprobs are log_softmax values, and every bad parameter is refused by name.
#include "runner/sampler.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <limits>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::runner {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

at::Tensor RandomLogits(int64_t vocab, uint64_t seed, double scale = 3.0) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn({vocab}, gen, at::TensorOptions().dtype(at::kFloat)) * scale;
}

std::vector<float> ToVector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous().cpu();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

at::Tensor FromVector(const std::vector<float>& v) {
  return at::tensor(at::ArrayRef<float>(v), at::TensorOptions().dtype(at::kFloat));
}

int64_t FirstArgmax(const std::vector<float>& v) {
  return std::max_element(v.begin(), v.end()) - v.begin();  // max_element returns the first maximum
}

// log_softmax in double, written out rather than through ATen.
std::vector<double> LogSoftmax(const std::vector<double>& x) {
  const double m = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (double v : x) sum += std::exp(v - m);
  const double lse = m + std::log(sum);
  std::vector<double> out;
  for (double v : x) out.push_back(v - lse);
  return out;
}

Sampler MakeSampler(const SamplingParams& params, int64_t vocab, std::vector<int32_t> prompt = {}) {
  auto s = Sampler::Create(params, vocab, prompt);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

int32_t SampleToken(Sampler& s, const at::Tensor& logits) {
  auto r = s.Sample(logits);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->token_id : -1;
}

// ---------------------------------------------------------------------------------------------------------
// Greedy

TEST(SamplerGreedy, IsArgmaxOnRandomLogits) {
  SamplingParams p;
  p.temperature = 0;
  p.top_k = 3;  // filters must not matter for greedy
  p.top_p = 0.5;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const at::Tensor logits = RandomLogits(5000, seed);
    Sampler s = MakeSampler(p, 5000);
    EXPECT_EQ(SampleToken(s, logits), FirstArgmax(ToVector(logits))) << "seed " << seed;
  }
}

TEST(SamplerGreedy, TinyTemperatureIsGreedy) {
  SamplingParams p;
  p.temperature = 1e-7;
  const at::Tensor logits = RandomLogits(1000, 7);
  Sampler s = MakeSampler(p, 1000);
  EXPECT_TRUE(s.greedy());
  EXPECT_EQ(SampleToken(s, logits), FirstArgmax(ToVector(logits)));
}

TEST(SamplerGreedy, TiesGoToLowestId) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s = MakeSampler(p, 6);
  EXPECT_EQ(SampleToken(s, FromVector({1, 3, 2, 3, 3, -kInf})), 1);
  Sampler flat = MakeSampler(p, 6);
  EXPECT_EQ(SampleToken(flat, at::zeros({6}, at::kFloat)), 0);
}

TEST(SamplerGreedy, AcceptsAViewIntoABatchAndOtherFloatTypes) {
  SamplingParams p;
  p.temperature = 0;
  const at::Tensor batch = RandomLogits(3 * 400, 11).reshape({3, 400});
  Sampler s = MakeSampler(p, 400);
  EXPECT_EQ(SampleToken(s, batch[1]), FirstArgmax(ToVector(batch[1])));
  const at::Tensor before = batch.clone();
  EXPECT_TRUE(at::equal(batch, before)) << "the caller's logits must stay unchanged";
  Sampler half = MakeSampler(p, 400);
  const at::Tensor bf16 = batch[2].to(at::kBFloat16);
  EXPECT_EQ(SampleToken(half, bf16), FirstArgmax(ToVector(bf16)));
}

// ---------------------------------------------------------------------------------------------------------
// Seeds

std::vector<int32_t> DrawTokens(const SamplingParams& p, int64_t vocab, int steps) {
  Sampler s = MakeSampler(p, vocab);
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) out.push_back(SampleToken(s, RandomLogits(vocab, 1000 + i, 1.0)));
  return out;
}

TEST(SamplerSeed, SameSeedSameTokensDifferentSeedDifferentTokens) {
  SamplingParams p;
  p.temperature = 1.0;
  p.top_p = 0.95;
  p.seed = 42;
  const std::vector<int32_t> a = DrawTokens(p, 1000, 60);
  EXPECT_EQ(DrawTokens(p, 1000, 60), a);
  p.seed = 43;
  EXPECT_NE(DrawTokens(p, 1000, 60), a);
}

TEST(SamplerSeed, ReportsTheSeedAndDrawsAFreshOneWithoutIt) {
  SamplingParams p;
  p.seed = 1234;
  EXPECT_EQ(MakeSampler(p, 10).seed(), 1234u);
  p.seed.reset();
  Sampler a = MakeSampler(p, 1000);
  Sampler b = MakeSampler(p, 1000);
  EXPECT_NE(a.seed(), b.seed());
  // The reported seed replays the request.
  SamplingParams replay = p;
  replay.seed = a.seed();
  Sampler c = MakeSampler(replay, 1000);
  for (int i = 0; i < 20; ++i) {
    const at::Tensor logits = RandomLogits(1000, 50 + i, 1.0);
    EXPECT_EQ(SampleToken(a, logits), SampleToken(c, logits));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Distribution: 20000 draws against the exact filtered softmax.

struct Filters {
  const char* name;
  int64_t top_k;
  double top_p;
  double min_p;
};

// transformers' filters restated on doubles: sort descending; top-k keeps the k largest; top-p keeps a
// token while the mass strictly above it is below top_p; min-p keeps p >= min_p * max p.
std::vector<double> ExpectedDistribution(const std::vector<float>& logits, double temperature,
                                         const Filters& f) {
  const size_t n = logits.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  std::vector<bool> keep(n, true);
  const auto softmax_kept = [&] {
    std::vector<double> p(n, 0.0);
    double m = -1e300, sum = 0;
    for (size_t i = 0; i < n; ++i) {
      if (keep[i]) m = std::max(m, logits[i] / temperature);
    }
    for (size_t i = 0; i < n; ++i) {
      if (keep[i]) sum += p[i] = std::exp(logits[i] / temperature - m);
    }
    for (double& v : p) v /= sum;
    return p;
  };
  if (f.top_k > 0) {
    for (size_t r = f.top_k; r < n; ++r) keep[order[r]] = false;
  }
  if (f.top_p < 1) {
    const std::vector<double> p = softmax_kept();
    double above = 0;
    for (size_t r = 0; r < n; ++r) {
      if (!keep[order[r]]) continue;
      if (r > 0 && above >= f.top_p) keep[order[r]] = false;
      above += p[order[r]];
    }
  }
  if (f.min_p > 0) {
    const std::vector<double> p = softmax_kept();
    const double pmax = *std::max_element(p.begin(), p.end());
    for (size_t i = 0; i < n; ++i) {
      if (p[i] < f.min_p * pmax) keep[i] = false;
    }
  }
  return softmax_kept();
}

void PrintTo(const Filters& f, std::ostream* os) { *os << f.name; }

class SamplerDistribution : public ::testing::TestWithParam<Filters> {};

TEST_P(SamplerDistribution, MatchesTheExactFilteredSoftmax) {
  const Filters f = GetParam();
  // No two logits are close, so no filter threshold sits near a token (see the kept counts below).
  const std::vector<float> logits = {1.2f, 2.0f,  0.3f, 1.7f, -0.4f, 1.5f,
                                     0.9f, -1.0f, 1.9f, 0.1f, -2.0f, 1.0f};
  const int64_t vocab = static_cast<int64_t>(logits.size());
  constexpr double kTemperature = 0.7;
  const std::vector<double> expected = ExpectedDistribution(logits, kTemperature, f);
  const int64_t kept = std::count_if(expected.begin(), expected.end(), [](double p) { return p > 0; });
  EXPECT_GE(kept, 3) << "the filters should leave a real choice";
  if (f.top_k > 0 || f.top_p < 1 || f.min_p > 0) {
    EXPECT_LT(kept, vocab) << "the filters should cut";
  }

  SamplingParams p;
  p.temperature = kTemperature;
  p.top_k = f.top_k;
  p.top_p = f.top_p;
  p.min_p = f.min_p;
  p.seed = 2024;
  Sampler s = MakeSampler(p, vocab);
  const at::Tensor t = FromVector(logits);
  constexpr int kDraws = 20000;
  std::vector<int> counts(vocab, 0);
  for (int i = 0; i < kDraws; ++i) {
    const int32_t tok = SampleToken(s, t);
    ASSERT_GE(tok, 0);
    ASSERT_LT(tok, vocab);
    ++counts[tok];
  }
  double max_diff = 0, chi2 = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double freq = static_cast<double>(counts[i]) / kDraws;
    max_diff = std::max(max_diff, std::abs(freq - expected[i]));
    if (expected[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " was filtered out but sampled";
    } else {
      chi2 += std::pow(counts[i] - kDraws * expected[i], 2) / (kDraws * expected[i]);
    }
  }
  std::cout << GetParam().name << ": " << kept << " of " << vocab
            << " tokens kept, max |freq - p| = " << max_diff << ", chi-square = " << chi2 << "\n";
  EXPECT_LT(max_diff, 0.02);
  // At most 11 degrees of freedom; their 99.99% chi-square quantile is about 35.
  EXPECT_LT(chi2, 40.0);
}

INSTANTIATE_TEST_SUITE_P(Filters, SamplerDistribution,
                         ::testing::Values(Filters{"none", 0, 1.0, 0.0}, Filters{"top_k", 5, 1.0, 0.0},
                                           Filters{"top_p", 0, 0.8, 0.0}, Filters{"min_p", 0, 1.0, 0.1},
                                           Filters{"all", 5, 0.8, 0.1}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(SamplerFilters, ProcessLogitsKeepsExactlyTheExpectedTokens) {
  const std::vector<float> logits = {1.2f, 2.0f,  0.3f, 1.7f, -0.4f, 1.5f,
                                     0.9f, -1.0f, 1.9f, 0.1f, -2.0f, 1.0f};
  SamplingParams p;
  p.temperature = 0.7;
  p.top_k = 5;
  p.top_p = 0.8;
  p.min_p = 0.1;
  const std::vector<float> out = ToVector(ProcessLogits(FromVector(logits), p, TokenHistory()));
  // Ranked 2.0 (1), 1.9 (8), 1.7 (3), 1.5 (5), 1.2 (0): top-k 5 keeps those; at temperature 0.7 their
  // probabilities are .301 .261 .196 .147 .096, so top-p 0.8 drops id 0 (.905 lies above it).
  for (size_t i = 0; i < logits.size(); ++i) {
    const bool kept = i == 1 || i == 8 || i == 3 || i == 5;
    if (kept) {
      EXPECT_FLOAT_EQ(out[i], logits[i] / 0.7f) << i;
    } else {
      EXPECT_EQ(out[i], -kInf) << i;
    }
  }
}

TEST(SamplerFilters, TopKKeepsEveryTieAtTheThresholdAndTopPCutsTiesByLowestId) {
  SamplingParams k;
  k.top_k = 2;
  const std::vector<float> tk = ToVector(ProcessLogits(FromVector({0, 3, 1, 1, 1, 2}), k, TokenHistory()));
  EXPECT_EQ(tk, (std::vector<float>{-kInf, 3, -kInf, -kInf, -kInf, 2}));
  k.top_k = 3;
  const std::vector<float> tk3 = ToVector(ProcessLogits(FromVector({0, 3, 1, 1, 1, 2}), k, TokenHistory()));
  EXPECT_EQ(tk3, (std::vector<float>{-kInf, 3, 1, 1, 1, 2}));  // transformers: ties at the k-th all stay
  // Four equal tokens of probability ~1/4: top-p 0.45 needs two of them and keeps the lower ids.
  SamplingParams tp;
  tp.top_p = 0.45;
  const std::vector<float> out = ToVector(ProcessLogits(FromVector({-5, 1, 1, 1, 1}), tp, TokenHistory()));
  EXPECT_EQ(out, (std::vector<float>{-kInf, 1, 1, -kInf, -kInf}));
}

// ---------------------------------------------------------------------------------------------------------
// Penalties, against arithmetic done by hand.

TEST(SamplerPenalties, MatchTheHandComputation) {
  //                        0     1     2     3    4    5
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f, -3.0f, 1.0f, 0.0f};
  TokenHistory h;
  h.AddPrompt(std::vector<int32_t>{0, 1, 0, 5});
  for (int32_t t : {2, 2, 1, 2}) h.AddOutput(t);
  SamplingParams p;
  p.repetition_penalty = 2.0;
  p.presence_penalty = 0.5;
  p.frequency_penalty = 0.25;
  // Repetition over prompt + output {0, 1, 2, 5}, once each: positive / 2, negative * 2, zero stays 0.
  // Presence and frequency over the output only: id 1 once, id 2 three times.
  const std::vector<float> expected = {
      2.0f / 2,                      // prompt only
      -1.0f * 2 - 0.25f * 1 - 0.5f,  // -2.75
      0.5f / 2 - 0.25f * 3 - 0.5f,   // -1.0
      -3.0f,                         // unseen
      1.0f,                          // unseen
      0.0f,                          // seen, zero
  };
  const std::vector<float> out = ToVector(ProcessLogits(FromVector(logits), p, h));
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(out[i], expected[i], 1e-6) << i;

  // Temperature divides after the penalties.
  p.temperature = 0.5;
  const std::vector<float> hot = ToVector(ProcessLogits(FromVector(logits), p, h));
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(hot[i], expected[i] / 0.5f, 1e-6) << i;

  // A repetition penalty below 1 rewards; negative presence/frequency penalties reward too.
  SamplingParams reward;
  reward.repetition_penalty = 0.5;
  reward.presence_penalty = -1.0;
  reward.frequency_penalty = -0.5;
  const std::vector<float> r = ToVector(ProcessLogits(FromVector(logits), reward, h));
  EXPECT_NEAR(r[0], 4.0f, 1e-6);
  EXPECT_NEAR(r[1], -0.5f + 0.5f + 1.0f, 1e-6);
  EXPECT_NEAR(r[2], 1.0f + 1.5f + 1.0f, 1e-6);
  EXPECT_NEAR(r[3], -3.0f, 1e-6);
}

TEST(SamplerPenalties, GreedyGetsPenaltiesButNoFilters) {
  SamplingParams p;
  p.temperature = 0;
  p.top_k = 1;
  p.repetition_penalty = 4.0;
  TokenHistory h;
  h.AddPrompt(std::vector<int32_t>{0});
  const std::vector<float> out = ToVector(ProcessLogits(FromVector({2.0f, 1.0f, -1.0f}), p, h));
  EXPECT_EQ(out, (std::vector<float>{0.5f, 1.0f, -1.0f}));
}

TEST(SamplerPenalties, SampleRecordsItsTokens) {
  SamplingParams p;
  p.temperature = 0;
  p.frequency_penalty = 2.0;
  Sampler s = MakeSampler(p, 3, {2});
  const at::Tensor logits = FromVector({1.0f, 0.5f, 0.0f});
  // 1.0 wins, then pays 2 per use: 1.0 -> -1.0 lets 0.5 win, then 0.0 (prompt tokens pay no frequency).
  EXPECT_EQ(SampleToken(s, logits), 0);
  EXPECT_EQ(SampleToken(s, logits), 1);
  EXPECT_EQ(SampleToken(s, logits), 2);
  EXPECT_EQ(s.history().num_output_tokens(), 3);
  EXPECT_EQ(s.history().output_ids(), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(s.history().output_counts(), (std::vector<float>{1, 1, 1}));
  EXPECT_EQ(s.history().seen_ids(), (std::vector<int64_t>{2, 0, 1}));
}

// ---------------------------------------------------------------------------------------------------------
// Logprobs

TEST(SamplerLogprobs, RawModeIsLogSoftmaxOfTheModelLogits) {
  const at::Tensor logits = RandomLogits(50, 3);
  const std::vector<float> lv = ToVector(logits);
  const std::vector<double> expected = LogSoftmax(std::vector<double>(lv.begin(), lv.end()));
  SamplingParams p;
  p.temperature = 0.5;
  p.top_k = 3;
  p.repetition_penalty = 1.8;
  p.logprobs = true;
  p.top_logprobs = 5;
  p.seed = 9;
  Sampler s = MakeSampler(p, 50, {0, 1, 2, 3, 4});
  for (int step = 0; step < 5; ++step) {
    auto r = s.Sample(logits);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NEAR(r->logprob, expected[r->token_id], 1e-5);
    ASSERT_EQ(r->top_logprobs.size(), 5u);
    std::vector<int> order(50);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return expected[a] > expected[b]; });
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(r->top_logprobs[i].token_id, order[i]) << i;
      EXPECT_NEAR(r->top_logprobs[i].logprob, expected[order[i]], 1e-5) << i;
    }
  }
}

TEST(SamplerLogprobs, ProcessedModeIsAfterPenaltiesAndTemperatureBeforeFilters) {
  const std::vector<float> logits = {2.0f, 1.0f, -0.5f, 0.3f, 1.5f};
  SamplingParams p;
  p.temperature = 0.5;
  p.top_k = 1;  // only id 0 can be drawn, yet the others keep finite logprobs
  p.repetition_penalty = 2.0;
  p.logprobs = true;
  p.top_logprobs = 5;
  p.logprobs_mode = LogprobsMode::kProcessed;
  Sampler s = MakeSampler(p, 5, {4, 2});
  // Penalised: 4 -> 0.75, 2 -> -1.0; then / 0.5.
  const std::vector<double> processed = {4.0, 2.0, -2.0, 0.6, 1.5};
  const std::vector<double> expected = LogSoftmax(processed);
  auto r = s.Sample(FromVector(logits));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->token_id, 0);
  EXPECT_NEAR(r->logprob, expected[0], 1e-5);
  const std::vector<int> order = {0, 1, 4, 3, 2};
  ASSERT_EQ(r->top_logprobs.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(r->top_logprobs[i].token_id, order[i]);
    EXPECT_NEAR(r->top_logprobs[i].logprob, expected[order[i]], 1e-5);
  }
}

TEST(SamplerLogprobs, GreedyProcessedIsAfterPenaltiesOnly) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0;
  p.logprobs_mode = LogprobsMode::kProcessed;
  Sampler s = MakeSampler(p, 3, {0});
  auto r = s.Sample(FromVector({2.0f, 1.5f, 0.0f}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->token_id, 1);
  EXPECT_NEAR(r->logprob, LogSoftmax({1.0, 1.5, 0.0})[1], 1e-6);
  EXPECT_TRUE(r->top_logprobs.empty()) << "logprobs is off";
}

TEST(SamplerLogprobs, TopLogprobsOrderTiesByLowerId) {
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = true;
  p.top_logprobs = 3;
  Sampler s = MakeSampler(p, 6);
  auto r = s.Sample(FromVector({0, 1, 1, 0, 1, 1}));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->top_logprobs.size(), 3u);
  EXPECT_EQ(r->top_logprobs[0].token_id, 1);
  EXPECT_EQ(r->top_logprobs[1].token_id, 2);
  EXPECT_EQ(r->top_logprobs[2].token_id, 4);
}

// ---------------------------------------------------------------------------------------------------------
// Validation

struct BadParam {
  std::string name;
  std::function<void(SamplingParams&)> set;
  std::string field;
};

constexpr int64_t kVocab = 100;

std::vector<BadParam> BadParams() {
  const double nan = std::nan("");
  return {
      {"temperature_negative", [](SamplingParams& p) { p.temperature = -0.1; }, "temperature"},
      {"temperature_huge", [](SamplingParams& p) { p.temperature = 100.5; }, "temperature"},
      {"temperature_nan", [nan](SamplingParams& p) { p.temperature = nan; }, "temperature"},
      {"top_k_negative", [](SamplingParams& p) { p.top_k = -1; }, "top_k"},
      {"top_k_above_vocab", [](SamplingParams& p) { p.top_k = kVocab + 1; }, "top_k"},
      {"top_p_zero", [](SamplingParams& p) { p.top_p = 0; }, "top_p"},
      {"top_p_above_one", [](SamplingParams& p) { p.top_p = 1.01; }, "top_p"},
      {"top_p_nan", [nan](SamplingParams& p) { p.top_p = nan; }, "top_p"},
      {"min_p_negative", [](SamplingParams& p) { p.min_p = -0.01; }, "min_p"},
      {"min_p_above_one", [](SamplingParams& p) { p.min_p = 1.5; }, "min_p"},
      {"min_p_nan", [nan](SamplingParams& p) { p.min_p = nan; }, "min_p"},
      {"repetition_zero", [](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty"},
      {"repetition_negative", [](SamplingParams& p) { p.repetition_penalty = -1.2; }, "repetition_penalty"},
      {"repetition_inf", [](SamplingParams& p) { p.repetition_penalty = INFINITY; }, "repetition_penalty"},
      {"repetition_nan", [nan](SamplingParams& p) { p.repetition_penalty = nan; }, "repetition_penalty"},
      {"presence_low", [](SamplingParams& p) { p.presence_penalty = -2.01; }, "presence_penalty"},
      {"presence_high", [](SamplingParams& p) { p.presence_penalty = 2.5; }, "presence_penalty"},
      {"presence_nan", [nan](SamplingParams& p) { p.presence_penalty = nan; }, "presence_penalty"},
      {"frequency_low", [](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty"},
      {"frequency_high", [](SamplingParams& p) { p.frequency_penalty = 2.01; }, "frequency_penalty"},
      {"top_logprobs_negative",
       [](SamplingParams& p) {
         p.logprobs = true;
         p.top_logprobs = -1;
       },
       "top_logprobs"},
      {"top_logprobs_above_20",
       [](SamplingParams& p) {
         p.logprobs = true;
         p.top_logprobs = 21;
       },
       "top_logprobs"},
      {"top_logprobs_without_logprobs", [](SamplingParams& p) { p.top_logprobs = 2; }, "top_logprobs"},
      {"max_new_tokens_zero", [](SamplingParams& p) { p.max_new_tokens = 0; }, "max_new_tokens"},
      {"max_new_tokens_negative", [](SamplingParams& p) { p.max_new_tokens = -5; }, "max_new_tokens"},
      {"stop_token_at_vocab",
       [](SamplingParams& p) {
         p.stop_token_ids = {3, kVocab};
       },
       "stop_token_ids[1]"},
      {"stop_token_negative", [](SamplingParams& p) { p.stop_token_ids = {-1}; }, "stop_token_ids[0]"},
      {"eos_token_at_vocab", [](SamplingParams& p) { p.eos_token_ids = {kVocab + 7}; }, "eos_token_ids[0]"},
  };
}

void PrintTo(const BadParam& b, std::ostream* os) { *os << b.name; }

class SamplerValidation : public ::testing::TestWithParam<BadParam> {};

TEST_P(SamplerValidation, RefusesNamingTheField) {
  SamplingParams p;
  GetParam().set(p);
  const absl::Status s = ValidateSamplingParams(p, kVocab);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr(GetParam().field));
  EXPECT_THAT(s.message(), HasSubstr(" must be in ")) << "the message gives the allowed range: " << s;
  auto sampler = Sampler::Create(p, kVocab);
  EXPECT_EQ(sampler.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sampler.status().message(), HasSubstr(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(Each, SamplerValidation, ::testing::ValuesIn(BadParams()),
                         [](const auto& info) { return info.param.name; });

TEST(SamplerValidation, AcceptsTheEdgesOfEveryRange) {
  SamplingParams p;
  EXPECT_TRUE(ValidateSamplingParams(p, kVocab).ok());
  for (double t : {0.0, 100.0}) {
    p.temperature = t;
    EXPECT_TRUE(ValidateSamplingParams(p, kVocab).ok()) << t;
  }
  p.top_k = kVocab;
  p.top_p = 1.0;
  p.min_p = 1.0;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.repetition_penalty = 1e-3;
  p.logprobs = true;
  p.top_logprobs = 20;
  p.max_new_tokens = 1;
  p.stop_token_ids = {0, kVocab - 1};
  EXPECT_TRUE(ValidateSamplingParams(p, kVocab).ok()) << ValidateSamplingParams(p, kVocab);
  EXPECT_THAT(ValidateSamplingParams(SamplingParams(), 0).message(), HasSubstr("vocab_size"));
}

TEST(SamplerValidation, RefusesPromptIdsOutOfRange) {
  auto s = Sampler::Create(SamplingParams(), kVocab, std::vector<int32_t>{1, kVocab});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr("prompt_tokens[1]"));
}

TEST(SamplerValidation, RefusesBadLogitsAndKeepsTheHistory) {
  SamplingParams p;
  p.seed = 1;
  Sampler s = MakeSampler(p, 4);
  const auto expect_refused = [&](const at::Tensor& logits, const std::string& text) {
    auto r = s.Sample(logits);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(r.status().message(), HasSubstr(text));
  };
  expect_refused(at::zeros({5}, at::kFloat), "[vocab_size = 4]");
  expect_refused(at::zeros({1, 4}, at::kFloat), "[1, 4]");
  expect_refused(at::Tensor(), "undefined");
  expect_refused(at::zeros({4}, at::kLong), "floating point");
  expect_refused(FromVector({0, NAN, 1, 2}), "NaN");
  expect_refused(FromVector({0, kInf, 1, 2}), "+inf");
  expect_refused(FromVector({-kInf, -kInf, -kInf, -kInf}), "no finite value");
  EXPECT_EQ(s.history().num_output_tokens(), 0);
  // Masked tokens (-inf) are fine and never drawn.
  for (int i = 0; i < 50; ++i) EXPECT_EQ(SampleToken(s, FromVector({-kInf, 0, -kInf, -kInf})), 1);
}

// ---------------------------------------------------------------------------------------------------------
// Stop tokens and the batch helper

TEST(SamplerStop, EosStopsUnlessIgnoredStopIdsAlwaysStop) {
  SamplingParams p;
  p.stop_token_ids = {7};
  p.eos_token_ids = {2, 3};
  EXPECT_TRUE(IsStopToken(p, 7));
  EXPECT_TRUE(IsStopToken(p, 3));
  EXPECT_FALSE(IsStopToken(p, 4));
  p.ignore_eos = true;
  EXPECT_FALSE(IsStopToken(p, 3));
  EXPECT_TRUE(IsStopToken(p, 7));
}

TEST(SamplerBatch, SamplesEachRowWithItsSampler) {
  const at::Tensor logits = RandomLogits(3 * 200, 5).reshape({3, 200});
  SamplingParams greedy;
  greedy.temperature = 0;
  SamplingParams seeded;
  seeded.seed = 77;
  Sampler a = MakeSampler(greedy, 200);
  Sampler b = MakeSampler(seeded, 200);
  Sampler c = MakeSampler(greedy, 200);
  std::vector<Sampler*> samplers = {&a, &b, &c};
  auto r = SampleBatch(logits, samplers);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].token_id, FirstArgmax(ToVector(logits[0])));
  EXPECT_EQ((*r)[2].token_id, FirstArgmax(ToVector(logits[2])));
  Sampler b2 = MakeSampler(seeded, 200);
  EXPECT_EQ((*r)[1].token_id, SampleToken(b2, logits[1]));
  std::vector<Sampler*> two = {&a, &b};
  EXPECT_EQ(SampleBatch(logits, two).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------------------
// CUDA (skips without a GPU): the same seed draws the same tokens from the same logits on either device.

std::vector<SamplingParams> DeviceCases() {
  std::vector<SamplingParams> cases;
  SamplingParams all;
  all.temperature = 0.8;
  all.top_k = 40;
  all.top_p = 0.9;
  all.min_p = 0.02;
  all.repetition_penalty = 1.2;
  all.presence_penalty = 0.3;
  all.frequency_penalty = 0.1;
  all.logprobs = true;
  all.top_logprobs = 4;
  cases.push_back(all);
  SamplingParams top_p;  // large vocabulary without top-k: top-p narrows before sorting
  top_p.temperature = 0.7;
  top_p.top_p = 0.9;
  cases.push_back(top_p);
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.repetition_penalty = 1.5;
  greedy.logprobs = true;
  greedy.top_logprobs = 20;
  greedy.logprobs_mode = LogprobsMode::kProcessed;
  cases.push_back(greedy);
  return cases;
}

TEST(SamplerCuda, SeededSamplingMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kVocab = 50000;
  int case_index = 0;
  for (SamplingParams p : DeviceCases()) {
    SCOPED_TRACE(case_index++);
    p.seed = 5;
    Sampler cpu = MakeSampler(p, kVocab, {1, 2, 3});
    Sampler gpu = MakeSampler(p, kVocab, {1, 2, 3});
    for (int i = 0; i < 30; ++i) {
      const at::Tensor logits = RandomLogits(kVocab, 300 + i, 3.0);
      auto a = cpu.Sample(logits);
      auto b = gpu.Sample(logits.cuda());
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ(a->token_id, b->token_id) << i;
      EXPECT_NEAR(a->logprob, b->logprob, 1e-4);
      ASSERT_EQ(a->top_logprobs.size(), b->top_logprobs.size());
      for (size_t j = 0; j < a->top_logprobs.size(); ++j) {
        EXPECT_EQ(a->top_logprobs[j].token_id, b->top_logprobs[j].token_id);
        EXPECT_NEAR(a->top_logprobs[j].logprob, b->top_logprobs[j].logprob, 1e-4);
      }
    }
  }
}

TEST(SamplerCuda, ProcessLogitsMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kVocab = 50000;
  TokenHistory h;
  h.AddPrompt(std::vector<int32_t>{5, 6, 7, 8});
  for (int32_t t : {9, 9, 10}) h.AddOutput(t);
  for (const SamplingParams& p : DeviceCases()) {
    const at::Tensor logits = RandomLogits(kVocab, 77, 3.0);
    const at::Tensor cpu = ProcessLogits(logits, p, h);
    const at::Tensor gpu = ProcessLogits(logits.cuda(), p, h);
    ASSERT_TRUE(gpu.is_cuda());
    EXPECT_TRUE(at::equal(cpu.isfinite(), gpu.cpu().isfinite()));
    EXPECT_TRUE(at::allclose(cpu, gpu.cpu(), /*rtol=*/1e-6, /*atol=*/1e-6, /*equal_nan=*/false));
  }
}

}  // namespace
}  // namespace deltaserve::runner
