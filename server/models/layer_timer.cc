// Steady-clock spans on CPU, device-event spans on CUDA (see layer_timer.h).
#include "models/layer_timer.h"

#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"

namespace deltaserve::models {

LayerTimer::LayerTimer(c10::Device device, size_t spans)
    : device_(device),
      seconds_(spans, -1.0),
      begun_(spans, false),
      cpu_begin_(spans),
      start_(spans),
      end_(spans),
      recorded_(spans, false) {}

void LayerTimer::Begin(size_t span) {
  if (span >= seconds_.size()) return;
  begun_[span] = true;
  if (device_.is_cpu()) {
    cpu_begin_[span] = std::chrono::steady_clock::now();
    return;
  }
  // BACKEND_DEFAULT keeps the backend's timing-capable event (PyTorch's default disables timing).
  if (!start_[span]) start_[span].emplace(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
  const c10::impl::VirtualGuardImpl guard(device_.type());
  start_[span]->record(guard.getStream(device_));
}

void LayerTimer::End(size_t span) {
  if (span >= seconds_.size() || !begun_[span]) return;
  if (device_.is_cpu()) {
    seconds_[span] = std::chrono::duration<double>(std::chrono::steady_clock::now() - cpu_begin_[span]).count();
    return;
  }
  if (!end_[span]) end_[span].emplace(device_.type(), c10::EventFlag::BACKEND_DEFAULT);
  const c10::impl::VirtualGuardImpl guard(device_.type());
  end_[span]->record(guard.getStream(device_));
  recorded_[span] = true;
}

absl::StatusOr<std::vector<double>> LayerTimer::Collect() {
  std::vector<double> out(seconds_.size(), -1.0);
  try {
    for (size_t i = 0; i < seconds_.size(); ++i) {
      if (device_.is_cpu()) {
        out[i] = seconds_[i];
      } else if (recorded_[i]) {
        end_[i]->synchronize();  // normally already complete: the step's logits were copied to the host
        out[i] = start_[i]->elapsedTime(*end_[i]) * 1e-3;
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("layer timer: ", e.what_without_backtrace()));
  }
  std::fill(seconds_.begin(), seconds_.end(), -1.0);
  std::fill(begun_.begin(), begun_.end(), false);
  std::fill(recorded_.begin(), recorded_.end(), false);
  return out;
}

}  // namespace deltaserve::models
