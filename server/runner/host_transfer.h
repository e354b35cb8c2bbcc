// The runner's host<->device traffic: uploads of a pass's packed inputs from pinned staging buffers
// (asynchronous, reused only once the copy that read them has finished) and each pass's one download.
#ifndef DELTASERVE_SERVER_RUNNER_HOST_TRANSFER_H_
#define DELTASERVE_SERVER_RUNNER_HOST_TRANSFER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>

namespace deltaserve::runner {

// A copy to pinned host memory queued on the device's stream; Wait() blocks until that copy alone has
// run. Move-only; the host tensor stays valid as long as this object or Wait's result lives.
class PendingDownload {
 public:
  PendingDownload();
  ~PendingDownload();
  PendingDownload(PendingDownload&&) noexcept;
  PendingDownload& operator=(PendingDownload&&) noexcept;
  // The host tensor, once its copy has finished. Throws c10::Error for a device error.
  at::Tensor Wait();

 private:
  friend class HostTransfer;
  struct Event;  // the CUDA event recorded after the copy, when on CUDA
  at::Tensor host_;
  std::unique_ptr<Event> event_;
};

class HostTransfer {
 public:
  explicit HostTransfer(c10::Device device);
  ~HostTransfer();
  HostTransfer(const HostTransfer&) = delete;
  HostTransfer& operator=(const HostTransfer&) = delete;

  // Fills `n` int64 values through `fill` and copies them into `dst` (a device tensor of at least n
  // elements; null: a fresh one) on the current stream without waiting. Returns the destination's first
  // n elements. On CPU the staging buffer itself is returned (no copy).
  at::Tensor Upload(int64_t n, const std::function<void(int64_t*)>& fill, const at::Tensor* dst = nullptr);

  // Queues a copy of `src` (any device, contiguous) into fresh pinned host memory on the current stream
  // and returns without waiting, so the host can prepare the next pass while this one runs. On CPU the
  // copy is made at once.
  PendingDownload StartDownload(const at::Tensor& src);
  // StartDownload(src).Wait(): the copy and the one synchronisation of a pass run to completion.
  at::Tensor Download(const at::Tensor& src) { return StartDownload(src).Wait(); }

  // A pinned (CUDA) or plain (CPU) host tensor.
  at::Tensor HostTensor(int64_t n, at::ScalarType dtype) const;

 private:
  struct Events;  // CUDA events, when on CUDA
  c10::Device device_;
  // Ring of staging buffers: a buffer is reused kStaging uploads later. A pass makes up to two uploads
  // and the engine keeps one step (two passes) in flight, so the copy that last read a buffer finished
  // steps ago and the guard below never waits in practice.
  static constexpr int kStaging = 16;
  std::array<at::Tensor, kStaging> staging_;
  int next_ = 0;
  std::unique_ptr<Events> events_;
};

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_HOST_TRANSFER_H_
