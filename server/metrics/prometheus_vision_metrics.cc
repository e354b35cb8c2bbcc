// Vision series and their observations (see the header; names in docs/metrics.md).
#include "metrics/prometheus_vision_metrics.h"

namespace deltaserve::metrics {
namespace {

using prometheus::Histogram;

const Histogram::BucketBoundaries kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                     0.25,  0.5,    1,     2.5,  5,     10};

}  // namespace

PrometheusVisionMetrics::PrometheusVisionMetrics(prometheus::Registry& registry, const std::string& model,
                                                 const std::vector<models::TimedSpan>& spans) {
  layers_ = AddLayerSeries(registry, model, "vision", spans);
  images_ = &prometheus::BuildCounter()
                 .Name("deltaserve_vision_images_total")
                 .Help("Images run through the detector")
                 .Register(registry)
                 .Add({{"model", model}});
  auto& requests = prometheus::BuildCounter()
                       .Name("deltaserve_vision_requests_total")
                       .Help("Detection requests answered by the vision engine, by outcome")
                       .Register(registry);
  ok_ = &requests.Add({{"model", model}, {"outcome", "ok"}});
  failed_ = &requests.Add({{"model", model}, {"outcome", "failed"}});
  auto histogram = [&](const char* name, const char* help, const Histogram::BucketBoundaries& b) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({{"model", model}}, b);
  };
  batch_size_ = histogram("deltaserve_vision_batch_size", "Images in one detector forward pass",
                          {1, 2, 4, 8, 16, 32, 64, 128});
  inference_ = histogram("deltaserve_vision_inference_seconds", "One detector forward pass", kLatencyBuckets);
  latency_ = histogram("deltaserve_vision_request_latency_seconds",
                       "Request queued to answered inside the vision engine", kLatencyBuckets);
}

void PrometheusVisionMetrics::OnBatch(int64_t images, double inference_seconds,
                                      const std::vector<double>& layer_seconds) {
  layers_.OnPass(layer_seconds);
  images_->Increment(static_cast<double>(images));
  batch_size_->Observe(static_cast<double>(images));
  inference_->Observe(inference_seconds);
}

void PrometheusVisionMetrics::OnRequest(double seconds, bool ok) {
  (ok ? ok_ : failed_)->Increment();
  latency_->Observe(seconds);
}

}  // namespace deltaserve::metrics
