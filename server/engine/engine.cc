// Continuous batching: each step feeds every running decode one token and fills the rest of the token
// budget with prefill chunks of admitted prompts, so a long prompt never stalls running streams for
// more than one step; sequences join the moment a slot frees and leave the moment they finish.
#include "engine/engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/text_stream.h"

namespace deltaserve::engine {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

const char* StepPhaseName(StepPhase phase) { return phase == StepPhase::kPrefill ? "prefill" : "decode"; }

struct Engine::Sequence {
  uint64_t handle = 0;
  EngineRequest request;
  std::optional<Sampler> sampler;  // handed to the runner at admission
  TextStream text;
  int64_t slot = -1;
  size_t prefilled = 0;     // prompt tokens launched into the slot's state
  int32_t next_token = -1;  // sampled and read back, not yet fed back
  int64_t completion = 0;   // tokens streamed
  int64_t pending_samples = 0;  // launched passes that sample it, not yet collected (0 or 1)
  int64_t in_flight = 0;        // launched passes that include it, not yet collected: its slot stays
                                // taken until 0, even once done
  bool done = false;
  bool counted_running = false;  // included in running_count_ (admitted, not yet finished)
  std::chrono::steady_clock::time_point submitted, admitted, first_token, last_token;

  Sequence(EngineRequest r, Sampler s, const tokenizer::Tokenizer* tok)
      : request(std::move(r)), sampler(std::move(s)), text(tok, request.params.stop) {}
  bool prefilling() const { return prefilled < request.prompt.size(); }
};

// One forward pass's sequences, what the runner runs for them and, once launched, the pass in flight.
struct Engine::ForwardGroup {
  StepPhase phase = StepPhase::kDecode;
  std::vector<Sequence*> batch;
  runner::ScheduledBatch scheduled;
  std::optional<runner::PendingStep> pending;

  explicit ForwardGroup(StepPhase p) : phase(p) {}
  bool empty() const { return batch.empty(); }
  void Add(Sequence* seq, std::vector<int32_t> t, bool sample, bool feed = false) {
    batch.push_back(seq);
    scheduled.sequences.push_back({seq->slot, std::move(t), sample, feed});
  }
  // Removes the sequences that ended before launch.
  void DropDone() {
    size_t kept = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i]->done) continue;
      if (kept != i) {  // a self-move would empty the tokens
        batch[kept] = batch[i];
        scheduled.sequences[kept] = std::move(scheduled.sequences[i]);
      }
      ++kept;
    }
    batch.resize(kept);
    scheduled.sequences.resize(kept);
  }
};

namespace {
double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Positions a request may occupy: its prompt and every token it may generate. The runner reserves KV
// blocks for all of them at admission, so a running sequence never waits for memory.
int64_t Footprint(const EngineRequest& r, int64_t max_model_len) {
  return std::min<int64_t>(static_cast<int64_t>(r.prompt.size()) + r.params.max_new_tokens, max_model_len);
}
}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Start(std::unique_ptr<runner::ModelRunner> runner,
                                                      const tokenizer::Tokenizer* tokenizer,
                                                      const EngineOptions& options) {
  if (!runner) return absl::InvalidArgumentError("engine: no model runner");
  if (options.layer_metrics == LayerMetricsMode::kSampled &&
      !(options.layer_metrics_sample_rate > 0 && options.layer_metrics_sample_rate <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("engine: layer_metrics_sample_rate must be in (0, 1], got ",
                                                   options.layer_metrics_sample_rate));
  }
  if (options.intra_op_threads < 0)
    return absl::InvalidArgumentError(absl::StrCat("engine: intra_op_threads must be >= 0, got ", options.intra_op_threads));
  if (options.max_queue < 1 || options.max_batched_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine: max_queue and max_batched_tokens must be >= 1, got ", options.max_queue,
                     " and ", options.max_batched_tokens));
  }
  if (options.prefill_chunk < 64 || options.prefill_chunk % 64 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine: prefill_chunk must be a positive multiple of 64, got ", options.prefill_chunk));
  }
  auto engine = std::unique_ptr<Engine>(new Engine(std::move(runner), tokenizer, options));
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::Engine(std::unique_ptr<runner::ModelRunner> runner, const tokenizer::Tokenizer* tokenizer,
               const EngineOptions& options)
    : runner_(std::move(runner)), tokenizer_(tokenizer), options_(options) {
  if (options_.metrics && options_.layer_metrics != LayerMetricsMode::kOff) {
    layer_timer_ =
        std::make_unique<models::LayerTimer>(model().options().device, model().TimedSpans().size());
  }
}

Engine::~Engine() { Shutdown(absl::ZeroDuration()); }

absl::StatusOr<uint64_t> Engine::Submit(EngineRequest request) {
  const models::qwen35::Qwen35Config& c = model().config();
  const int64_t max_len = runner_->options().max_model_len;
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: empty; give at least one token");
  if (static_cast<int64_t>(request.prompt.size()) + request.params.max_new_tokens > max_len) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", request.prompt.size(),
                                                   " tokens) + max_tokens (", request.params.max_new_tokens,
                                                   ") exceeds max_model_len ", max_len));
  }
  if (!tokenizer_ && !request.params.stop.empty()) {
    return absl::InvalidArgumentError(
        "stop: this model has no tokenizer, so stop strings cannot match; use "
        "stop_token_ids");
  }
  if (!request.on_event) return absl::InvalidArgumentError("on_event: a callback is required");
  // The runner's capacity is fixed once it runs, so this reads nothing the engine thread writes.
  if (absl::Status fits = runner_->CheckFits(Footprint(request, max_len)); !fits.ok()) return fits;
  absl::StatusOr<Sampler> sampler = Sampler::Create(request.params, c.vocab_size, request.prompt);
  if (!sampler.ok()) return sampler.status();
  auto seq = std::make_unique<Sequence>(std::move(request), std::move(sampler).value(), tokenizer_);
  seq->submitted = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  if (!admitting_) return absl::UnavailableError("engine: shutting down, not admitting requests");
  // Requests that free slots will take at the next step are not waiting for a slot: only the rest count
  // against max_queue, so a burst within capacity is never refused.
  const int64_t unclaimed = std::max<int64_t>(0, runner_->options().max_seqs - running_count_);
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_queue + unclaimed) {
    // Count what waits beyond the free slots, the quantity max_queue bounds.
    return absl::ResourceExhaustedError(absl::StrCat("queue full: ", static_cast<int64_t>(waiting_.size()) - unclaimed,
                                                     " requests waiting for a slot (max_queue ", options_.max_queue,
                                                     "); retry later"));
  }
  seq->handle = next_handle_++;
  const uint64_t handle = seq->handle;
  waiting_.push_back(std::move(seq));
  wake_.notify_one();
  return handle;
}

void Engine::Cancel(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_.insert(handle);
  wake_.notify_one();
}

Engine::Stats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s;
  s.running = running_count_;
  s.waiting = static_cast<int64_t>(waiting_.size());
  s.free_slots = runner_->options().max_seqs - running_count_;
  s.steps = steps_;
  return s;
}

void Engine::Shutdown(absl::Duration grace) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) return;
    admitting_ = false;
    drained_.wait_for(lock, absl::ToChronoNanoseconds(grace),
                      [this] { return waiting_.empty() && running_count_ == 0; });
    stop_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::Finish(Sequence& seq, FinishReason reason, absl::Status error, std::string stop_reason) {
  TokenEvent e;
  e.finished = true;
  e.reason = reason;
  e.error = std::move(error);
  e.stop_reason = std::move(stop_reason);
  if (reason == FinishReason::kLength) e.text = seq.text.Finish();
  e.prompt_tokens = static_cast<int64_t>(seq.request.prompt.size());
  e.completion_tokens = seq.completion;
  const auto now = std::chrono::steady_clock::now();
  e.total_seconds = Seconds(seq.submitted, now);
  if (seq.admitted.time_since_epoch().count()) e.queue_seconds = Seconds(seq.submitted, seq.admitted);
  if (seq.completion > 0) e.time_to_first_token_seconds = Seconds(seq.submitted, seq.first_token);
  seq.done = true;
  if (seq.counted_running) {
    // Its slot is as good as free: a client that saw this stream end may submit again at once, and
    // Submit must not count this sequence against the queue (the slot itself is released after the step).
    std::lock_guard<std::mutex> lock(mu_);
    --running_count_;
    seq.counted_running = false;
  }
  // Metrics first, so a client that saw its stream end also sees the request counted.
  if (options_.metrics) {
    RequestReport r;
    r.finished_reason = FinishReasonName(reason);
    r.prompt_tokens = e.prompt_tokens;
    r.generation_tokens = seq.completion;
    r.e2e_seconds = e.total_seconds;
    if (seq.admitted.time_since_epoch().count()) r.queue_seconds = e.queue_seconds;
    if (seq.completion > 0) {
      r.prefill_seconds = Seconds(seq.admitted, seq.first_token);
      r.decode_seconds = Seconds(seq.first_token, now);
    }
    options_.metrics->OnRequestFinished(r);
  }
  seq.request.on_event(e);
}

int64_t Engine::CountRunning() const {
  return std::count_if(running_.begin(), running_.end(), [](const auto& seq) { return seq->counted_running; });
}

bool Engine::ShouldTimeLayers(StepPhase phase) {
  const int64_t n = steps_by_phase_[static_cast<int>(phase)]++;
  return layer_timer_ && IsTimedPass(options_.layer_metrics, options_.layer_metrics_sample_rate, n);
}

void Engine::ReportGauges() {
  if (!options_.metrics) return;
  EngineGauges g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    g.waiting = static_cast<int64_t>(waiting_.size());
  }
  const runner::RunnerCapacity cap = runner_->capacity();
  g.running = static_cast<int64_t>(running_.size());
  g.state_pool_usage = static_cast<double>(g.running) / static_cast<double>(cap.slots);
  g.kv_cache_usage = static_cast<double>(runner_->used_kv_blocks()) / static_cast<double>(cap.kv_blocks);
  g.max_num_seqs = cap.slots;
  g.kv_cache_tokens = cap.kv_tokens();
  options_.metrics->OnGauges(g);
}

void Engine::Loop() {
  // OpenMP's thread count is per calling thread, so it is set here, on the thread that runs the model.
  if (options_.intra_op_threads > 0) at::set_num_threads(options_.intra_op_threads);
  while (true) {
    std::vector<std::unique_ptr<Sequence>> dropped;  // cancelled while still waiting
    std::vector<Sequence*> cancelled;                // cancelled while running
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock,
                 [this] { return stop_ || !waiting_.empty() || !running_.empty() || !cancelled_.empty(); });
      if (stop_) {
        for (auto& s : waiting_) dropped.push_back(std::move(s));
        waiting_.clear();
      }
      // Cancellations: a waiting request leaves the queue; a running one is finished below.
      for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (cancelled_.count((*it)->handle)) {
          cancelled_.erase((*it)->handle);
          dropped.push_back(std::move(*it));
          it = waiting_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto& seq : running_) {
        if (!seq->done && (stop_ || cancelled_.count(seq->handle))) {
          cancelled_.erase(seq->handle);
          cancelled.push_back(seq.get());  // finished below, outside the lock
        }
      }
      // Admission: FIFO, while a slot and the head request's KV blocks are free (a request that does not
      // fit yet waits for running ones to finish; Submit refused those that never fit).
      const int64_t max_len = runner_->options().max_model_len;
      while (!stop_ && !waiting_.empty() && runner_->CanAdmit(Footprint(waiting_.front()->request, max_len))) {
        std::unique_ptr<Sequence> seq = std::move(waiting_.front());
        absl::StatusOr<int64_t> slot =
            runner_->AddSequence(std::move(*seq->sampler), Footprint(seq->request, max_len));
        if (!slot.ok()) break;  // CanAdmit said yes: not expected; the request stays queued
        waiting_.pop_front();
        seq->sampler.reset();
        seq->slot = *slot;
        seq->admitted = std::chrono::steady_clock::now();
        seq->counted_running = true;
        running_.push_back(std::move(seq));
      }
      running_count_ = CountRunning();
      cancelled_.clear();  // handles not found are finished or unknown: nothing to do
    }
    for (auto& seq : dropped) Finish(*seq, FinishReason::kCancelled, absl::OkStatus(), "");
    for (Sequence* seq : cancelled) Finish(*seq, FinishReason::kCancelled, absl::OkStatus(), "");
    const bool stopping = [this] {
      std::lock_guard<std::mutex> lock(mu_);
      return stop_;
    }();
    if (!stopping) {
      Step();
    } else {
      Complete(in_flight_);  // everything is finished: the passes' results are dropped
    }
    // Release finished sequences' slots once no pass in flight uses them.
    for (auto it = running_.begin(); it != running_.end();) {
      if ((*it)->done && (*it)->in_flight == 0) {
        runner_->RemoveSequence((*it)->slot);
        it = running_.erase(it);
      } else {
        ++it;
      }
    }
    ReportGauges();
    std::lock_guard<std::mutex> lock(mu_);
    running_count_ = CountRunning();
    if (running_.empty() && waiting_.empty()) drained_.notify_all();
    if (stop_ && running_.empty()) return;
  }
}

bool Engine::Step() {
  const absl::Time wall = absl::Now();
  // Deadlines first: past-deadline requests stop before spending compute.
  for (auto& seq : running_) {
    if (!seq->done && seq->request.deadline && wall > *seq->request.deadline) {
      Finish(*seq, FinishReason::kCancelled, absl::DeadlineExceededError("deadline exceeded"), "");
    }
  }
  ForwardGroup decodes(StepPhase::kDecode), prefills(StepPhase::kPrefill);
  Schedule(decodes, prefills);
  for (ForwardGroup* g : {&decodes, &prefills}) {
    if (!g->empty() && ShouldTimeLayers(g->phase)) g->scheduled.timer = layer_timer_.get();
  }
  std::vector<ForwardGroup> previous = std::move(in_flight_);
  in_flight_.clear();
  const bool worked = !previous.empty() || !decodes.empty() || !prefills.empty();
  if (CanOverlap(decodes, prefills)) {
    for (ForwardGroup* g : {&decodes, &prefills}) {
      if (g->empty()) continue;
      Launch(*g);
      in_flight_.push_back(std::move(*g));
    }
    Complete(previous);  // while the device runs the passes just launched
    return worked;
  }
  // One pass at a time. The passes in flight come first: their tokens may end sequences scheduled above.
  Complete(previous);
  for (ForwardGroup* g : {&decodes, &prefills}) {
    g->DropDone();
    if (g->empty()) continue;
    const bool timed = g->scheduled.timer != nullptr;
    Launch(*g);
    in_flight_.push_back(std::move(*g));
    if (!options_.async_scheduling || timed) Complete(in_flight_);
  }
  return worked;
}

void Engine::Schedule(ForwardGroup& decodes, ForwardGroup& prefills) {
  // Every running decode gets its token; prefill chunks fill the rest of the budget. The two groups run
  // as separate forward passes: decodes always take the model's batched single-token path, which a
  // pass mixed with prompt chunks would lose (the chunked path costs far more per sequence).
  const int64_t max_len = runner_->options().max_model_len;
  int64_t budget = options_.max_batched_tokens;
  for (auto& seq : running_) {
    if (seq->done || seq->prefilling()) continue;
    if (seq->pending_samples == 0) {
      decodes.Add(seq.get(), {seq->next_token}, /*sample=*/true);
    } else {
      // Its last token is still on its way back. If that token is certain to end the request by
      // length, there is nothing more to compute; otherwise the device feeds it.
      const int64_t tokens = seq->completion + seq->pending_samples;
      if (tokens >= seq->request.params.max_new_tokens ||
          static_cast<int64_t>(seq->request.prompt.size()) + tokens >= max_len) {
        continue;
      }
      decodes.Add(seq.get(), {}, /*sample=*/true, /*feed=*/true);
    }
    --budget;
  }
  for (auto& seq : running_) {
    if (seq->done || !seq->prefilling()) continue;
    const int64_t remaining = static_cast<int64_t>(seq->request.prompt.size() - seq->prefilled);
    int64_t chunk = std::min({remaining, options_.prefill_chunk, budget});
    // Whole kernel chunks unless it is the prompt's tail; a step always makes progress.
    if (chunk < remaining) chunk = chunk / 64 * 64;
    if (chunk <= 0) {
      if (!decodes.empty() || !prefills.empty()) continue;
      chunk = std::min<int64_t>(remaining, 64);
    }
    const bool last_chunk = seq->prefilled + static_cast<size_t>(chunk) == seq->request.prompt.size();
    prefills.Add(seq.get(),
                 std::vector<int32_t>(seq->request.prompt.begin() + seq->prefilled,
                                      seq->request.prompt.begin() + seq->prefilled + chunk),
                 /*sample=*/last_chunk);
    budget -= chunk;
  }
}

bool Engine::CanOverlap(const ForwardGroup& decodes, const ForwardGroup& prefills) const {
  if (!options_.async_scheduling) return false;
  // A timed pass runs eagerly and its timer is read right after it: it stands alone.
  if (decodes.scheduled.timer || prefills.scheduled.timer) return false;
  for (const ForwardGroup* g : {&decodes, &prefills}) {
    for (const Sequence* seq : g->batch) {
      if (seq->pending_samples > 0 && runner::UsesHistory(seq->request.params)) return false;
    }
  }
  return true;
}

void Engine::Launch(ForwardGroup& group) {
  for (size_t i = 0; i < group.batch.size(); ++i) {
    Sequence& seq = *group.batch[i];
    const runner::ScheduledSequence& s = group.scheduled.sequences[i];
    ++seq.in_flight;
    if (s.sample) ++seq.pending_samples;
    if (seq.prefilling()) seq.prefilled += s.tokens.size();
  }
  absl::StatusOr<runner::PendingStep> pending = runner_->Launch(group.scheduled);
  if (pending.ok()) {
    group.pending.emplace(*std::move(pending));
    return;
  }
  // Nothing of the pass runs: its sequences end here (their slots were reset by the runner).
  for (Sequence* seq : group.batch) {
    if (!seq->done) Finish(*seq, FinishReason::kError, pending.status(), "");
  }
}

void Engine::Complete(std::vector<ForwardGroup>& groups) {
  for (ForwardGroup& group : groups) {
    const std::vector<Sequence*>& batch = group.batch;
    const std::vector<runner::ScheduledSequence>& scheduled = group.scheduled.sequences;
    StepReport report;
    report.phase = group.phase;
    report.sequences = static_cast<int64_t>(batch.size());
    for (const runner::ScheduledSequence& s : scheduled) {
      const int64_t n = s.feed_last_sample ? 1 : static_cast<int64_t>(s.tokens.size());
      report.tokens += n;
      if (group.phase == StepPhase::kPrefill) report.prompt_tokens += n;
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      --batch[i]->in_flight;
      if (scheduled[i].sample) --batch[i]->pending_samples;
    }
    absl::StatusOr<runner::StepOutput> out = absl::InternalError("the pass was not launched");
    if (group.pending) out = runner_->Collect(*std::move(group.pending));
    const auto now = std::chrono::steady_clock::now();
    models::LayerTimer* timer = group.scheduled.timer;
    if (timer && out.ok()) {
      // The pass's samples are on the host already, so its events have completed: no extra wait.
      absl::StatusOr<std::vector<double>> seconds = timer->Collect();
      if (seconds.ok()) report.layer_seconds = *std::move(seconds);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++steps_;
    }
    if (!out.ok()) {
      for (Sequence* seq : batch) {
        if (!seq->done) Finish(*seq, FinishReason::kError, out.status(), "");
      }
      if (options_.metrics) options_.metrics->OnStep(report);
      continue;
    }
    const int64_t max_len = runner_->options().max_model_len;
    for (size_t i = 0; i < batch.size(); ++i) {
      Sequence& seq = *batch[i];
      // A prompt chunk before the last has nothing to predict; a sequence that ended since the launch
      // (a stop token in the previous step, a cancellation) drops what was computed for it.
      if (!out->samples[i] || seq.done) continue;
      const absl::StatusOr<SampleResult>& r = *out->samples[i];
      if (!r.ok()) {
        Finish(seq, FinishReason::kError, r.status(), "");
        continue;
      }
      if (seq.completion == 0) {
        seq.first_token = now;
        report.time_to_first_token.push_back(Seconds(seq.submitted, now));
      } else {
        report.inter_token.push_back(Seconds(seq.last_token, now));
      }
      seq.last_token = now;
      ++report.generated_tokens;
      ++seq.completion;
      seq.next_token = r->token_id;
      TokenEvent e;
      e.token_ids.push_back(r->token_id);
      e.text = seq.text.Push(r->token_id);
      if (seq.request.params.logprobs) e.logprobs.push_back(*r);
      e.prompt_tokens = static_cast<int64_t>(seq.request.prompt.size());
      e.completion_tokens = seq.completion;
      const int64_t total = e.prompt_tokens + seq.completion;
      std::optional<FinishReason> reason;
      std::string stop_reason;
      if (IsStopToken(seq.request.params, r->token_id)) {
        reason = FinishReason::kStop;
        stop_reason = absl::StrCat("token ", r->token_id);
      } else if (seq.text.stopped()) {
        reason = FinishReason::kStop;
        stop_reason = seq.text.stop_string();
      } else if (seq.completion >= seq.request.params.max_new_tokens || total >= max_len) {
        reason = FinishReason::kLength;
      }
      seq.request.on_event(e);
      if (reason) Finish(seq, *reason, absl::OkStatus(), stop_reason);
    }
    if (options_.metrics) options_.metrics->OnStep(report);
  }
  groups.clear();
}

}  // namespace deltaserve::engine
