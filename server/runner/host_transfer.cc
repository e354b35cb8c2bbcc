// Pinned staging and the step's one download (see host_transfer.h).
#include "runner/host_transfer.h"

#include <ATen/ATen.h>

#if DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#endif

namespace deltaserve::runner {

struct HostTransfer::Events {
#if DELTASERVE_WITH_CUDA
  std::array<at::cuda::CUDAEvent, 2> uploaded;  // the copy out of staging_[i] has run
  at::cuda::CUDAEvent downloaded;
#endif
};

HostTransfer::HostTransfer(c10::Device device) : device_(device) {
  if (device_.is_cuda()) events_ = std::make_unique<Events>();
}

HostTransfer::~HostTransfer() = default;

at::Tensor HostTransfer::HostTensor(int64_t n, at::ScalarType dtype) const {
  return at::empty({n}, at::TensorOptions().dtype(dtype).pinned_memory(device_.is_cuda()));
}

at::Tensor HostTransfer::Upload(int64_t n, const std::function<void(int64_t*)>& fill, const at::Tensor* dst) {
  const int i = next_;
  next_ ^= 1;
#if DELTASERVE_WITH_CUDA
  // The copy that last read this buffer was queued two uploads ago; by now it has run (every step waits
  // for its download), so this wait returns at once. It guards the low-level Forward, which does not.
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
  events_->uploaded[i].record();
#endif
  return out;
}

at::Tensor HostTransfer::Download(const at::Tensor& src) {
  if (!device_.is_cuda() && src.device().is_cpu()) return src.contiguous();
  const int64_t n = src.numel();
  if (!download_.defined() || download_.numel() < n || download_.scalar_type() != src.scalar_type()) {
    download_ = HostTensor(std::max<int64_t>(n, 1024), src.scalar_type());
  }
  at::Tensor host = download_.narrow(0, 0, n).view(src.sizes());
  host.copy_(src, /*non_blocking=*/true);
#if DELTASERVE_WITH_CUDA
  events_->downloaded.record();
  events_->downloaded.synchronize();
#endif
  return host;
}

}  // namespace deltaserve::runner
