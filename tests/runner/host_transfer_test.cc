// HostTransfer: a pass's uploads from pinned staging buffers and its one download. Each upload lands whole
// even when more uploads are in flight than there are staging buffers; a download returns the values the
// device computed, after the copy (not before it), on the current GPU and, with two GPUs, on the second
// one while the first is current (--device cuda:1).
#include "runner/host_transfer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#ifdef DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace deltaserve::runner {
namespace {

// 40 uploads of distinct values (more than the ring of staging buffers), none waited for, then each checked.
void ExpectUploadsLandWhole(const c10::Device& device) {
  HostTransfer transfer(device);
  std::vector<at::Tensor> uploaded;
  for (int64_t u = 0; u < 40; ++u) {
    const int64_t n = 1000 + u;
    uploaded.push_back(transfer.Upload(n, [u, n](int64_t* p) {
      for (int64_t i = 0; i < n; ++i) p[i] = u * 100000 + i;
    }));
  }
  for (int64_t u = 0; u < 40; ++u) {
    ASSERT_EQ(uploaded[u].device(), device);
    const at::Tensor want = at::arange(1000 + u, at::kLong) + u * 100000;
    EXPECT_TRUE(at::equal(uploaded[u].cpu(), want)) << "upload " << u;
  }
}

// A download queued behind a stream of device work must return that work's result.
void ExpectDownloadWaitsForItsCopy(const c10::Device& device) {
  HostTransfer transfer(device);
  const int64_t n = int64_t{1} << 24;
  at::Tensor x = at::arange(n, at::TensorOptions(at::kLong).device(device));
  for (int i = 0; i < 20; ++i) x = x + 1;  // milliseconds of queued work ahead of the copy
  PendingDownload pending = transfer.StartDownload(x);
  const at::Tensor got = pending.Wait();
  EXPECT_TRUE(got.is_cpu());
  EXPECT_TRUE(at::equal(got, at::arange(n, at::kLong) + 20));
}

TEST(HostTransfer, UploadsAndDownloadsOnTheCpu) {
  ExpectUploadsLandWhole(c10::Device(c10::kCPU));
  HostTransfer transfer(c10::Device(c10::kCPU));
  const at::Tensor x = at::arange(10, at::kLong) * 7;
  EXPECT_TRUE(at::equal(transfer.Download(x), x));
  at::Tensor dst = at::zeros({8}, at::kLong);
  const at::Tensor out = transfer.Upload(5, [](int64_t* p) {
    for (int i = 0; i < 5; ++i) p[i] = 9 - i;
  }, &dst);
  EXPECT_TRUE(at::equal(out, at::tensor(std::vector<int64_t>{9, 8, 7, 6, 5}, at::kLong)));
  EXPECT_TRUE(at::equal(dst.narrow(0, 0, 5), out));  // into the given tensor
}

#ifdef DELTASERVE_WITH_CUDA
TEST(HostTransferCuda, UploadsAndDownloadsOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ExpectUploadsLandWhole(c10::Device(c10::kCUDA, 0));
  ExpectDownloadWaitsForItsCopy(c10::Device(c10::kCUDA, 0));
}

// The events that order staging reuse and downloads go on the copy's own stream: the second GPU's while
// the first is current. Recorded on the current device's idle stream, a download would return before its
// copy ran.
TEST(HostTransferCuda, ASecondGpuWhileTheFirstIsCurrent) {
  if (!at::hasCUDA() || c10::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  const c10::cuda::CUDAGuard current(static_cast<c10::DeviceIndex>(0));
  ExpectUploadsLandWhole(c10::Device(c10::kCUDA, 1));
  ExpectDownloadWaitsForItsCopy(c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(c10::cuda::current_device(), 0);
}
#endif

}  // namespace
}  // namespace deltaserve::runner
