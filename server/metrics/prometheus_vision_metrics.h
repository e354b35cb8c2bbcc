// The vision batcher's reports as Prometheus metrics: per-block latency in the shared
// deltaserve_layer_duration_seconds histogram (phase "vision"), batch sizes, images and request latency.
#ifndef DELTASERVE_SERVER_METRICS_PROMETHEUS_VISION_METRICS_H_
#define DELTASERVE_SERVER_METRICS_PROMETHEUS_VISION_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>
#include <vector>

#include "engine/vision_batcher.h"
#include "metrics/layer_series.h"
#include "models/layer_timer.h"

namespace deltaserve::metrics {

class PrometheusVisionMetrics : public engine::VisionMetrics {
 public:
  // Creates every series up front; `spans` is the detector's TimedSpans(). `registry` must outlive this.
  PrometheusVisionMetrics(prometheus::Registry& registry, const std::string& model,
                          const std::vector<models::TimedSpan>& spans);
  void OnBatch(int64_t images, double inference_seconds, const std::vector<double>& layer_seconds) override;
  void OnRequest(double seconds, bool ok) override;

 private:
  LayerSeries layers_;
  prometheus::Counter *images_, *ok_, *failed_;
  prometheus::Histogram *batch_size_, *inference_, *latency_;
};

}  // namespace deltaserve::metrics

#endif  // DELTASERVE_SERVER_METRICS_PROMETHEUS_VISION_METRICS_H_
