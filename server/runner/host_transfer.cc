// Pinned staging and each pass's one download (see host_transfer.h).
#include "runner/host_transfer.h"

#include <ATen/ATen.h>

#if DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace deltaserve::runner {

struct HostTransfer::Events {
#if DELTASERVE_WITH_CUDA
  std::array<at::cuda::CUDAEvent, kStaging> uploaded;  // the copy out of staging_[i] has run
#endif
};

struct PendingDownload::Event {
#if DELTASERVE_WITH_CUDA
  at::cuda::CUDAEvent done;
#endif
};

PendingDownload::PendingDownload() = default;
PendingDownload::~PendingDownload() = default;
PendingDownload::PendingDownload(PendingDownload&&) noexcept = default;
PendingDownload& PendingDownload::operator=(PendingDownload&&) noexcept = default;

at::Tensor PendingDownload::Wait() {
#if DELTASERVE_WITH_CUDA
  if (event_) {
    event_->done.synchronize();
    event_.reset();
  }
#endif
  return host_;
}

HostTransfer::HostTransfer(c10::Device device) : device_(device) {
  if (device_.is_cuda()) events_ = std::make_unique<Events>();
}

HostTransfer::~HostTransfer() = default;

at::Tensor HostTransfer::HostTensor(int64_t n, at::ScalarType dtype) const {
  return at::empty({n}, at::TensorOptions().dtype(dtype).pinned_memory(device_.is_cuda()));
}

at::Tensor HostTransfer::Upload(int64_t n, const std::function<void(int64_t*)>& fill, const at::Tensor* dst) {
  const int i = next_;
  next_ = (next_ + 1) % kStaging;
#if DELTASERVE_WITH_CUDA
  // The copy that last read this buffer was queued kStaging uploads ago; by now it has run (the engine
  // waits for every pass's download within a step of launching it), so this wait returns at once. It
  // guards the low-level Forward, which waits for nothing.
  if (events_) events_->uploaded[i].synchronize();
#endif
  if (!staging_[i].defined() || staging_[i].numel() < n) staging_[i] = HostTensor(std::max<int64_t>(n, 1024), at::kLong);
  at::Tensor host = staging_[i].narrow(0, 0, n);
  fill(host.data_ptr<int64_t>());
  if (!device_.is_cuda()) {
    if (dst == nullptr) return host.clone();  // the staging buffer is reused: the batch keeps its own copy
    at::Tensor out = dst->narrow(0, 0, n);
    out.copy_(host);
    return out;
  }
  at::Tensor out = dst ? dst->narrow(0, 0, n) : at::empty({n}, at::TensorOptions().dtype(at::kLong).device(device_));
  out.copy_(host, /*non_blocking=*/true);
#if DELTASERVE_WITH_CUDA
  // On the stream the copy ran on: the destination GPU's current stream, which is not the current
  // device's when that is another GPU (--device cuda:1).
  events_->uploaded[i].record(at::cuda::getCurrentCUDAStream(out.device().index()));
#endif
  return out;
}

PendingDownload HostTransfer::StartDownload(const at::Tensor& src) {
  PendingDownload d;
  if (!device_.is_cuda() && src.device().is_cpu()) {
    d.host_ = src.contiguous();
    return d;
  }
  // A fresh pinned buffer per download (the caching host allocator recycles it once its copy has run),
  // because several downloads may be in flight at once.
  d.host_ = HostTensor(src.numel(), src.scalar_type()).view(src.sizes());
  d.host_.copy_(src, /*non_blocking=*/true);
#if DELTASERVE_WITH_CUDA
  d.event_ = std::make_unique<PendingDownload::Event>();
  // The copy ran on the source GPU's current stream (see Upload).
  if (src.is_cuda()) d.event_->done.record(at::cuda::getCurrentCUDAStream(src.device().index()));
#endif
  return d;
}

}  // namespace deltaserve::runner
