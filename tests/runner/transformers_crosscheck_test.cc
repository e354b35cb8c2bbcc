// Cross-check against transformers: tools/make_sampler_fixtures.py runs its logits processors on fixed
// random logits and token ids; ProcessLogits and the batched path (ProcessRows, SampleRows) must give the
// same logits (within 1e-6) and remove the same tokens. CTest runs it after the fixture
// (DELTASERVE_SAMPLER_FIXTURES names the JSON); alone it skips.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runner/batch_sampler.h"
#include "runner/sampler.h"

namespace deltaserve::runner {
namespace {

using Json = nlohmann::json;

// One fixture case: transformers' inputs and its processed logits (null for removed tokens).
struct Case {
  std::string name;
  SamplingParams params;
  std::vector<float> logits;  // float32 values, exact in the JSON
  TokenHistory history;
  Json expected;
  int64_t kept = 0;
  bool ties = false;
};

// The cases, or none (with the reason in *skip) when DELTASERVE_SAMPLER_FIXTURES is unset.
std::vector<Case> LoadCases(std::string* skip) {
  const char* path = std::getenv("DELTASERVE_SAMPLER_FIXTURES");
  if (path == nullptr || *path == '\0') {
    *skip = "DELTASERVE_SAMPLER_FIXTURES is not set";
    return {};
  }
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::stringstream text;
  text << in.rdbuf();
  const Json root = Json::parse(text.str());
  const Json& cases = root.at("cases");
  EXPECT_GE(cases.size(), 5u);
  std::cout << "fixture from transformers " << root.at("transformers_version").get<std::string>()
            << ", torch " << root.at("torch_version").get<std::string>() << "\n";
  std::vector<Case> out;
  for (const Json& c : cases) {
    Case k;
    k.name = c.at("name").get<std::string>();
    const Json& jp = c.at("params");
    k.params.temperature = jp.at("temperature").get<double>();
    k.params.top_k = jp.at("top_k").get<int64_t>();
    k.params.top_p = jp.at("top_p").get<double>();
    k.params.min_p = jp.at("min_p").get<double>();
    k.params.repetition_penalty = jp.at("repetition_penalty").get<double>();
    const std::vector<double> raw = c.at("logits").get<std::vector<double>>();
    k.logits.assign(raw.begin(), raw.end());
    EXPECT_TRUE(ValidateSamplingParams(k.params, static_cast<int64_t>(k.logits.size())).ok()) << k.name;
    k.history.AddPrompt(c.at("prompt_ids").get<std::vector<int32_t>>());
    for (int32_t t : c.at("output_ids").get<std::vector<int32_t>>()) k.history.AddOutput(t);
    k.expected = c.at("expected");
    k.kept = c.at("kept").get<int64_t>();
    k.ties = c.at("ties").get<bool>();
    out.push_back(std::move(k));
  }
  return out;
}

at::Tensor LogitsOf(const Case& c) {
  return at::tensor(at::ArrayRef<float>(c.logits), at::TensorOptions().dtype(at::kFloat));
}

// Our processed logits for `c` against transformers': the same kept tokens with the same values (1e-6),
// except that where top-p cuts through equal logits the choice among them may differ.
void ExpectMatchesTransformers(const Case& c, const at::Tensor& processed) {
  const at::Tensor out = processed.contiguous();
  ASSERT_EQ(out.scalar_type(), at::kFloat);
  const int64_t vocab = static_cast<int64_t>(c.logits.size());
  ASSERT_EQ(out.numel(), vocab);
  const float* ours = out.data_ptr<float>();
  ASSERT_EQ(static_cast<int64_t>(c.expected.size()), vocab);

  int64_t kept_ours = 0, kept_theirs = 0, mismatched_keep = 0;
  double max_diff = 0;
  float lowest_kept = std::numeric_limits<float>::infinity();
  std::vector<float> mismatched_values;
  for (int64_t i = 0; i < vocab; ++i) {
    const bool theirs_kept = !c.expected[i].is_null();
    const bool ours_kept = std::isfinite(ours[i]);
    kept_theirs += theirs_kept;
    kept_ours += ours_kept;
    if (ours_kept) lowest_kept = std::min(lowest_kept, ours[i]);
    if (theirs_kept && ours_kept) {
      EXPECT_NEAR(ours[i], c.expected[i].get<double>(), 1e-6) << "token " << i;
      max_diff = std::max(max_diff, std::abs(ours[i] - c.expected[i].get<double>()));
    } else if (theirs_kept != ours_kept) {
      ++mismatched_keep;
      mismatched_values.push_back(ours_kept ? ours[i] : static_cast<float>(c.expected[i].get<double>()));
    } else {
      EXPECT_EQ(ours[i], -std::numeric_limits<float>::infinity()) << "token " << i;
    }
  }
  EXPECT_EQ(kept_ours, kept_theirs);
  EXPECT_EQ(kept_ours, c.kept);
  std::cout << c.name << ": " << kept_ours << " of " << vocab
            << " kept, max |ours - transformers| = " << max_diff;
  if (c.ties) {
    // transformers' unstable sort picks arbitrarily among equal logits at the top-p cut, we pick the
    // lowest ids: any disagreement must be such a tie at the cut (same count, the cut's value).
    for (float v : mismatched_values) EXPECT_EQ(v, lowest_kept) << "a disagreement off the tie at the cut";
    std::cout << ", " << mismatched_keep / 2 << " tied token(s) chosen differently at the top-p cut";
  } else {
    EXPECT_EQ(mismatched_keep, 0);
  }
  std::cout << "\n";
}

TEST(TransformersCrosscheck, ProcessLogitsMatchesTheLogitsProcessors) {
  std::string skip;
  const std::vector<Case> cases = LoadCases(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ExpectMatchesTransformers(c, ProcessLogits(LogitsOf(c), c.params, c.history));
  }
}

// The batched path (batch_sampler.h) on the same fixtures: each case as a middle row between a greedy,
// penalised row and a differently filtered one, processed by ProcessRows and sampled by SampleRows.
// The sampled tokens must be the inverse-CDF tokens of transformers' own processed logits (computed
// here in double), for several uniforms at once.
TEST(TransformersCrosscheck, BatchPathMatchesTheLogitsProcessors) {
  std::string skip;
  const std::vector<Case> cases = LoadCases(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.repetition_penalty = 1.4;
  SamplingParams other;
  other.temperature = 0.5;
  other.top_p = 0.5;
  other.min_p = 0.2;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const at::Tensor row = LogitsOf(c);
    const at::Tensor logits = at::stack({row.flip(0), row, row * 0.5});
    const std::vector<SamplingRow> rows = {
        {&greedy, &c.history, 0}, {&c.params, &c.history, 0.5}, {&other, &c.history, 0.5}};
    auto processed = ProcessRows(logits, rows);
    ASSERT_TRUE(processed.ok()) << processed.status();
    ExpectMatchesTransformers(c, (*processed)[1]);

    // transformers' distribution, in double: exp(x - max) over its kept tokens.
    const int64_t vocab = static_cast<int64_t>(c.logits.size());
    double max = -std::numeric_limits<double>::infinity();
    for (const Json& v : c.expected) {
      if (!v.is_null()) max = std::max(max, v.get<double>());
    }
    std::vector<double> cdf(vocab);
    double total = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (!c.expected[i].is_null()) total += std::exp(c.expected[i].get<double>() - max);
      cdf[i] = total;
    }
    constexpr int kDraws = 8;
    std::vector<SamplingRow> draws;
    for (int d = 0; d < kDraws; ++d) draws.push_back({&c.params, &c.history, (d + 0.5) / kDraws});
    BatchSampleLayout layout;
    auto packed = SampleRows(row.unsqueeze(0).expand({kDraws, vocab}), draws, &layout);
    ASSERT_TRUE(packed.ok()) << packed.status();
    const at::Tensor host = packed->contiguous();
    const auto results = UnpackSamples(host.data_ptr<double>(), layout, draws);
    for (int d = 0; d < kDraws; ++d) {
      ASSERT_TRUE(results[d].ok()) << results[d].status();
      const int32_t token = results[d]->token_id;
      if (c.ties) {
        // Where the cut splits ties our kept set differs from theirs; the token is still one we keep.
        EXPECT_TRUE(std::isfinite((*processed)[1][token].item<float>())) << "draw " << d;
        continue;
      }
      const double target = draws[d].uniform * total;
      const int64_t want = std::upper_bound(cdf.begin(), cdf.end(), target) - cdf.begin();
      EXPECT_EQ(token, want) << "draw " << d;
    }
  }
}

}  // namespace
}  // namespace deltaserve::runner
