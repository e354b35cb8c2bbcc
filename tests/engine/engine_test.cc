// The continuous-batching engine on a golden random checkpoint: streamed greedy tokens equal
// transformers', concurrent streams equal their solo runs (batching changes nothing), long prompts are
// prefilled in chunks, cancellation frees the slot, the queue refuses when full, bad requests are refused
// by field, and shutdown finishes every stream.
#include "engine/engine.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "model/golden.h"

namespace deltaserve::engine {
namespace {

using deltaserve::testing::Golden;
using deltaserve::testing::ReadGolden;
using ::testing::HasSubstr;

// Collects one request's events; Wait() blocks until the finishing event.
struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::optional<TokenEvent> last;
  int events = 0;

  std::function<void(const TokenEvent&)> Callback() {
    return [this](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_FALSE(last.has_value()) << "an event after the finishing one";
      tokens.insert(tokens.end(), e.token_ids.begin(), e.token_ids.end());
      ++events;
      if (e.finished) {
        last = e;
        cv.notify_all();
      }
    };
  }
  TokenEvent Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(120), [this] { return last.has_value(); });
    EXPECT_TRUE(last.has_value()) << "stream did not finish";
    return last.value_or(TokenEvent{});
  }
  int SeenEvents() {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
};

std::unique_ptr<Engine> StartEngine(const Golden& g, int64_t max_seqs, EngineOptions options = {},
                                    c10::Device device = c10::kCPU, int64_t kv_cache_tokens = 0) {
  runner::RunnerOptions ro;
  ro.max_seqs = max_seqs;
  ro.max_model_len = 512;
  ro.kv_cache_tokens = kv_cache_tokens;
  models::qwen35::ModelOptions mo;
  mo.device = device;
  absl::StatusOr<std::unique_ptr<runner::ModelRunner>> model = runner::ModelRunner::Load(g.dir, mo, ro);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Start(*std::move(model), nullptr, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

SamplingParams Greedy(int64_t max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = max_tokens;
  return p;
}

EngineRequest Request(const std::vector<int32_t>& prompt, const SamplingParams& p, Stream& s) {
  EngineRequest r;
  r.prompt = prompt;
  r.params = p;
  r.on_event = s.Callback();
  return r;
}

// Tests that hold with steps run one at a time and with asynchronous scheduling (the parameter).
class EngineModes : public ::testing::TestWithParam<bool> {
 protected:
  EngineOptions Options() const {
    EngineOptions o;
    o.async_scheduling = GetParam();
    return o;
  }
};
INSTANTIATE_TEST_SUITE_P(Scheduling, EngineModes, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "Async" : "OneAtATime"; });

TEST(Engine, StreamedGreedyMatchesTransformers) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<Engine> engine = StartEngine(g, 2);
  ASSERT_NE(engine, nullptr);
  Stream s;
  ASSERT_TRUE(engine->Submit(Request(g.greedy_prompt, Greedy(20), s)).ok());
  TokenEvent last = s.Wait();
  EXPECT_EQ(s.tokens, g.greedy_tokens) << last.error;
  EXPECT_EQ(last.reason, FinishReason::kLength);
  EXPECT_EQ(last.completion_tokens, 20);
  EXPECT_EQ(last.prompt_tokens, static_cast<int64_t>(g.greedy_prompt.size()));
  EXPECT_GT(last.time_to_first_token_seconds, 0);
  EXPECT_GE(last.total_seconds, last.time_to_first_token_seconds);
}

TEST_P(EngineModes, ConcurrentStreamsEqualTheirSoloRuns) {
  Golden g = ReadGolden("nested_tied");
  // Prompts of every golden length plus the greedy prompt, different output lengths; 4 slots for 12
  // requests, so some wait and join mid-flight, and decodes mix with prefill chunks in one step.
  std::vector<std::vector<int32_t>> prompts;
  for (int rep = 0; rep < 2; ++rep) {
    for (const auto& p : g.prompts) prompts.push_back(p.ids);
    prompts.push_back(g.greedy_prompt);
  }
  std::vector<std::vector<int32_t>> solo(prompts.size());
  {
    std::unique_ptr<Engine> engine = StartEngine(g, 1);
    ASSERT_NE(engine, nullptr);
    for (size_t i = 0; i < prompts.size(); ++i) {
      Stream s;
      ASSERT_TRUE(engine->Submit(Request(prompts[i], Greedy(5 + static_cast<int64_t>(i)), s)).ok());
      s.Wait();
      solo[i] = s.tokens;
    }
  }
  EngineOptions o = Options();
  o.max_batched_tokens = 128;  // forces chunked prefill of the 200-token prompts
  o.prefill_chunk = 64;
  std::unique_ptr<Engine> engine = StartEngine(g, 4, o);
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Stream>> streams;
  for (size_t i = 0; i < prompts.size(); ++i) {
    streams.push_back(std::make_unique<Stream>());
    ASSERT_TRUE(
        engine->Submit(Request(prompts[i], Greedy(5 + static_cast<int64_t>(i)), *streams.back())).ok());
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    streams[i]->Wait();
    EXPECT_EQ(streams[i]->tokens, solo[i]) << "request " << i;
  }
  // Slots return after the finishing callback, at the end of that step.
  for (int i = 0; i < 1000 && engine->stats().free_slots != 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(engine->stats().free_slots, 4);
  EXPECT_EQ(engine->stats().running, 0);
}

// Asynchronous scheduling streams what steps run one at a time stream: requests that stop on a token
// mid-way (the token computed for them in the step already launched is dropped), end by length, sample
// with seeds, or use penalties (whose steps fall back to one at a time) all give their solo runs'
// tokens, finish reasons and counts, and every slot comes back.
TEST(Engine, AsyncSchedulingStreamsWhatOneAtATimeStreams) {
  Golden g = ReadGolden("nested_tied");
  std::vector<std::vector<int32_t>> prompts;
  for (int rep = 0; rep < 3; ++rep) {
    for (const auto& p : g.prompts) prompts.push_back(p.ids);
  }
  std::vector<SamplingParams> params;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SamplingParams p = Greedy(6 + static_cast<int64_t>(i % 5) * 3);
    if (i % 3 == 1) {
      p.temperature = 0.9;
      p.top_k = 40;
      p.seed = 70 + i;
    }
    if (i % 4 == 3) p.repetition_penalty = 1.3;
    params.push_back(p);
  }
  auto run = [&](std::unique_ptr<Engine>& engine, const std::vector<SamplingParams>& ps, bool together) {
    std::vector<std::unique_ptr<Stream>> streams;
    std::vector<TokenEvent> last(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      streams.push_back(std::make_unique<Stream>());
      EXPECT_TRUE(engine->Submit(Request(prompts[i], ps[i], *streams.back())).ok());
      if (!together) last[i] = streams[i]->Wait();
    }
    for (size_t i = 0; together && i < prompts.size(); ++i) last[i] = streams[i]->Wait();
    return std::make_pair(std::move(streams), last);
  };
  std::unique_ptr<Engine> solo_engine = StartEngine(g, 1);
  ASSERT_NE(solo_engine, nullptr);
  auto [free_runs, free_last] = run(solo_engine, params, false);
  // Every other request stops on its own fourth token, as if it were end-of-sequence.
  for (size_t i = 0; i < prompts.size(); i += 2) {
    ASSERT_GE(free_runs[i]->tokens.size(), 4u);
    params[i].stop_token_ids = {free_runs[i]->tokens[3]};
  }
  auto [solo, solo_last] = run(solo_engine, params, false);
  EngineOptions o;
  o.async_scheduling = true;
  o.max_batched_tokens = 128;
  o.prefill_chunk = 64;
  std::unique_ptr<Engine> engine = StartEngine(g, 4, o);
  ASSERT_NE(engine, nullptr);
  auto [async, async_last] = run(engine, params, true);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(async[i]->tokens, solo[i]->tokens) << "request " << i;
    EXPECT_EQ(async_last[i].reason, solo_last[i].reason) << "request " << i;
    EXPECT_EQ(async_last[i].stop_reason, solo_last[i].stop_reason) << "request " << i;
    EXPECT_EQ(async_last[i].completion_tokens, static_cast<int64_t>(solo[i]->tokens.size())) << "request " << i;
    EXPECT_EQ(async[i]->SeenEvents(), solo[i]->SeenEvents()) << "request " << i;
  }
  EXPECT_EQ(solo_last[0].reason, FinishReason::kStop);
  EXPECT_LE(solo[0]->tokens.size(), 4u);  // at the stop id's first occurrence, which may come earlier
  // A finished sequence keeps its slot and KV blocks until the pass launched ahead for it is collected,
  // which may come after its last event: shut down (which collects every pass and joins the engine
  // thread) before reading the runner from this thread.
  engine->Shutdown(absl::Seconds(5));
  EXPECT_EQ(engine->stats().free_slots, 4);
  EXPECT_EQ(engine->stats().running, 0);
  EXPECT_EQ(engine->runner().used_kv_blocks(), 0);
}

// A request whose prompt + max_tokens needs more KV blocks than the cache holds is refused at once,
// naming the limit; requests that fit only one at a time wait for each other and are not disturbed.
TEST_P(EngineModes, KvCacheLimitRefusesOrWaits) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<Engine> engine = StartEngine(g, 3, Options(), c10::kCPU, /*kv_cache_tokens=*/64);
  ASSERT_NE(engine, nullptr);
  Stream never;
  absl::StatusOr<uint64_t> refused = engine->Submit(Request(g.greedy_prompt, Greedy(60), never));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("KV blocks"));
  const std::vector<int32_t> prompt(g.greedy_prompt.begin(), g.greedy_prompt.begin() + 10);
  std::vector<int32_t> solo;
  {
    Stream s;
    ASSERT_TRUE(engine->Submit(Request(prompt, Greedy(30), s)).ok());
    s.Wait();
    solo = s.tokens;
  }
  // Each needs 40 positions (3 blocks of 16): only one fits at a time in 4 blocks.
  Stream a, b;
  ASSERT_TRUE(engine->Submit(Request(prompt, Greedy(30), a)).ok());
  ASSERT_TRUE(engine->Submit(Request(prompt, Greedy(30), b)).ok());
  a.Wait();
  b.Wait();
  EXPECT_EQ(a.tokens, solo);
  EXPECT_EQ(b.tokens, solo);
}

#if DELTASERVE_WITH_CUDA
// 64 concurrent requests on the CUDA runner (graphs, paged KV, device sampling) equal their solo runs.
TEST(EngineCuda, SixtyFourConcurrentRequestsEqualTheirSoloRuns) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  Golden g = ReadGolden("nested_tied");
  std::vector<std::vector<int32_t>> prompts;
  for (size_t i = 0; i < 64; ++i) {
    std::vector<int32_t> p = i % 3 == 0 ? g.greedy_prompt : g.prompts[i % g.prompts.size()].ids;
    p.resize(std::min<size_t>(p.size(), 3 + 7 * (i % 29)));
    prompts.push_back(p);
  }
  auto params = [](size_t i) {
    SamplingParams p = Greedy(8 + static_cast<int64_t>(i % 17));
    if (i % 2) {  // seeded sampling: the same tokens whatever the batch
      p.temperature = 0.9;
      p.top_p = 0.95;
      p.seed = 1000 + i;
    }
    return p;
  };
  EngineOptions o;
  o.max_batched_tokens = 256;
  std::unique_ptr<Engine> engine = StartEngine(g, 64, o, c10::kCUDA);
  ASSERT_NE(engine, nullptr);
  std::vector<std::vector<int32_t>> solo(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    Stream s;
    ASSERT_TRUE(engine->Submit(Request(prompts[i], params(i), s)).ok());
    s.Wait();
    solo[i] = s.tokens;
  }
  // Together, with asynchronous scheduling (the server's default on CUDA).
  engine->Shutdown(absl::Seconds(30));
  o.async_scheduling = true;
  engine = StartEngine(g, 64, o, c10::kCUDA);
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Stream>> streams;
  for (size_t i = 0; i < prompts.size(); ++i) {
    streams.push_back(std::make_unique<Stream>());
    ASSERT_TRUE(engine->Submit(Request(prompts[i], params(i), *streams.back())).ok());
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    TokenEvent last = streams[i]->Wait();
    EXPECT_TRUE(last.error.ok()) << last.error;
    EXPECT_EQ(streams[i]->tokens, solo[i]) << "request " << i;
  }
}
#endif

TEST_P(EngineModes, CancellationFreesTheSlot) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<Engine> engine = StartEngine(g, 1, Options());
  ASSERT_NE(engine, nullptr);
  Stream long_one;
  absl::StatusOr<uint64_t> h = engine->Submit(Request(g.greedy_prompt, Greedy(400), long_one));
  ASSERT_TRUE(h.ok());
  while (long_one.SeenEvents() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine->Cancel(*h);
  TokenEvent last = long_one.Wait();
  EXPECT_EQ(last.reason, FinishReason::kCancelled);
  EXPECT_LT(last.completion_tokens, 400);
  Stream next;  // the only slot must be free again
  ASSERT_TRUE(engine->Submit(Request(g.greedy_prompt, Greedy(20), next)).ok());
  next.Wait();
  EXPECT_EQ(next.tokens, g.greedy_tokens);
}

TEST_P(EngineModes, DeadlineEndsTheRequest) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<Engine> engine = StartEngine(g, 1, Options());
  ASSERT_NE(engine, nullptr);
  Stream s;
  EngineRequest r = Request(g.greedy_prompt, Greedy(400), s);
  r.deadline = absl::Now() + absl::Milliseconds(50);
  ASSERT_TRUE(engine->Submit(std::move(r)).ok());
  TokenEvent last = s.Wait();
  EXPECT_EQ(last.reason, FinishReason::kCancelled);
  EXPECT_EQ(last.error.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_P(EngineModes, FullQueueRefusesAtOnce) {
  Golden g = ReadGolden("flat_untied");
  EngineOptions o = Options();
  o.max_queue = 1;
  std::unique_ptr<Engine> engine = StartEngine(g, 1, o);
  ASSERT_NE(engine, nullptr);
  Stream running, queued, refused;
  absl::StatusOr<uint64_t> h = engine->Submit(Request(g.greedy_prompt, Greedy(400), running));
  ASSERT_TRUE(h.ok());
  while (running.SeenEvents() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(engine->Submit(Request(g.greedy_prompt, Greedy(3), queued)).ok());
  absl::StatusOr<uint64_t> r = engine->Submit(Request(g.greedy_prompt, Greedy(3), refused));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("max_queue 1"));
  engine->Cancel(*h);
  EXPECT_EQ(queued.Wait().reason, FinishReason::kLength);
}

TEST(Engine, BadRequestsAreRefusedByField) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<Engine> engine = StartEngine(g, 1);
  ASSERT_NE(engine, nullptr);
  Stream s;
  auto expect = [&](EngineRequest r, const std::string& what) {
    absl::StatusOr<uint64_t> h = engine->Submit(std::move(r));
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << h.status();
    EXPECT_THAT(std::string(h.status().message()), HasSubstr(what));
  };
  expect(Request({}, Greedy(5), s), "prompt: empty");
  expect(Request({1, 2}, Greedy(511), s), "exceeds max_model_len 512");
  expect(Request({1, 512}, Greedy(5), s), "512");
  SamplingParams bad = Greedy(5);
  bad.top_p = 0;
  expect(Request({1}, bad, s), "top_p");
  bad = Greedy(0);
  expect(Request({1}, bad, s), "max_new_tokens");
  SamplingParams stop = Greedy(5);
  stop.stop = {"\n"};
  expect(Request({1}, stop, s), "stop: this model has no tokenizer");
  EXPECT_EQ(engine->stats().free_slots, 1);
}

TEST_P(EngineModes, ShutdownFinishesEveryStream) {
  Golden g = ReadGolden("flat_untied");
  std::unique_ptr<Engine> engine = StartEngine(g, 2, Options());
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < 4; ++i) {
    streams.push_back(std::make_unique<Stream>());
    ASSERT_TRUE(engine->Submit(Request(g.greedy_prompt, Greedy(i < 2 ? 3 : 400), *streams.back())).ok());
  }
  // The grace is wide enough that the 3-token requests finish under any load (200 ms was not enough for the
  // ASan build beside the rest of the suite); the 400-token ones finish or are cancelled at its end.
  engine->Shutdown(absl::Seconds(5));
  for (int i = 0; i < 4; ++i) {
    TokenEvent last = streams[i]->Wait();
    if (i < 2) {
      EXPECT_EQ(last.reason, FinishReason::kLength) << i;  // short ones finish within the grace
    }
  }
  Stream late;
  EXPECT_EQ(engine->Submit(Request(g.greedy_prompt, Greedy(3), late)).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace deltaserve::engine
