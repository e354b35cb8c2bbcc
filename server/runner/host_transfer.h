// The runner's host<->device traffic: uploads of a pass's packed inputs from pinned staging buffers
// (asynchronous, reused only once the copy that read them has finished) and the step's one download.
#ifndef DELTASERVE_SERVER_RUNNER_HOST_TRANSFER_H_
#define DELTASERVE_SERVER_RUNNER_HOST_TRANSFER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>

namespace deltaserve::runner {

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

  // Copies `src` (any device, contiguous) to pinned host memory on the current stream and waits for that
  // copy alone: the step's one synchronisation. Returns a host tensor valid until the next Download.
  at::Tensor Download(const at::Tensor& src);

  // A pinned (CUDA) or plain (CPU) host tensor.
  at::Tensor HostTensor(int64_t n, at::ScalarType dtype) const;

 private:
  struct Events;  // CUDA events, when on CUDA
  c10::Device device_;
  std::array<at::Tensor, 2> staging_;  // ring: a buffer is reused two uploads later
  int next_ = 0;
  at::Tensor download_;
  std::unique_ptr<Events> events_;
};

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_HOST_TRANSFER_H_
