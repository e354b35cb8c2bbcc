// Cross-check against transformers: tools/make_sampler_fixtures.py runs its logits processors on fixed
// random logits and token ids; ProcessLogits must give the same logits (within 1e-6) and remove the same
// tokens. CTest runs it after the fixture (DELTASERVE_SAMPLER_FIXTURES names the JSON); alone it skips.
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

#include "engine/sampler.h"
#include "gtest/gtest.h"

namespace deltaserve::engine {
namespace {

using Json = nlohmann::json;

TEST(TransformersCrosscheck, ProcessLogitsMatchesTheLogitsProcessors) {
  const char* path = std::getenv("DELTASERVE_SAMPLER_FIXTURES");
  if (path == nullptr || *path == '\0') GTEST_SKIP() << "DELTASERVE_SAMPLER_FIXTURES is not set";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path;
  std::stringstream text;
  text << in.rdbuf();
  const Json root = Json::parse(text.str());
  const Json& cases = root.at("cases");
  ASSERT_GE(cases.size(), 5u);
  std::cout << "fixture from transformers " << root.at("transformers_version").get<std::string>()
            << ", torch " << root.at("torch_version").get<std::string>() << "\n";

  for (const Json& c : cases) {
    const std::string name = c.at("name").get<std::string>();
    SCOPED_TRACE(name);
    const Json& jp = c.at("params");
    SamplingParams p;
    p.temperature = jp.at("temperature").get<double>();
    p.top_k = jp.at("top_k").get<int64_t>();
    p.top_p = jp.at("top_p").get<double>();
    p.min_p = jp.at("min_p").get<double>();
    p.repetition_penalty = jp.at("repetition_penalty").get<double>();

    const std::vector<double> raw = c.at("logits").get<std::vector<double>>();
    std::vector<float> logits(raw.begin(), raw.end());  // float32 values, exact in the JSON
    const int64_t vocab = static_cast<int64_t>(logits.size());
    ASSERT_TRUE(ValidateSamplingParams(p, vocab).ok());
    TokenHistory history;
    history.AddPrompt(c.at("prompt_ids").get<std::vector<int32_t>>());
    for (int32_t t : c.at("output_ids").get<std::vector<int32_t>>()) history.AddOutput(t);

    const at::Tensor out =
        ProcessLogits(at::tensor(at::ArrayRef<float>(logits), at::TensorOptions().dtype(at::kFloat)), p,
                      history)
            .contiguous();
    ASSERT_EQ(out.scalar_type(), at::kFloat);
    ASSERT_EQ(out.numel(), vocab);
    const float* ours = out.data_ptr<float>();
    const Json& expected = c.at("expected");
    ASSERT_EQ(static_cast<int64_t>(expected.size()), vocab);

    int64_t kept_ours = 0, kept_theirs = 0, mismatched_keep = 0;
    double max_diff = 0;
    float lowest_kept = std::numeric_limits<float>::infinity();
    std::vector<float> mismatched_values;
    for (int64_t i = 0; i < vocab; ++i) {
      const bool theirs_kept = !expected[i].is_null();
      const bool ours_kept = std::isfinite(ours[i]);
      kept_theirs += theirs_kept;
      kept_ours += ours_kept;
      if (ours_kept) lowest_kept = std::min(lowest_kept, ours[i]);
      if (theirs_kept && ours_kept) {
        EXPECT_NEAR(ours[i], expected[i].get<double>(), 1e-6) << "token " << i;
        max_diff = std::max(max_diff, std::abs(ours[i] - expected[i].get<double>()));
      } else if (theirs_kept != ours_kept) {
        ++mismatched_keep;
        mismatched_values.push_back(ours_kept ? ours[i] : static_cast<float>(expected[i].get<double>()));
      } else {
        EXPECT_EQ(ours[i], -std::numeric_limits<float>::infinity()) << "token " << i;
      }
    }
    EXPECT_EQ(kept_ours, kept_theirs);
    EXPECT_EQ(kept_ours, c.at("kept").get<int64_t>());
    std::cout << name << ": " << kept_ours << " of " << vocab
              << " kept, max |ours - transformers| = " << max_diff;
    if (c.at("ties").get<bool>()) {
      // transformers' unstable sort picks arbitrarily among equal logits at the top-p cut, we pick the
      // lowest ids: any disagreement must be such a tie at the cut (same count, the cut's value).
      for (float v : mismatched_values) EXPECT_EQ(v, lowest_kept) << "a disagreement off the tie at the cut";
      std::cout << ", " << mismatched_keep / 2 << " tied token(s) chosen differently at the top-p cut";
    } else {
      EXPECT_EQ(mismatched_keep, 0);
    }
    std::cout << "\n";
  }
}

}  // namespace
}  // namespace deltaserve::engine
