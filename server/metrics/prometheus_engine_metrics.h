// The engine's reports as Prometheus metrics (names in docs/metrics.md): per-layer latency histograms,
// request latencies and token counters, batch histograms and occupancy gauges, all labelled by model.
#ifndef DELTASERVE_SERVER_METRICS_PROMETHEUS_ENGINE_METRICS_H_
#define DELTASERVE_SERVER_METRICS_PROMETHEUS_ENGINE_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <string>
#include <vector>

#include "engine/engine_metrics.h"
#include "metrics/layer_series.h"
#include "models/layer_timer.h"

namespace deltaserve::metrics {

class PrometheusEngineMetrics : public engine::EngineMetrics {
 public:
  // Creates every series up front (so a scrape shows the model's layers before the first request);
  // `spans` is the model's TimedSpans(). `registry` must outlive this object.
  PrometheusEngineMetrics(prometheus::Registry& registry, const std::string& model,
                          const std::vector<models::TimedSpan>& spans);

  void OnStep(const engine::StepReport& step) override;
  void OnRequestFinished(const engine::RequestReport& request) override;
  void OnGauges(const engine::EngineGauges& gauges) override;

 private:
  LayerSeries layers_[2];  // by StepPhase
  prometheus::Histogram *ttft_, *itl_, *e2e_, *queue_, *prefill_, *decode_, *prompt_len_, *generation_len_;
  prometheus::Histogram *batch_size_, *iteration_tokens_;
  prometheus::Counter *prompt_tokens_, *generation_tokens_;
  std::map<std::string, prometheus::Counter*> finished_;
  prometheus::Gauge *running_, *waiting_, *state_pool_usage_, *kv_cache_usage_, *kv_cache_capacity_, *max_num_seqs_;
};

}  // namespace deltaserve::metrics

#endif  // DELTASERVE_SERVER_METRICS_PROMETHEUS_ENGINE_METRICS_H_
