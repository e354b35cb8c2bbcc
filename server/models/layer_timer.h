// Per-layer timing of one forward pass: a model brackets each layer's work with Begin/End; the timer
// measures with a steady clock on CPU, or with device events read only after the step on CUDA.
#ifndef DELTASERVE_SERVER_MODELS_LAYER_TIMER_H_
#define DELTASERVE_SERVER_MODELS_LAYER_TIMER_H_

#include <c10/core/Device.h>
#include <c10/core/Event.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace deltaserve::models {

// One timed part of a model, in forward order: what the metrics' `layer` and `kind` labels say.
struct TimedSpan {
  std::string layer;  // "0".."N-1", or "embedding" / "lm_head"
  std::string kind;   // linear_attention, full_attention, mlp, embedding, lm_head, padre, head ...
};

class LayerTimer {
 public:
  // `spans` is the number of TimedSpans the model reports; each Begin/End pair names one by index.
  LayerTimer(c10::Device device, size_t spans);
  LayerTimer(const LayerTimer&) = delete;
  LayerTimer& operator=(const LayerTimer&) = delete;

  // Brackets span `span`'s work for this forward pass. Spans must not overlap; a span may be skipped.
  // On CUDA these only enqueue events on the current stream: no synchronisation.
  void Begin(size_t span);
  void End(size_t span);

  // After the pass's results have reached the host (so the device is done with it): seconds per span,
  // negative for spans not timed this pass. Clears the timer for the next pass.
  absl::StatusOr<std::vector<double>> Collect();

 private:
  c10::Device device_;
  std::vector<double> seconds_;
  std::vector<bool> begun_;
  // CPU
  std::vector<std::chrono::steady_clock::time_point> cpu_begin_;
  // CUDA: one start and one end event per span, created on first use and reused.
  std::vector<std::optional<c10::Event>> start_, end_;
  std::vector<bool> recorded_;
};

}  // namespace deltaserve::models

#endif  // DELTASERVE_SERVER_MODELS_LAYER_TIMER_H_
