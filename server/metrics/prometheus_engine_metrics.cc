// Series creation and the mapping from engine reports to observations (see the header).
#include "metrics/prometheus_engine_metrics.h"

namespace deltaserve::metrics {
namespace {

using prometheus::Histogram;

// Request latencies, as vLLM's buckets with finer steps below 10 ms (CPU-sized models are fast).
const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                                  0.5,   0.75,   1.0,   2.5,  5.0,  7.5,  10,   20,   40,  80,
                                                  160,   640};
const Histogram::BucketBoundaries kItlBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
                                                 0.2,    0.3,   0.4,    0.5,   0.75, 1.0,   2.5,  5.0,   7.5, 10,
                                                 20,     40,    80};
const Histogram::BucketBoundaries kRequestBuckets = {0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1,   1.5, 2,   2.5,  5,
                                                     10,   15,   20,  30,  40,  50,  60,  120, 240, 480, 960,
                                                     1920, 7680};
// Token counts and batch sizes: powers of two.
Histogram::BucketBoundaries PowersOfTwo(int max_exponent) {
  Histogram::BucketBoundaries b;
  for (int e = 0; e <= max_exponent; ++e) b.push_back(static_cast<double>(int64_t{1} << e));
  return b;
}

}  // namespace

PrometheusEngineMetrics::PrometheusEngineMetrics(prometheus::Registry& registry, const std::string& model,
                                                 const std::vector<models::TimedSpan>& spans) {
  const prometheus::Labels m = {{"model", model}};
  for (const engine::StepPhase phase : {engine::StepPhase::kPrefill, engine::StepPhase::kDecode})
    layers_[static_cast<int>(phase)] = AddLayerSeries(registry, model, engine::StepPhaseName(phase), spans);
  auto histogram = [&](const char* name, const char* help, const Histogram::BucketBoundaries& buckets) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(m, buckets);
  };
  ttft_ = histogram("deltaserve_time_to_first_token_seconds", "Request received to its first token", kTtftBuckets);
  itl_ = histogram("deltaserve_inter_token_latency_seconds", "Gap between consecutive tokens of a request",
                   kItlBuckets);
  e2e_ = histogram("deltaserve_e2e_request_latency_seconds", "Request received to finished", kRequestBuckets);
  queue_ = histogram("deltaserve_request_queue_time_seconds", "Request received to admitted into a slot",
                     kRequestBuckets);
  prefill_ = histogram("deltaserve_request_prefill_time_seconds", "Request admitted to its first token",
                       kRequestBuckets);
  decode_ = histogram("deltaserve_request_decode_time_seconds", "Request's first token to finished",
                      kRequestBuckets);
  prompt_len_ = histogram("deltaserve_request_prompt_tokens", "Prompt tokens per finished request", PowersOfTwo(18));
  generation_len_ = histogram("deltaserve_request_generation_tokens", "Generated tokens per finished request",
                              PowersOfTwo(18));
  batch_size_ = histogram("deltaserve_batch_size", "Sequences in one engine step", PowersOfTwo(10));
  iteration_tokens_ = histogram("deltaserve_iteration_tokens",
                                "Tokens in one engine step: decodes plus prefill chunks", PowersOfTwo(16));
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add(m);
  };
  prompt_tokens_ = counter("deltaserve_prompt_tokens_total", "Prompt tokens prefilled");
  generation_tokens_ = counter("deltaserve_generation_tokens_total", "Tokens generated");
  auto& finished = prometheus::BuildCounter()
                       .Name("deltaserve_request_finished_total")
                       .Help("Requests that ended, by finish reason")
                       .Register(registry);
  for (const char* reason : {"stop", "length", "cancelled", "error"})
    finished_[reason] = &finished.Add({{"model", model}, {"finished_reason", reason}});
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add(m);
  };
  running_ = gauge("deltaserve_num_requests_running", "Sequences holding a slot");
  waiting_ = gauge("deltaserve_num_requests_waiting", "Requests queued for a slot");
  state_pool_usage_ = gauge("deltaserve_state_pool_usage_perc", "Recurrent-state slots in use, 0..1");
  kv_cache_usage_ = gauge("deltaserve_kv_cache_usage_perc", "Paged KV blocks in use (reserved) over all blocks, 0..1");
  kv_cache_capacity_ = gauge("deltaserve_kv_cache_capacity_tokens", "Paged KV cache capacity in tokens (blocks x block size)");
  max_num_seqs_ = gauge("deltaserve_max_num_seqs", "Sequence slots (recurrent and conv state) the runner holds");
}

void PrometheusEngineMetrics::OnStep(const engine::StepReport& step) {
  layers_[static_cast<int>(step.phase)].OnPass(step.layer_seconds);
  batch_size_->Observe(static_cast<double>(step.sequences));
  iteration_tokens_->Observe(static_cast<double>(step.tokens));
  prompt_tokens_->Increment(static_cast<double>(step.prompt_tokens));
  generation_tokens_->Increment(static_cast<double>(step.generated_tokens));
  for (const double s : step.time_to_first_token) ttft_->Observe(s);
  for (const double s : step.inter_token) itl_->Observe(s);
}

void PrometheusEngineMetrics::OnRequestFinished(const engine::RequestReport& r) {
  const auto it = finished_.find(r.finished_reason);
  if (it != finished_.end()) it->second->Increment();
  e2e_->Observe(r.e2e_seconds);
  if (r.queue_seconds >= 0) queue_->Observe(r.queue_seconds);
  if (r.prefill_seconds >= 0) prefill_->Observe(r.prefill_seconds);
  if (r.decode_seconds >= 0) decode_->Observe(r.decode_seconds);
  prompt_len_->Observe(static_cast<double>(r.prompt_tokens));
  generation_len_->Observe(static_cast<double>(r.generation_tokens));
}

void PrometheusEngineMetrics::OnGauges(const engine::EngineGauges& g) {
  running_->Set(static_cast<double>(g.running));
  waiting_->Set(static_cast<double>(g.waiting));
  state_pool_usage_->Set(g.state_pool_usage);
  kv_cache_usage_->Set(g.kv_cache_usage);
  kv_cache_capacity_->Set(static_cast<double>(g.kv_cache_tokens));
  max_num_seqs_->Set(static_cast<double>(g.max_num_seqs));
}

}  // namespace deltaserve::metrics
