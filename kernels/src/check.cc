// Checks on index tensors that need their values, shared by the prefill and decode kernels.
#include "check.h"

#include <vector>

namespace deltaserve::kernels::internal {

absl::StatusOr<int64_t> CheckCuSeqlens(const at::Tensor& cu_seqlens, int64_t batch, int64_t total) {
  DS_RETURN_IF_ERROR(CheckTensor(cu_seqlens, "cu_seqlens", 1));
  DS_RETURN_IF_ERROR(CheckDtype(cu_seqlens, "cu_seqlens", {at::kLong}));
  if (batch != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cu_seqlens: packed sequences need batch size 1, got batch ", batch));
  }
  if (cu_seqlens.numel() < 2) {
    return absl::InvalidArgumentError("cu_seqlens: needs at least 2 offsets (one sequence)");
  }
  at::Tensor host = cu_seqlens.cpu();
  const int64_t* p = host.data_ptr<int64_t>();
  const int64_t n = host.numel() - 1;
  if (p[0] != 0) return absl::InvalidArgumentError(absl::StrCat("cu_seqlens: must start at 0, got ", p[0]));
  for (int64_t i = 0; i < n; ++i) {
    if (p[i + 1] < p[i]) {
      return absl::InvalidArgumentError(absl::StrCat("cu_seqlens: offsets must not decrease (index ", i + 1,
                                                     ": ", p[i + 1], " < ", p[i], ")"));
    }
  }
  if (p[n] != total) {
    return absl::InvalidArgumentError(
        absl::StrCat("cu_seqlens: last offset ", p[n], " must equal the packed length ", total));
  }
  return n;
}

absl::Status CheckSlots(const at::Tensor& slots, int64_t batch, int64_t pool_slots) {
  DS_RETURN_IF_ERROR(CheckTensor(slots, "slots", 1));
  DS_RETURN_IF_ERROR(CheckDtype(slots, "slots", {at::kLong}));
  DS_RETURN_IF_ERROR(CheckSize(slots, "slots", 0, batch, "batch"));
  at::Tensor host = slots.cpu();
  const int64_t* p = host.data_ptr<int64_t>();
  std::vector<bool> seen(pool_slots, false);
  for (int64_t i = 0; i < batch; ++i) {
    if (p[i] < 0 || p[i] >= pool_slots) {
      return absl::InvalidArgumentError(absl::StrCat("slots: index ", p[i], " at position ", i,
                                                     " is outside the pool [0, ", pool_slots, ")"));
    }
    if (seen[p[i]]) {
      return absl::InvalidArgumentError(absl::StrCat("slots: slot ", p[i], " appears twice in one step"));
    }
    seen[p[i]] = true;
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::kernels::internal
