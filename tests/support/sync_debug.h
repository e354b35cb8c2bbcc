// Test helper: while a SyncDebugErrors object lives, any synchronising CUDA call (a read-back, a blocking
// copy, .item()) throws, so a test can prove a code path never waits on the device.
#ifndef DELTASERVE_TESTS_SUPPORT_SYNC_DEBUG_H_
#define DELTASERVE_TESTS_SUPPORT_SYNC_DEBUG_H_

#ifdef DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>

namespace deltaserve::testing {

class SyncDebugErrors {
 public:
  SyncDebugErrors() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
  ~SyncDebugErrors() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
  SyncDebugErrors(const SyncDebugErrors&) = delete;
  SyncDebugErrors& operator=(const SyncDebugErrors&) = delete;
};

}  // namespace deltaserve::testing

#endif  // DELTASERVE_WITH_CUDA
#endif  // DELTASERVE_TESTS_SUPPORT_SYNC_DEBUG_H_
