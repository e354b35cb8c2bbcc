// Index tensors whose values matter (packed offsets, pool slots): the one place their rules are checked,
// on host values the caller already holds where it can, so a CUDA step need not read anything back.
#include "check.h"

#include <algorithm>
#include <vector>

namespace deltaserve::kernels::internal {

absl::StatusOr<HostIndices> HostValues(const at::Tensor& t, absl::Span<const int64_t> host,
                                       absl::string_view name, absl::string_view host_name) {
  HostIndices out;
  if (!host.empty()) {
    if (static_cast<int64_t>(host.size()) != t.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(host_name, ": has ", host.size(), " values but ", name,
                                                     " has ", t.numel(), " (shape ", ShapeString(t), ")"));
    }
    out.values = host;
    return out;
  }
  out.storage = t.is_cpu() ? t.contiguous() : t.cpu();
  out.values = absl::MakeConstSpan(out.storage.data_ptr<int64_t>(), out.storage.numel());
  return out;
}

at::Tensor IndexOnDevice(absl::Span<const int64_t> values, const at::Device& device) {
  const int64_t n = static_cast<int64_t>(values.size());
  const bool cuda = device.is_cuda();
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(cuda));
  std::copy(values.begin(), values.end(), host.data_ptr<int64_t>());
  if (device.is_cpu()) return host;
  return host.to(device, at::kLong, /*non_blocking=*/cuda);
}

absl::StatusOr<HostIndices> CheckCuSeqlens(const at::Tensor& cu_seqlens,
                                           absl::Span<const int64_t> host_cu_seqlens, int64_t batch,
                                           int64_t total) {
  if (!cu_seqlens.defined()) {
    if (!host_cu_seqlens.empty()) {
      return absl::InvalidArgumentError(
          "host_cu_seqlens: given without cu_seqlens (the device tensor is required too)");
    }
    return HostIndices{};
  }
  DS_RETURN_IF_ERROR(CheckTensor(cu_seqlens, "cu_seqlens", 1));
  DS_RETURN_IF_ERROR(CheckDtype(cu_seqlens, "cu_seqlens", {at::kLong}));
  if (batch != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cu_seqlens: packed sequences need batch size 1, got batch ", batch));
  }
  if (cu_seqlens.numel() < 2) {
    return absl::InvalidArgumentError("cu_seqlens: needs at least 2 offsets (one sequence)");
  }
  DS_ASSIGN_OR_RETURN(HostIndices host,
                      HostValues(cu_seqlens, host_cu_seqlens, "cu_seqlens", "host_cu_seqlens"));
  // Errors in the caller's host copy name it too: the tensor itself was not read.
  const std::string from = host_cu_seqlens.empty() ? "" : " (checked on host_cu_seqlens)";
  const absl::Span<const int64_t> p = host.values;
  const int64_t n = static_cast<int64_t>(p.size()) - 1;
  if (p[0] != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cu_seqlens: must start at 0, got ", p[0], from));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (p[i + 1] < p[i]) {
      return absl::InvalidArgumentError(absl::StrCat("cu_seqlens: offsets must not decrease (index ", i + 1,
                                                     ": ", p[i + 1], " < ", p[i], ")", from));
    }
  }
  if (p[n] != total) {
    return absl::InvalidArgumentError(
        absl::StrCat("cu_seqlens: last offset ", p[n], " must equal the packed length ", total, from));
  }
  return host;
}

absl::StatusOr<HostIndices> CheckSlots(const at::Tensor& slots, absl::Span<const int64_t> host_slots,
                                       int64_t batch, int64_t pool_slots, bool allow_padding) {
  DS_RETURN_IF_ERROR(CheckTensor(slots, "slots", 1));
  DS_RETURN_IF_ERROR(CheckDtype(slots, "slots", {at::kLong}));
  DS_RETURN_IF_ERROR(CheckSize(slots, "slots", 0, batch, "batch"));
  DS_ASSIGN_OR_RETURN(HostIndices host, HostValues(slots, host_slots, "slots", "host_slots"));
  const std::string from = host_slots.empty() ? "" : " (checked on host_slots)";
  const absl::Span<const int64_t> p = host.values;
  std::vector<bool> seen(pool_slots, false);
  for (int64_t i = 0; i < batch; ++i) {
    if (p[i] < 0 && allow_padding) continue;  // a padding row: no slot is touched
    if (p[i] < 0 || p[i] >= pool_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("slots: index ", p[i], " at position ", i, " is outside the pool [0, ", pool_slots,
                       ")", allow_padding ? " (negative indices mark padding rows)" : "", from));
    }
    if (seen[p[i]]) {
      return absl::InvalidArgumentError(
          absl::StrCat("slots: slot ", p[i], " appears twice in one step", from));
    }
    seen[p[i]] = true;
  }
  return host;
}

}  // namespace deltaserve::kernels::internal
