// The model runner on the golden checkpoints: Execute's sampled tokens equal transformers' greedy ones,
// paged KV blocks scattered over the cache give the results of solo runs, KV exhaustion is refused
// without touching other sequences; on CUDA (skipped elsewhere) graph replay equals eager, and decode
// and prefill steps run without a single host synchronisation besides the one download.
#include "runner/model_runner.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#if DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <memory>
#include <optional>
#include <vector>

#include "model/golden.h"

namespace deltaserve::runner {
namespace {

using ::deltaserve::testing::Golden;
using ::deltaserve::testing::ReadGolden;
using ::testing::HasSubstr;

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a.cpu().to(at::kDouble) - b.cpu().to(at::kDouble)).norm().item<double>() /
         b.cpu().to(at::kDouble).norm().item<double>();
}

// Runner options with max_seqs slots of max_model_len positions each, the rest defaults.
RunnerOptions Slots(int max_seqs, int64_t max_model_len) {
  RunnerOptions ro;
  ro.max_seqs = max_seqs;
  ro.max_model_len = max_model_len;
  return ro;
}

std::unique_ptr<ModelRunner> MakeRunner(const Golden& g, RunnerOptions ro, c10::Device device = c10::kCPU,
                                        at::ScalarType dtype = at::kFloat) {
  models::qwen35::ModelOptions mo;
  mo.device = device;
  mo.dtype = dtype;
  absl::StatusOr<std::unique_ptr<ModelRunner>> r = ModelRunner::Load(g.dir, mo, ro);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

Sampler MakeSampler(const SamplingParams& p, const std::vector<int32_t>& prompt, int64_t vocab) {
  absl::StatusOr<Sampler> s = Sampler::Create(p, vocab, prompt);
  EXPECT_TRUE(s.ok()) << s.status();
  return *std::move(s);
}

SamplingParams GreedyParams() {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = 64;
  return p;
}

// Runs `prompts` through Execute as the engine would (whole-prompt prefill, then batched decodes) for
// `steps` tokens each; returns each sequence's tokens.
std::vector<std::vector<int32_t>> Generate(ModelRunner& r, const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<SamplingParams>& params, int steps) {
  const int64_t vocab = r.model().config().vocab_size;
  std::vector<int64_t> slots;
  for (size_t i = 0; i < prompts.size(); ++i) {
    absl::StatusOr<int64_t> slot = r.AddSequence(MakeSampler(params[i], prompts[i], vocab),
                                                 static_cast<int64_t>(prompts[i].size()) + steps);
    EXPECT_TRUE(slot.ok()) << slot.status();
    slots.push_back(*slot);
  }
  std::vector<std::vector<int32_t>> out(prompts.size());
  ScheduledBatch prefill;
  for (size_t i = 0; i < prompts.size(); ++i) prefill.sequences.push_back({slots[i], prompts[i], true});
  absl::StatusOr<StepOutput> step = r.Execute(prefill);
  for (int s = 0; s < steps && step.ok(); ++s) {
    ScheduledBatch decode;
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(step->samples[i].has_value() && step->samples[i]->ok());
      const int32_t t = (*step->samples[i])->token_id;
      out[i].push_back(t);
      decode.sequences.push_back({slots[i], {t}, true});
    }
    if (s + 1 < steps) step = r.Execute(decode);
  }
  EXPECT_TRUE(step.ok()) << step.status();
  for (int64_t slot : slots) r.RemoveSequence(slot);
  return out;
}

// As Generate, but each decode is launched before the previous pass is collected, feeding the previous
// sample on the device (the engine's asynchronous scheduling). `params` must not use penalties.
std::vector<std::vector<int32_t>> GenerateOverlapped(ModelRunner& r, const std::vector<std::vector<int32_t>>& prompts,
                                                     const std::vector<SamplingParams>& params, int steps) {
  const int64_t vocab = r.model().config().vocab_size;
  std::vector<int64_t> slots;
  for (size_t i = 0; i < prompts.size(); ++i) {
    slots.push_back(*r.AddSequence(MakeSampler(params[i], prompts[i], vocab),
                                   static_cast<int64_t>(prompts[i].size()) + steps));
  }
  std::vector<std::vector<int32_t>> out(prompts.size());
  ScheduledBatch prefill;
  for (size_t i = 0; i < prompts.size(); ++i) prefill.sequences.push_back({slots[i], prompts[i], true});
  absl::StatusOr<PendingStep> in_flight = r.Launch(prefill);
  EXPECT_TRUE(in_flight.ok()) << in_flight.status();
  for (int s = 0; s < steps && in_flight.ok(); ++s) {
    std::optional<absl::StatusOr<PendingStep>> next;
    if (s + 1 < steps) {
      ScheduledBatch decode;
      for (int64_t slot : slots) decode.sequences.push_back({slot, {}, true, /*feed_last_sample=*/true});
      next.emplace(r.Launch(decode));
      EXPECT_TRUE(next->ok()) << next->status();
    }
    absl::StatusOr<StepOutput> step = r.Collect(*std::move(in_flight));
    EXPECT_TRUE(step.ok()) << step.status();
    for (size_t i = 0; step.ok() && i < prompts.size(); ++i) {
      EXPECT_TRUE(step->samples[i].has_value() && step->samples[i]->ok());
      if (step->samples[i] && step->samples[i]->ok()) out[i].push_back((*step->samples[i])->token_id);
    }
    if (!next || !next->ok()) break;
    in_flight = *std::move(*next);
  }
  for (int64_t slot : slots) r.RemoveSequence(slot);
  return out;
}

// Greedy, seeded sampling with filters, logprobs: everything that needs no history on the host.
std::vector<SamplingParams> HistoryFreeParams(size_t n) {
  std::vector<SamplingParams> out;
  for (size_t i = 0; i < n; ++i) {
    SamplingParams p;
    p.max_new_tokens = 64;
    p.temperature = i % 3 == 0 ? 0 : 0.9;
    p.top_p = i % 3 == 1 ? 0.9 : 1.0;
    p.top_k = i % 3 == 2 ? 20 : 0;
    p.seed = 500 + i;
    p.logprobs = i % 2 == 1;
    p.top_logprobs = p.logprobs ? 3 : 0;
    out.push_back(p);
  }
  return out;
}

TEST(ModelRunner, ExecuteSamplesTransformersGreedyTokens) {
  Golden g = ReadGolden("flat_untied");
  RunnerOptions ro = Slots(3, 256);
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro);
  ASSERT_NE(r, nullptr);
  const int steps = static_cast<int>(g.greedy_tokens.size());
  std::vector<std::vector<int32_t>> tokens = Generate(*r, {g.greedy_prompt}, {GreedyParams()}, steps);
  EXPECT_EQ(tokens[0], g.greedy_tokens);
  EXPECT_EQ(r->active_sequences(), 0);
  EXPECT_EQ(r->used_kv_blocks(), 0);
}

// A long prompt arrives in chunks; only the last samples. A pass of chunks that sample nothing must run
// (it once reached the lm_head with no rows and failed), and the token after the last chunk must be the
// one the whole prompt in one pass gives.
TEST(ModelRunner, PromptChunksThatSampleNothingThenTheLastSamples) {
  Golden g = ReadGolden("flat_untied");
  RunnerOptions ro = Slots(2, 256);
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro);
  ASSERT_NE(r, nullptr);
  const std::vector<int32_t>& prompt = g.greedy_prompt;
  ASSERT_GE(prompt.size(), 2u);
  const int64_t vocab = r->model().config().vocab_size;
  const int32_t whole = Generate(*r, {prompt}, {GreedyParams()}, 1)[0][0];
  absl::StatusOr<int64_t> slot = r->AddSequence(MakeSampler(GreedyParams(), prompt, vocab), 64);
  ASSERT_TRUE(slot.ok()) << slot.status();
  const size_t half = prompt.size() / 2;
  ScheduledBatch first{{{*slot, std::vector<int32_t>(prompt.begin(), prompt.begin() + half), false}}};
  absl::StatusOr<StepOutput> out = r->Execute(first);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->samples[0].has_value());
  ScheduledBatch last{{{*slot, std::vector<int32_t>(prompt.begin() + half, prompt.end()), true}}};
  out = r->Execute(last);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(out->samples[0].has_value() && out->samples[0]->ok());
  EXPECT_EQ((*out->samples[0])->token_id, whole);
  r->RemoveSequence(*slot);
}

// Three sequences grow in turns, in chunks that do not align with blocks of 8 tokens, so each block
// table is a scattered, interleaved list of blocks; every logit must equal a solo run in a fresh runner.
TEST(ModelRunner, ScatteredBlocksGiveSoloResults) {
  Golden g = ReadGolden("nested_tied");
  RunnerOptions ro = Slots(3, 256);
  ro.kv_block_size = 8;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < 3; ++i) prompts.push_back(g.prompts[i % g.prompts.size()].ids);
  prompts[1].resize(std::min<size_t>(prompts[1].size(), 37));
  std::vector<at::Tensor> solo;
  for (const auto& p : prompts) {
    std::unique_ptr<ModelRunner> r = MakeRunner(g, ro);
    ASSERT_NE(r, nullptr);
    absl::StatusOr<at::Tensor> l = r->Forward({p}, {0}, /*all_positions=*/true);
    ASSERT_TRUE(l.ok()) << l.status();
    solo.push_back(l->clone());
  }
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro);
  ASSERT_NE(r, nullptr);
  std::vector<size_t> done(3, 0);
  std::vector<std::vector<at::Tensor>> rows(3);
  for (size_t chunk : {5u, 7u, 3u, 11u, 1u, 1u, 1u, 64u, 64u, 256u}) {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<int64_t> slots;
    for (size_t i = 0; i < 3; ++i) {
      const size_t n = std::min(chunk, prompts[i].size() - done[i]);
      if (n == 0) continue;
      tokens.emplace_back(prompts[i].begin() + done[i], prompts[i].begin() + done[i] + n);
      slots.push_back(static_cast<int64_t>(i));
    }
    if (tokens.empty()) break;
    absl::StatusOr<at::Tensor> l = r->Forward(tokens, slots, /*all_positions=*/true);
    ASSERT_TRUE(l.ok()) << l.status();
    int64_t row = 0;
    for (size_t k = 0; k < slots.size(); ++k) {
      const int64_t n = static_cast<int64_t>(tokens[k].size());
      rows[slots[k]].push_back(l->narrow(0, row, n).clone());
      row += n;
      done[slots[k]] += tokens[k].size();
    }
  }
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_LT(RelErr(at::cat(rows[i]), solo[i]), 1e-5) << "sequence " << i;
    EXPECT_EQ(r->SequenceLength(static_cast<int64_t>(i)), static_cast<int64_t>(prompts[i].size()));
  }
}

TEST(ModelRunner, KvExhaustionIsRefusedWithoutHarm) {
  Golden g = ReadGolden("flat_untied");
  RunnerOptions ro = Slots(3, 128);
  ro.kv_block_size = 16;
  ro.kv_cache_tokens = 64;  // 4 blocks
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->capacity().kv_tokens(), 64);
  absl::Status never = r->CheckFits(65);
  EXPECT_EQ(never.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(never.message()), HasSubstr("needs 5 KV blocks of 16 tokens"));
  EXPECT_THAT(std::string(never.message()), HasSubstr("holds 4 blocks (64 tokens)"));
  EXPECT_TRUE(r->CheckFits(64).ok());

  const std::vector<int32_t> prompt(g.greedy_prompt.begin(), g.greedy_prompt.begin() + 20);
  const int64_t vocab = r->model().config().vocab_size;
  absl::StatusOr<int64_t> a = r->AddSequence(MakeSampler(GreedyParams(), prompt, vocab), 48);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(r->CanAdmit(17));
  EXPECT_TRUE(r->CanAdmit(16));
  absl::StatusOr<int64_t> b = r->AddSequence(MakeSampler(GreedyParams(), prompt, vocab), 17);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r->active_sequences(), 1);

  // The admitted sequence runs to its reservation and equals a solo runner's tokens.
  ScheduledBatch prefill;
  prefill.sequences.push_back({*a, prompt, true});
  absl::StatusOr<StepOutput> out = r->Execute(prefill);
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<int32_t> tokens = {(*out->samples[0])->token_id};
  for (int s = 0; s < 27; ++s) {
    ScheduledBatch d;
    d.sequences.push_back({*a, {tokens.back()}, true});
    out = r->Execute(d);
    ASSERT_TRUE(out.ok()) << out.status();
    tokens.push_back((*out->samples[0])->token_id);
  }
  RunnerOptions big = ro;
  big.kv_cache_tokens = 0;
  std::unique_ptr<ModelRunner> fresh = MakeRunner(g, big);
  ASSERT_NE(fresh, nullptr);
  std::vector<std::vector<int32_t>> expected = Generate(*fresh, {prompt}, {GreedyParams()}, 28);
  EXPECT_EQ(tokens, expected[0]);
  r->RemoveSequence(*a);
  EXPECT_EQ(r->used_kv_blocks(), 0);
  EXPECT_TRUE(r->CanAdmit(64));
}

TEST(ModelRunner, BadOptionsNameTheField) {
  Golden g = ReadGolden("flat_untied");
  models::qwen35::ModelOptions mo;
  RunnerOptions ro;
  ro.kv_block_size = 12;
  EXPECT_THAT(std::string(ModelRunner::Load(g.dir, mo, ro).status().message()), HasSubstr("kv_block_size"));
  ro = RunnerOptions();
  ro.gpu_memory_utilization = 1.5;
  EXPECT_THAT(std::string(ModelRunner::Load(g.dir, mo, ro).status().message()),
              HasSubstr("gpu_memory_utilization must be in (0, 1]"));
  ro = RunnerOptions();
  ro.max_seqs = 0;
  EXPECT_EQ(ModelRunner::Load(g.dir, mo, ro).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelRunner, ExecuteRefusesSlotsWithoutSequence) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<ModelRunner> r = MakeRunner(g, RunnerOptions());
  ASSERT_NE(r, nullptr);
  ScheduledBatch b;
  b.sequences.push_back({0, {1, 2, 3}, true});
  EXPECT_THAT(std::string(r->Execute(b).status().message()), HasSubstr("holds no sequence"));
}

// Decodes launched before the previous pass is read back, fed from the device, give the tokens of
// passes run one at a time.
TEST(ModelRunner, FedDecodesLaunchedAheadEqualOneAtATime) {
  Golden g = ReadGolden("nested_tied");
  RunnerOptions ro = Slots(3, 256);
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro);
  ASSERT_NE(r, nullptr);
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < 3; ++i) prompts.push_back(g.prompts[i % g.prompts.size()].ids);
  const std::vector<SamplingParams> params = HistoryFreeParams(3);
  const std::vector<std::vector<int32_t>> one_at_a_time = Generate(*r, prompts, params, 12);
  const std::vector<std::vector<int32_t>> ahead = GenerateOverlapped(*r, prompts, params, 12);
  EXPECT_EQ(ahead, one_at_a_time);
  EXPECT_EQ(r->active_sequences(), 0);
  EXPECT_EQ(r->used_kv_blocks(), 0);
}

TEST(ModelRunner, FeedingNeedsAnEarlierSampleAndNoTokens) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<ModelRunner> r = MakeRunner(g, RunnerOptions());
  ASSERT_NE(r, nullptr);
  const std::vector<int32_t>& prompt = g.greedy_prompt;
  const int64_t slot = *r->AddSequence(MakeSampler(GreedyParams(), prompt, r->model().config().vocab_size), 64);
  ScheduledBatch fed{{{slot, {}, true, /*feed_last_sample=*/true}}};
  absl::StatusOr<PendingStep> early = r->Launch(fed);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(early.status().message()), HasSubstr("has no sampled token to feed back"));
  EXPECT_EQ(r->SequenceLength(slot), 0);  // nothing ran
  ScheduledBatch both{{{slot, {1}, true, /*feed_last_sample=*/true}}};
  EXPECT_THAT(std::string(r->Launch(both).status().message()), HasSubstr("feed_last_sample takes no tokens"));
  // After a sampling pass the feed works, and it is refused again once the slot's sequence is gone.
  ASSERT_TRUE(r->Execute({{{slot, prompt, true}}}).ok());
  ASSERT_TRUE(r->Execute(fed).ok());
  EXPECT_EQ(r->SequenceLength(slot), static_cast<int64_t>(prompt.size()) + 1);
  r->RemoveSequence(slot);
  const int64_t again = *r->AddSequence(MakeSampler(GreedyParams(), prompt, r->model().config().vocab_size), 64);
  EXPECT_EQ(again, slot);
  EXPECT_THAT(std::string(r->Launch(fed).status().message()), HasSubstr("has no sampled token"));
}

// A pass collected after its sequence was removed and the slot taken by another drops that row: the new
// sequence neither hears the old token nor records it in its history.
TEST(ModelRunner, CollectAfterTheSequenceEndedDropsItsRow) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<ModelRunner> r = MakeRunner(g, RunnerOptions());
  ASSERT_NE(r, nullptr);
  const int64_t vocab = r->model().config().vocab_size;
  const std::vector<int32_t>& prompt = g.greedy_prompt;
  const int64_t slot = *r->AddSequence(MakeSampler(GreedyParams(), prompt, vocab), 64);
  absl::StatusOr<PendingStep> pending = r->Launch({{{slot, prompt, true}}});
  ASSERT_TRUE(pending.ok()) << pending.status();
  r->RemoveSequence(slot);
  ASSERT_EQ(*r->AddSequence(MakeSampler(GreedyParams(), prompt, vocab), 64), slot);
  absl::StatusOr<StepOutput> out = r->Collect(*std::move(pending));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->samples.size(), 1u);
  EXPECT_FALSE(out->samples[0].has_value());
  // The new sequence generates what a fresh runner does.
  std::vector<int32_t> tokens;
  absl::StatusOr<StepOutput> step = r->Execute({{{slot, prompt, true}}});
  for (int s = 0; s < 5 && step.ok(); ++s) {
    tokens.push_back((*step->samples[0])->token_id);
    step = r->Execute({{{slot, {tokens.back()}, true}}});
  }
  ASSERT_TRUE(step.ok()) << step.status();
  std::unique_ptr<ModelRunner> fresh = MakeRunner(g, RunnerOptions());
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(tokens, Generate(*fresh, {prompt}, {GreedyParams()}, 5)[0]);
}

#if DELTASERVE_WITH_CUDA
class ModelRunnerCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

// Mixed requests: greedy, seeded sampling with every filter and penalty, logprobs.
std::vector<SamplingParams> MixedParams(size_t n) {
  std::vector<SamplingParams> out;
  for (size_t i = 0; i < n; ++i) {
    SamplingParams p;
    p.max_new_tokens = 64;
    switch (i % 4) {
      case 0:
        p.temperature = 0;
        break;
      case 1:
        p.temperature = 0.8;
        p.top_p = 0.9;
        p.seed = 100 + i;
        break;
      case 2:
        p.temperature = 1.1;
        p.top_k = 20;
        p.min_p = 0.02;
        p.repetition_penalty = 1.2;
        p.seed = 200 + i;
        break;
      default:
        p.temperature = 0.7;
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.3;
        p.logprobs = true;
        p.top_logprobs = 5;
        p.seed = 300 + i;
    }
    out.push_back(p);
  }
  return out;
}

std::vector<std::vector<int32_t>> Prompts(const Golden& g, size_t n) {
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int32_t> p = i % 2 ? g.greedy_prompt : g.prompts[i % g.prompts.size()].ids;
    p.resize(std::min<size_t>(p.size(), 8 + 13 * i));
    out.push_back(p);
  }
  return out;
}

TEST_F(ModelRunnerCuda, GraphReplayEqualsEager) {
  Golden g = ReadGolden("flat_untied");
  RunnerOptions ro = Slots(6, 256);
  const std::vector<std::vector<int32_t>> prompts = Prompts(g, 5);
  const std::vector<SamplingParams> params = MixedParams(5);
  RunnerOptions eager_options = ro;
  eager_options.cuda_graphs = false;
  std::unique_ptr<ModelRunner> eager = MakeRunner(g, eager_options, c10::kCUDA);
  std::unique_ptr<ModelRunner> graphs = MakeRunner(g, ro, c10::kCUDA);
  ASSERT_NE(eager, nullptr);
  ASSERT_NE(graphs, nullptr);
  EXPECT_FALSE(eager->graphs_enabled());
  EXPECT_TRUE(graphs->graphs_enabled());
  EXPECT_EQ(Generate(*graphs, prompts, params, 30), Generate(*eager, prompts, params, 30));
  // Decodes launched ahead and fed on the device, replayed and eager, give the same tokens again.
  const std::vector<SamplingParams> history_free = HistoryFreeParams(5);
  const std::vector<std::vector<int32_t>> reference = Generate(*eager, prompts, history_free, 30);
  EXPECT_EQ(GenerateOverlapped(*graphs, prompts, history_free, 30), reference);
  EXPECT_EQ(GenerateOverlapped(*eager, prompts, history_free, 30), reference);
  // Logits too, through the direct API (a bucket of 4 for 3 sequences: padding rows included).
  for (ModelRunner* r : {eager.get(), graphs.get()}) {
    for (int64_t s = 0; s < 3; ++s) ASSERT_TRUE(r->ResetSlot(s).ok());
  }
  std::vector<std::vector<int32_t>> three(prompts.begin(), prompts.begin() + 3);
  ASSERT_TRUE(eager->Forward(three, {0, 1, 2}).ok());
  ASSERT_TRUE(graphs->Forward(three, {0, 1, 2}).ok());
  for (int step = 0; step < 5; ++step) {
    std::vector<std::vector<int32_t>> next = {{static_cast<int32_t>(step + 1)}, {7}, {11}};
    absl::StatusOr<at::Tensor> a = eager->Forward(next, {0, 1, 2});
    absl::StatusOr<at::Tensor> b = graphs->Forward(next, {0, 1, 2});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_LT(RelErr(*b, *a), 1e-5) << "step " << step;
  }
}

// --device cuda:1 while device 0 is current: the runner sizes its KV cache from that GPU's free memory, and
// its prefill (the delta rule's kernels), graph decodes, sampling and host transfers give the tokens they
// give on device 0. Needs two GPUs.
TEST_F(ModelRunnerCuda, ASecondGpuGivesTheFirstGpusTokens) {
  if (c10::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  const c10::cuda::CUDAGuard current(static_cast<c10::DeviceIndex>(0));
  Golden g = ReadGolden("flat_untied");
  const RunnerOptions ro = Slots(6, 256);
  const std::vector<std::vector<int32_t>> prompts = Prompts(g, 5);
  const std::vector<SamplingParams> params = MixedParams(5);
  std::unique_ptr<ModelRunner> first = MakeRunner(g, ro, c10::Device(c10::kCUDA, 0));
  std::unique_ptr<ModelRunner> second = MakeRunner(g, ro, c10::Device(c10::kCUDA, 1));
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(Generate(*second, prompts, params, 30), Generate(*first, prompts, params, 30));
  EXPECT_EQ(c10::cuda::current_device(), 0);
}

// ATen's sync debug mode turns any synchronising op (a blocking copy, .item(), nonzero, ...) into an
// error; Execute catches it and reports INTERNAL. Prefill (eager), graph decode and eager decode (a
// batch over the largest bucket does not exist here, so timing forces eager with a layer timer) all run.
TEST_F(ModelRunnerCuda, StepsNeverSynchroniseTheHost) {
  Golden g = ReadGolden("nested_tied");
  RunnerOptions ro = Slots(4, 256);
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro, c10::kCUDA);
  ASSERT_NE(r, nullptr);
  const std::vector<std::vector<int32_t>> prompts = Prompts(g, 4);
  const std::vector<SamplingParams> params = MixedParams(4);
  std::vector<int64_t> slots;
  for (size_t i = 0; i < prompts.size(); ++i) {
    slots.push_back(*r->AddSequence(MakeSampler(params[i], prompts[i], r->model().config().vocab_size), 128));
  }
  models::LayerTimer timer(c10::Device(c10::kCUDA), r->model().TimedSpans().size());
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  ScheduledBatch prefill;
  for (size_t i = 0; i < prompts.size(); ++i) prefill.sequences.push_back({slots[i], prompts[i], true});
  absl::StatusOr<StepOutput> out = r->Execute(prefill);
  for (int step = 0; step < 6 && out.ok(); ++step) {
    ScheduledBatch d;
    for (size_t i = 0; i < slots.size(); ++i) d.sequences.push_back({slots[i], {(*out->samples[i])->token_id}, true});
    d.timer = step % 2 ? &timer : nullptr;  // odd steps eager (timed), even steps graph replay
    out = r->Execute(d);
  }
  // Launched ahead: each decode feeds the previous sample on the device before that pass is collected.
  absl::StatusOr<PendingStep> in_flight = absl::InternalError("not launched");
  if (out.ok()) {
    ScheduledBatch d;
    for (size_t i = 0; i < slots.size(); ++i) d.sequences.push_back({slots[i], {(*out->samples[i])->token_id}, true});
    in_flight = r->Launch(d);
  }
  for (int step = 0; step < 4 && in_flight.ok() && out.ok(); ++step) {
    ScheduledBatch d;
    for (int64_t slot : slots) d.sequences.push_back({slot, {}, true, /*feed_last_sample=*/true});
    absl::StatusOr<PendingStep> next = r->Launch(d);
    out = r->Collect(*std::move(in_flight));
    in_flight = std::move(next);
  }
  if (in_flight.ok()) out = r->Collect(*std::move(in_flight));
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  EXPECT_TRUE(in_flight.ok()) << in_flight.status();
  EXPECT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(timer.Collect().ok());
}

TEST_F(ModelRunnerCuda, Bf16StaysNearFloat32) {
  Golden g = ReadGolden("flat_untied");
  RunnerOptions ro = Slots(2, 256);
  std::unique_ptr<ModelRunner> r = MakeRunner(g, ro, c10::kCUDA, at::kBFloat16);
  ASSERT_NE(r, nullptr);
  for (const auto& p : g.prompts) {
    ASSERT_TRUE(r->ResetSlot(0).ok());
    absl::StatusOr<at::Tensor> logits = r->Forward({p.ids}, {0}, true);
    ASSERT_TRUE(logits.ok()) << logits.status();
    const double ours = RelErr(*logits, p.logits), theirs = RelErr(p.bf16_logits, p.logits);
    EXPECT_LT(ours, 1.5 * theirs + 1e-2) << "length " << p.ids.size();
  }
}
#endif

}  // namespace
}  // namespace deltaserve::runner
