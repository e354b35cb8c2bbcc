// Reading the golden fixtures tools/make_qwen35_golden.py writes: prompts, transformers' logits, and
// greedy continuations of each random Qwen3.5 checkpoint.
#ifndef DELTASERVE_TESTS_MODEL_GOLDEN_H_
#define DELTASERVE_TESTS_MODEL_GOLDEN_H_

#include <ATen/ATen.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace deltaserve::testing {

struct GoldenPrompt {
  std::vector<int32_t> ids;
  at::Tensor logits;       // [len, vocab] float32, every position
  at::Tensor bf16_logits;  // the same from transformers running the weights in bfloat16
};

struct Golden {
  std::string dir;
  std::vector<GoldenPrompt> prompts;
  std::vector<int32_t> greedy_prompt, greedy_tokens;
  at::Tensor greedy_logits;  // [20, vocab]: logits that chose each greedy token
  double min_top2_gap = 0;
};

inline at::Tensor ReadF32(const std::string& path, const std::vector<int64_t>& shape) {
  at::Tensor t = at::empty(shape, at::kFloat);
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * sizeof(float));
  if (!f) throw std::runtime_error("cannot read " + path);
  return t;
}

inline std::string GoldenRoot() {
  const char* dir = std::getenv("DELTASERVE_QWEN35_GOLDEN");
  return dir ? dir : "";
}

inline Golden ReadGolden(const std::string& name) {
  Golden g;
  g.dir = GoldenRoot() + "/" + name;
  std::ifstream f(g.dir + "/golden.json");
  if (!f)
    throw std::runtime_error("no golden fixture at " + g.dir + " (run the qwen35_golden_fixtures test)");
  nlohmann::json j = nlohmann::json::parse(f);
  for (const auto& p : j["prompts"]) {
    GoldenPrompt gp;
    gp.ids = p["ids"].get<std::vector<int32_t>>();
    gp.logits =
        ReadF32(g.dir + "/" + p["logits_file"].get<std::string>(), p["shape"].get<std::vector<int64_t>>());
    gp.bf16_logits = ReadF32(g.dir + "/" + p["bf16_logits_file"].get<std::string>(),
                             p["shape"].get<std::vector<int64_t>>());
    g.prompts.push_back(std::move(gp));
  }
  const auto& gr = j["greedy"];
  g.greedy_prompt = gr["prompt"].get<std::vector<int32_t>>();
  g.greedy_tokens = gr["tokens"].get<std::vector<int32_t>>();
  g.min_top2_gap = gr["min_top2_gap"].get<double>();
  g.greedy_logits =
      ReadF32(g.dir + "/" + gr["logits_file"].get<std::string>(), gr["shape"].get<std::vector<int64_t>>());
  return g;
}

}  // namespace deltaserve::testing

#endif  // DELTASERVE_TESTS_MODEL_GOLDEN_H_
