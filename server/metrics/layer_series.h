// The per-layer series one model phase (prefill, decode, vision) exports: every timed span's
// deltaserve_layer_duration_seconds histogram and the pass counters, shared by the text and vision reporters.
#ifndef DELTASERVE_SERVER_METRICS_LAYER_SERIES_H_
#define DELTASERVE_SERVER_METRICS_LAYER_SERIES_H_

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>
#include <vector>

#include "models/layer_timer.h"

namespace deltaserve::metrics {

struct LayerSeries {
  std::vector<prometheus::Histogram*> layer;  // one per TimedSpan, in the model's order
  prometheus::Counter* passes = nullptr;        // deltaserve_engine_steps_total
  prometheus::Counter* timed_passes = nullptr;  // deltaserve_layer_timed_steps_total

  // One forward pass: counted, and when `layer_seconds` is not empty (a timed pass) each span observed
  // (negative entries are spans not timed this pass).
  void OnPass(const std::vector<double>& layer_seconds);
};

// Creates (or finds, the registry merging families) the series of `model` in `phase`.
LayerSeries AddLayerSeries(prometheus::Registry& registry, const std::string& model, const std::string& phase,
                           const std::vector<models::TimedSpan>& spans);

}  // namespace deltaserve::metrics

#endif  // DELTASERVE_SERVER_METRICS_LAYER_SERIES_H_
