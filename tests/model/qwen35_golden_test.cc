// The C++ Qwen3.5 model against transformers on the same random checkpoints: logits at every position
// of prompts around the chunk boundary, packed batches, and greedy decoding through the decode kernels,
// for every triangular-inverse method and for the quantized decode state.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <tuple>

#include "golden.h"
#include "models/qwen35/model.h"
#include "models/qwen35/weights.h"
#include "models/safetensors.h"
#include "runner/model_runner.h"

namespace deltaserve::models::qwen35 {
namespace {

using deltaserve::testing::Golden;
using deltaserve::testing::ReadGolden;

// max |x - ref| / max(1, max |ref|).
double RelErr(const at::Tensor& x, const at::Tensor& ref) {
  return (x - ref).abs().max().item<double>() / std::max(1.0, ref.abs().max().item<double>());
}

// The tolerances, and why: transformers and this model do the same float32 arithmetic in a different
// order (chunked vs. token recurrence inside the delta rule, fused vs. separate matmuls), so the logits
// agree to float32 rounding grown through the layers, ~1e-6 relative; 1e-4 leaves room for that and is
// far below the smallest greedy top-2 gap the fixtures record. The INT16 inverse carries its own
// quantization error (docs/kernels.md: ~1e-5 per chunk inverse), which the layers amplify.
double Tolerance(const std::string& method) { return method == "neumann-int16" ? 2e-2 : 1e-4; }

std::unique_ptr<runner::ModelRunner> LoadModel(const std::string& dir, const std::string& method,
                                       kernels::StateDtype state = kernels::StateDtype::kFloat32,
                                       at::ScalarType dtype = at::kFloat, c10::Device device = c10::kCPU,
                                       kernels::WeightDtype weights = kernels::WeightDtype::kSame) {
  ModelOptions o;
  o.weight_dtype = weights;
  o.dtype = dtype;
  o.device = device;
  o.inverse_method = method;
  o.state_dtype = state;
  runner::RunnerOptions ro;
  ro.max_seqs = 6;
  ro.max_model_len = 512;
  absl::StatusOr<std::unique_ptr<runner::ModelRunner>> m = runner::ModelRunner::Load(dir, o, ro);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

class Qwen35Golden : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(Qwen35Golden, LogitsMatchTransformersAtEveryPosition) {
  const auto& [name, method] = GetParam();
  Golden g = ReadGolden(name);
  std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, method);
  ASSERT_NE(m, nullptr);
  for (const auto& p : g.prompts) {
    ASSERT_TRUE(m->ResetSlot(0).ok());
    absl::StatusOr<at::Tensor> logits = m->Forward({p.ids}, {0}, /*all_positions=*/true);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const double err = RelErr(*logits, p.logits);
    std::printf("%-12s %-16s len %4zu  rel err %.2e\n", name.c_str(), method.c_str(), p.ids.size(), err);
    EXPECT_LT(err, Tolerance(method)) << "prompt length " << p.ids.size();
  }
}

TEST_P(Qwen35Golden, PackedBatchEqualsTransformers) {
  const auto& [name, method] = GetParam();
  Golden g = ReadGolden(name);
  std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, method);
  ASSERT_NE(m, nullptr);
  std::vector<std::vector<int32_t>> batch;
  std::vector<int64_t> slots;
  for (size_t i = 0; i < g.prompts.size(); ++i) {
    batch.push_back(g.prompts[i].ids);
    slots.push_back(static_cast<int64_t>(g.prompts.size() - 1 - i));  // slots out of order on purpose
  }
  absl::StatusOr<at::Tensor> logits = m->Forward(batch, slots);
  ASSERT_TRUE(logits.ok()) << logits.status();
  for (size_t i = 0; i < g.prompts.size(); ++i) {
    EXPECT_LT(RelErr((*logits)[i], g.prompts[i].logits[-1]), Tolerance(method)) << "sequence " << i;
    EXPECT_EQ(m->SequenceLength(slots[i]), static_cast<int64_t>(g.prompts[i].ids.size()));
  }
}

// Prefill the prompt, then feed back the argmax one token at a time: the decode kernels' path.
std::vector<int32_t> Greedy(runner::ModelRunner& m, const Golden& g, int64_t slot, std::vector<double>* errs) {
  std::vector<int32_t> out;
  absl::StatusOr<at::Tensor> logits = m.Forward({g.greedy_prompt}, {slot});
  for (size_t step = 0; step < g.greedy_tokens.size() && logits.ok(); ++step) {
    if (errs) errs->push_back(RelErr((*logits)[0].cpu(), g.greedy_logits[step]));
    const int32_t next = static_cast<int32_t>((*logits)[0].argmax().item<int64_t>());
    out.push_back(next);
    logits = m.Forward({{next}}, {slot});
  }
  EXPECT_TRUE(logits.ok()) << logits.status();
  return out;
}

TEST_P(Qwen35Golden, GreedyDecodeMatchesTransformers) {
  const auto& [name, method] = GetParam();
  Golden g = ReadGolden(name);
  std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, method);
  ASSERT_NE(m, nullptr);
  std::vector<double> errs;
  EXPECT_EQ(Greedy(*m, g, 3, &errs), g.greedy_tokens);
  for (size_t i = 0; i < errs.size(); ++i) EXPECT_LT(errs[i], Tolerance(method)) << "step " << i;
}

INSTANTIATE_TEST_SUITE_P(ConfigsAndMethods, Qwen35Golden,
                         ::testing::Combine(::testing::Values("flat_untied", "nested_tied"),
                                            ::testing::Values("forward", "solve-triangular", "product",
                                                              "neumann", "neumann-fast", "neumann-int16")),
                         [](const auto& info) {
                           std::string s = std::get<0>(info.param) + "_" + std::get<1>(info.param);
                           for (char& c : s) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return s;
                         });

// The quantized decode state: prefill writes the state once (rounded), every decode step re-rounds it.
// Greedy tokens must still match transformers exactly over 20 steps; the logits drift within the bound
// the kernel tests establish for per-row INT8 (a few percent of the state).
TEST(Qwen35GoldenQuantizedState, Int8GreedyMatchesTransformers) {
  for (const char* name : {"flat_untied", "nested_tied", "wide_heads"}) {
    Golden g = ReadGolden(name);
    std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, "neumann", kernels::StateDtype::kInt8);
    ASSERT_NE(m, nullptr);
    std::vector<double> errs;
    EXPECT_EQ(Greedy(*m, g, 0, &errs), g.greedy_tokens) << name;
    double worst = 0;
    for (double e : errs) worst = std::max(worst, e);
    std::printf("%-12s int8 state: worst logits rel err over %zu steps %.2e (min greedy gap %.3f)\n", name,
                errs.size(), worst, g.min_top2_gap);
    EXPECT_LT(worst, 5e-2) << name;
  }
}

// The bound for the reduced-precision runs below: every prompt's logits, and each greedy decode step's while
// it is on the fixture's tokens, within `factor` x transformers' own bf16 error of float32 transformers
// (+2e-2), never float32's exact values, and the greedy tokens themselves where no choice was close.
void ExpectWithinTransformersBf16Error(runner::ModelRunner& m, const Golden& g, const std::string& label,
                                       double factor) {
  double theirs_worst = 0;
  for (const auto& p : g.prompts) {
    ASSERT_TRUE(m.ResetSlot(0).ok());
    absl::StatusOr<at::Tensor> logits = m.Forward({p.ids}, {0}, true);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const at::Tensor ours_logits = logits->cpu();
    const double ours = RelErr(ours_logits, p.logits), theirs = RelErr(p.bf16_logits, p.logits);
    theirs_worst = std::max(theirs_worst, theirs);
    std::printf("%s len %4zu: vs float32 ours %.4f, transformers' bf16 %.4f; ours vs theirs %.3f\n", label.c_str(),
                p.ids.size(), ours, theirs, RelErr(ours_logits, p.bf16_logits));
    EXPECT_LT(ours, factor * theirs + 2e-2) << label << " length " << p.ids.size();
    EXPECT_GT(ours, 0.0) << label << ": float32's exact logits (was the precision reduced at all?)";
  }
  // Decode steps (the step kernel): each step's logits against float32 transformers' on the same tokens,
  // held to the prompts' bound; the tokens themselves only where no choice was close.
  std::vector<double> errs;
  std::vector<int32_t> tokens = Greedy(m, g, 1, &errs);
  double worst = 0;
  for (size_t i = 0; i < errs.size() && i < tokens.size(); ++i) {
    if (tokens[i] != g.greedy_tokens[i]) break;  // later steps see other tokens than the fixture's
    worst = std::max(worst, errs[i]);
  }
  std::printf("%s decode: worst step vs float32 %.4f (transformers' bf16 prompts: %.4f)\n", label.c_str(), worst,
              theirs_worst);
  EXPECT_LT(worst, factor * theirs_worst + 2e-2) << label;
  if (g.min_top2_gap > 0.5) {
    EXPECT_EQ(tokens, g.greedy_tokens) << label;
  }
}

// bfloat16 weights and activations (the delta rule itself stays float32). bf16 rounds every layer's
// activations to 8 bits of mantissa, so the float32 reference is far away for both engines (transformers'
// own bf16 run is off by up to ~0.2 of the largest logit on these random models); what must hold is that
// ours is no further from float32 than transformers' bf16 is: bf16 rounds at different points in our fused
// kernels than in transformers' ops, so within 2x (a wrong kernel is off by far more: ~1.0).
void ExpectNoWorseThanTransformersInBf16(c10::Device device) {
  for (const char* name : {"flat_untied", "nested_tied", "wide_heads"}) {
    Golden g = ReadGolden(name);
    std::unique_ptr<runner::ModelRunner> m =
        LoadModel(g.dir, "auto", kernels::StateDtype::kFloat32, at::kBFloat16, device);
    ASSERT_NE(m, nullptr);
    ExpectWithinTransformersBf16Error(*m, g, std::string(name) + " bf16 " + device.str(), 2.0);
  }
}

TEST(Qwen35GoldenBFloat16, NoWorseThanTransformersInBf16) { ExpectNoWorseThanTransformersInBf16(c10::kCPU); }

// INT8 weights (float32 activations): each group of 32 weights keeps 8 bits against its largest, so a
// Gaussian weight's rounding error is about 4x bf16's (1/(127 sqrt 12) of a max near 2.3 sigma, against
// bf16's 2^-9 relative), and these random models amplify it along the sequence as they do bf16's. The bar:
// logits within 4x of transformers' own bf16 error (measured 1.2-3.4x here; the kernels' exactness against
// the dequantized weights is linear_test's Int8Weight.*), never float32's exact values, and the greedy tokens
// where no choice was close. nested_tied's hidden size (48) is not a multiple of the group: its load must
// fail saying so.
TEST(Qwen35GoldenInt8Weights, NoWorseThanTransformersInBf16) {
  for (const char* name : {"flat_untied", "wide_heads"}) {
    Golden g = ReadGolden(name);
    std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, "auto", kernels::StateDtype::kFloat32, at::kFloat,
                                                       c10::kCPU, kernels::WeightDtype::kInt8);
    ASSERT_NE(m, nullptr);
    ExpectWithinTransformersBf16Error(*m, g, std::string(name) + " int8 weights", 4.0);
  }
  ModelOptions o;
  o.weight_dtype = kernels::WeightDtype::kInt8;
  runner::RunnerOptions ro;
  ro.max_seqs = 1;
  ro.max_model_len = 64;
  absl::StatusOr<std::unique_ptr<runner::ModelRunner>> bad = runner::ModelRunner::Load(ReadGolden("nested_tied").dir, o, ro);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("multiple of 32"), std::string::npos) << bad.status();
}

// 4-bit weights (llama.cpp's Q4_0 layout): 16 levels a group instead of 255, about 16x INT8's rounding error,
// which these random models amplify along the sequence: logits 0.2-1.05 of float32's away, 4.5-24x
// transformers' own bf16 error. So this only holds the load path to a loose bar (30x) and to not being
// float32; what can catch a wrong 4-bit kernel is linear_test's QuantizedWeight.* (exact against the
// dequantized weights) and the trained model served in test_server_e2e.py (its greedy text keeps its start).
TEST(Qwen35GoldenInt4Weights, WithinABoundOfTransformersInBf16) {
  for (const char* name : {"flat_untied", "wide_heads"}) {
    Golden g = ReadGolden(name);
    std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, "auto", kernels::StateDtype::kFloat32, at::kFloat,
                                                       c10::kCPU, kernels::WeightDtype::kInt4);
    ASSERT_NE(m, nullptr);
    ExpectWithinTransformersBf16Error(*m, g, std::string(name) + " int4 weights", 30.0);
  }
}

// Under int4 the projections are 4-bit but the lm_head is INT8 (as llama.cpp's 4-bit types keep their
// output tensor at 6-8 bits; docs/accuracy.md), and the embedding lookup keeps the loaded dtype.
TEST(Qwen35GoldenInt4Weights, TheLmHeadStaysInt8) {
  for (const char* name : {"flat_untied", "nested_tied"}) {
    const Golden g = ReadGolden(name);
    absl::StatusOr<models::qwen35::Qwen35Config> config = models::qwen35::LoadQwen35Config(g.dir);
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<std::unique_ptr<models::SafetensorsCheckpoint>> ckpt =
        models::SafetensorsCheckpoint::Open(g.dir);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    absl::StatusOr<models::qwen35::Qwen35Weights> w = models::qwen35::LoadQwen35Weights(
        **ckpt, *config, at::kFloat, c10::kCPU, kernels::WeightDtype::kInt4);
    if (!w.ok()) {
      // nested_tied's rows are not a multiple of 32 (the INT8 test above relies on that refusal).
      EXPECT_NE(std::string(w.status().message()).find("multiple of 32"), std::string::npos) << w.status();
      continue;
    }
    EXPECT_TRUE(w->lm_head.quantized()) << name;
    EXPECT_FALSE(w->lm_head.int4()) << name;
    EXPECT_EQ(w->lm_head.weight.scalar_type(), at::kChar) << name;
    EXPECT_TRUE(w->layers[0].gate_up_proj.int4()) << name;
    EXPECT_EQ(w->embed_tokens.scalar_type(), at::kFloat) << name;
  }
}

// The same on CUDA: bf16 q, k, v reach the decode kernel as views, read in place (tiled kernel on
// wide_heads).
TEST(Qwen35GoldenCuda, Bf16NoWorseThanTransformersInBf16) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ExpectNoWorseThanTransformersInBf16(c10::Device(c10::kCUDA));
}

// The same model on CUDA tensors (skipped without a GPU): prefill through the chunked kernel with the
// device's default inverse, decode through the CUDA step kernel, fp32 and INT8 state. wide_heads has
// delta-rule heads of 64, which take the tiled decode kernel; the others take the general one.
TEST(Qwen35GoldenCuda, LogitsAndGreedyMatchTransformers) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (const char* name : {"flat_untied", "nested_tied", "wide_heads"}) {
    Golden g = ReadGolden(name);
    for (kernels::StateDtype state : {kernels::StateDtype::kFloat32, kernels::StateDtype::kInt8}) {
      std::unique_ptr<runner::ModelRunner> m = LoadModel(g.dir, "auto", state, at::kFloat, c10::Device(c10::kCUDA));
      ASSERT_NE(m, nullptr);
      for (const auto& p : g.prompts) {
        ASSERT_TRUE(m->ResetSlot(0).ok());
        absl::StatusOr<at::Tensor> logits = m->Forward({p.ids}, {0}, true);
        ASSERT_TRUE(logits.ok()) << logits.status();
        EXPECT_LT(RelErr(logits->cpu(), p.logits), 1e-4) << name << " length " << p.ids.size();
      }
      std::vector<double> errs;
      EXPECT_EQ(Greedy(*m, g, 2, &errs), g.greedy_tokens) << name << " " << kernels::StateDtypeName(state);
      for (double e : errs) EXPECT_LT(e, state == kernels::StateDtype::kFloat32 ? 1e-4 : 5e-2) << name;
    }
  }
}

}  // namespace
}  // namespace deltaserve::models::qwen35
