// What the engine reports while it runs: per-step figures (batch, phase, per-layer seconds, token
// latencies) and per-request figures at finish. server/metrics implements it for Prometheus.
#ifndef DELTASERVE_SERVER_ENGINE_ENGINE_METRICS_H_
#define DELTASERVE_SERVER_ENGINE_ENGINE_METRICS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace deltaserve::engine {

// What one forward pass ran: prompt chunks (the chunked prefill path) or single-token decodes. An engine
// step runs at most one pass of each.
enum class StepPhase { kPrefill, kDecode };
const char* StepPhaseName(StepPhase phase);

// Which steps get per-layer timing.
enum class LayerMetricsMode { kOff, kSampled, kAll };

// Whether pass number `index` (counted from 0, per phase) is timed: none, all, or under kSampled every
// round(1 / sample_rate)-th pass starting with the first, so short runs are seen too.
inline bool IsTimedPass(LayerMetricsMode mode, double sample_rate, int64_t index) {
  if (mode == LayerMetricsMode::kOff) return false;
  if (mode == LayerMetricsMode::kAll) return true;
  return index % std::max<int64_t>(1, std::llround(1.0 / sample_rate)) == 0;
}

// One forward pass.
struct StepReport {
  StepPhase phase = StepPhase::kDecode;
  int64_t sequences = 0;  // in the batch
  int64_t tokens = 0;     // decodes plus prefill chunk tokens
  int64_t prompt_tokens = 0;  // prefill tokens among `tokens`
  int64_t generated_tokens = 0;  // tokens sampled this step
  // Seconds per model TimedSpan when this step was timed; empty otherwise.
  std::vector<double> layer_seconds;
  std::vector<double> time_to_first_token;  // seconds, for requests whose first token came this step
  std::vector<double> inter_token;          // seconds since the previous token, for the others
};

// The engine's occupancy, reported after every scheduler iteration (also when no step ran).
struct EngineGauges {
  int64_t running = 0, waiting = 0;              // sequences holding slots, requests queued
  double state_pool_usage = 0, kv_cache_usage = 0;  // fill of the slot pool and of KV blocks, 0..1
  // Capacity, constant while the engine runs: sequence slots and KV cache tokens (blocks x block size).
  int64_t max_num_seqs = 0, kv_cache_tokens = 0;
};

struct RequestReport {
  const char* finished_reason = "";  // FinishReasonName
  int64_t prompt_tokens = 0, generation_tokens = 0;
  double e2e_seconds = 0;
  double queue_seconds = -1;    // < 0: never admitted (cancelled while queued)
  double prefill_seconds = -1;  // admitted to first token; < 0 when no token came
  double decode_seconds = -1;   // first token to finish; < 0 when no token came
};

// Called on the engine thread: implementations must be cheap and must not block.
class EngineMetrics {
 public:
  virtual ~EngineMetrics() = default;
  virtual void OnStep(const StepReport& step) = 0;
  virtual void OnRequestFinished(const RequestReport& request) = 0;
  virtual void OnGauges(const EngineGauges& gauges) = 0;
};

}  // namespace deltaserve::engine

#endif  // DELTASERVE_SERVER_ENGINE_ENGINE_METRICS_H_
