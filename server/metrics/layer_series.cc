// Per-layer series (see layer_series.h).
#include "metrics/layer_series.h"

namespace deltaserve::metrics {

// 2.5 us (a small CPU layer) to 10 s (a long prefill); one set for the whole family, as Prometheus needs.
const prometheus::Histogram::BucketBoundaries kLayerBuckets = {2.5e-6, 5e-6, 1e-5,  2.5e-5, 5e-5, 1e-4, 2.5e-4,
                                                               5e-4,   1e-3, 2.5e-3, 5e-3,  0.01, 0.025, 0.05,
                                                               0.1,    0.25, 0.5,   1,     2.5,  10};

LayerSeries AddLayerSeries(prometheus::Registry& registry, const std::string& model, const std::string& phase,
                           const std::vector<models::TimedSpan>& spans) {
  auto& layer = prometheus::BuildHistogram()
                    .Name("deltaserve_layer_duration_seconds")
                    .Help("Time one engine step spent in one layer (token mixer, MLP, embedding, lm_head)")
                    .Register(registry);
  LayerSeries s;
  for (const models::TimedSpan& span : spans)
    s.layer.push_back(
        &layer.Add({{"model", model}, {"layer", span.layer}, {"kind", span.kind}, {"phase", phase}}, kLayerBuckets));
  s.passes = &prometheus::BuildCounter()
                  .Name("deltaserve_engine_steps_total")
                  .Help("Forward passes run, by phase (prefill chunks or single-token decodes)")
                  .Register(registry)
                  .Add({{"model", model}, {"phase", phase}});
  s.timed_passes = &prometheus::BuildCounter()
                        .Name("deltaserve_layer_timed_steps_total")
                        .Help("Forward passes whose layers were timed (--layer-metrics)")
                        .Register(registry)
                        .Add({{"model", model}, {"phase", phase}});
  return s;
}

void LayerSeries::OnPass(const std::vector<double>& layer_seconds) {
  passes->Increment();
  if (layer_seconds.empty()) return;
  timed_passes->Increment();
  for (size_t i = 0; i < layer_seconds.size() && i < layer.size(); ++i)
    if (layer_seconds[i] >= 0) layer[i]->Observe(layer_seconds[i]);
}

}  // namespace deltaserve::metrics
