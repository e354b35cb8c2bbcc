// The text engine: one thread that schedules continuous (iteration-level) batching over a bounded
// admission queue and a model runner; requests stream token events back through a callback.
#ifndef DELTASERVE_SERVER_ENGINE_ENGINE_H_
#define DELTASERVE_SERVER_ENGINE_ENGINE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine_metrics.h"
#include "runner/sampler.h"
#include "runner/model_runner.h"
#include "runner/sampler.h"
#include "tokenizer/tokenizer.h"

namespace deltaserve::engine {

// A request's decoding parameters and sampled tokens are the runner's types; the engine's callers (the
// API) name them through the engine.
using runner::IsStopToken;
using runner::LogprobsMode;
using runner::SampleResult;
using runner::Sampler;
using runner::SamplingParams;
using runner::TokenLogprob;
using runner::ValidateSamplingParams;

struct EngineOptions {
  int64_t max_queue = 256;           // waiting requests beyond this are refused (RESOURCE_EXHAUSTED)
  int64_t max_batched_tokens = 512;  // tokens per step: every running decode plus prefill chunks
  int64_t prefill_chunk = 256;       // largest prefill piece per sequence per step (multiple of 64)
  EngineMetrics* metrics = nullptr;  // not owned; must outlive the engine. Null: no reports
  LayerMetricsMode layer_metrics = LayerMetricsMode::kSampled;
  double layer_metrics_sample_rate = 0.05;  // kSampled: fraction of steps per phase that are timed
  int intra_op_threads = 0;  // CPU threads per op on the engine thread; 0: LibTorch's default (all cores)
  // Launch step N+1 before reading step N's samples back, and stream step N's tokens while the device
  // runs step N+1 (vLLM's async scheduling). Decodes feed the last sample on the device; a sequence
  // that turns out to have stopped at N loses the one extra token computed for it. Steps that time
  // layers, or that sample a request with penalties (which read the previous token on the host), run
  // one at a time. Worth it where passes run asynchronously (CUDA); on the CPU a launch already runs the
  // whole pass, so there is nothing to overlap.
  bool async_scheduling = false;
};

enum class FinishReason { kStop, kLength, kCancelled, kError };
const char* FinishReasonName(FinishReason reason);

// What a request hears, one event per generated token; the last one has `finished` set.
struct TokenEvent {
  std::vector<int32_t> token_ids;      // new tokens (one per event, none on a finish-only event)
  std::string text;                    // new text: complete UTF-8 characters, never past a stop string
  std::vector<SampleResult> logprobs;  // per new token, when the request asked for logprobs
  bool finished = false;
  FinishReason reason = FinishReason::kLength;
  std::string stop_reason;  // the stop string, or "token <id>", that ended it
  absl::Status error;       // set with kError, and with kCancelled when a deadline passed
  int64_t prompt_tokens = 0, completion_tokens = 0;
  double queue_seconds = 0, time_to_first_token_seconds = 0, total_seconds = 0;
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  SamplingParams params;  // validated by Submit
  std::optional<absl::Time> deadline;
  // Called on the engine thread: must not block. The call with `finished` is the last.
  std::function<void(const TokenEvent&)> on_event;
};

class Engine {
 public:
  // Takes the runner (and its model); `tokenizer` (may be null: ids only, no stop strings) must outlive
  // the engine.
  static absl::StatusOr<std::unique_ptr<Engine>> Start(std::unique_ptr<runner::ModelRunner> runner,
                                                       const tokenizer::Tokenizer* tokenizer,
                                                       const EngineOptions& options);
  ~Engine();  // Shutdown(zero grace) if not done yet
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and enqueues. INVALID_ARGUMENT names the field and limit (empty or over-long prompt, ids
  // outside the vocabulary, bad sampling values, stop strings without a tokenizer); RESOURCE_EXHAUSTED
  // when the queue is full, or when prompt + max_tokens needs more KV blocks than the cache holds;
  // UNAVAILABLE once shutting down. A request waits in the queue until a slot and its KV blocks are
  // free. Returns a handle for Cancel.
  absl::StatusOr<uint64_t> Submit(EngineRequest request);
  // Ends the request at the next step (finish reason kCancelled) and frees its slot. Unknown or
  // finished handles are ignored.
  void Cancel(uint64_t handle);
  // Stops admitting, lets running and queued requests finish for up to `grace`, then cancels the rest
  // and stops the thread. Idempotent.
  void Shutdown(absl::Duration grace);

  struct Stats {
    int64_t running = 0, waiting = 0, free_slots = 0, steps = 0;
  };
  Stats stats() const;
  const models::qwen35::Qwen35Model& model() const { return runner_->model(); }
  const runner::ModelRunner& runner() const { return *runner_; }
  // Limits the front ends report and validate against (the runner's, fixed at start).
  int64_t max_model_len() const { return runner_->options().max_model_len; }
  int64_t max_num_seqs() const { return runner_->options().max_seqs; }

 private:
  struct Sequence;
  struct ForwardGroup;
  Engine(std::unique_ptr<runner::ModelRunner> runner, const tokenizer::Tokenizer* tokenizer,
         const EngineOptions& options);
  void Loop();
  // One scheduler iteration over the running set; returns false when there was nothing to do.
  bool Step();
  // The next step's passes: every running decode (fed from the device while its last sample is still in
  // flight), then prefill chunks within the token budget.
  void Schedule(ForwardGroup& decodes, ForwardGroup& prefills);
  // Whether the scheduled passes may be launched before the passes in flight are collected.
  bool CanOverlap(const ForwardGroup& decodes, const ForwardGroup& prefills) const;
  // Queues one forward pass over `group` (all decodes, or all prefill chunks) and its sampling.
  void Launch(ForwardGroup& group);
  // Waits for each group's samples and streams them; sequences that ended meanwhile drop theirs.
  void Complete(std::vector<ForwardGroup>& groups);
  void Finish(Sequence& seq, FinishReason reason, absl::Status error, std::string stop_reason);
  bool ShouldTimeLayers(StepPhase phase);
  // Admitted sequences not yet finished (a finished one may still hold its slot while a pass is in flight).
  int64_t CountRunning() const;
  void ReportGauges();

  std::unique_ptr<runner::ModelRunner> runner_;  // engine thread only, but for its constant capacity
  const tokenizer::Tokenizer* tokenizer_;
  EngineOptions options_;

  mutable std::mutex mu_;
  std::condition_variable wake_;     // work arrived, or stop
  std::condition_variable drained_;  // running + waiting became empty
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::set<uint64_t> cancelled_;
  bool admitting_ = true;
  bool stop_ = false;
  uint64_t next_handle_ = 1;
  int64_t running_count_ = 0;  // CountRunning(), for stats(), Submit and draining
  int64_t steps_ = 0;

  // Engine thread only.
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<ForwardGroup> in_flight_;  // the last step's passes, launched and not yet collected
  std::unique_ptr<models::LayerTimer> layer_timer_;  // when layer metrics are on
  int64_t steps_by_phase_[2] = {0, 0};                 // for sampling, per StepPhase
  std::thread thread_;
};

}  // namespace deltaserve::engine

#endif  // DELTASERVE_SERVER_ENGINE_ENGINE_H_
