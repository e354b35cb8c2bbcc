// Argument checks shared by the kernels: each returns an InvalidArgument status whose message names
// the argument, what was expected and what arrived, so callers can pass it straight to a client.
#ifndef DELTASERVE_KERNELS_SRC_CHECK_H_
#define DELTASERVE_KERNELS_SRC_CHECK_H_

#include <ATen/ATen.h>

#include <initializer_list>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace deltaserve::kernels::internal {

inline std::string ShapeString(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// Defined, `dims`-dimensional, contiguous (unless the caller copies or reads strided views itself), and
// non-empty.
inline absl::Status CheckTensor(const at::Tensor& t, absl::string_view name, int64_t dims,
                                bool require_contiguous = true) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(name, ": tensor is undefined"));
  if (t.dim() != dims) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected ", dims, " dimensions, got shape ", ShapeString(t)));
  }
  if (require_contiguous && !t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": must be contiguous (shape ", ShapeString(t),
                                                   ", strides [", absl::StrJoin(t.strides(), ", "), "])"));
  }
  if (t.numel() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": empty tensor, shape ", ShapeString(t)));
  }
  return absl::OkStatus();
}

inline absl::Status CheckSize(const at::Tensor& t, absl::string_view name, int64_t dim, int64_t expected,
                              absl::string_view what) {
  if (t.size(dim) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": dimension ", dim, " (", what, ") must be ",
                                                   expected, ", got shape ", ShapeString(t)));
  }
  return absl::OkStatus();
}

inline absl::Status CheckDtype(const at::Tensor& t, absl::string_view name,
                               std::initializer_list<at::ScalarType> allowed) {
  for (at::ScalarType s : allowed) {
    if (t.scalar_type() == s) return absl::OkStatus();
  }
  std::string names;
  for (at::ScalarType s : allowed) absl::StrAppend(&names, names.empty() ? "" : ", ", c10::toString(s));
  return absl::InvalidArgumentError(
      absl::StrCat(name, ": dtype must be one of {", names, "}, got ", c10::toString(t.scalar_type())));
}

inline absl::Status CheckSameDevice(const at::Tensor& t, absl::string_view name, const at::Tensor& ref) {
  if (t.device() != ref.device()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": on device ", t.device().str(), " but the inputs are on ", ref.device().str()));
  }
  return absl::OkStatus();
}

// The values of a 1-D int64 index tensor as the host sees them. `values` stays valid while this object
// lives (moves included): it points into the caller's span, or into `storage`.
struct HostIndices {
  at::Tensor storage;  // the CPU tensor `values` points into; undefined when they are the caller's
  absl::Span<const int64_t> values;
};

// The caller's host copy `host` when given (non-empty: it must then have t.numel() values, and the
// caller promises they equal the tensor's), else the tensor's own memory on the CPU, else a read-back
// (a device sync). `t` must be defined, 1-D and int64; `name`/`host_name` label the length error.
absl::StatusOr<HostIndices> HostValues(const at::Tensor& t, absl::Span<const int64_t> host,
                                       absl::string_view name, absl::string_view host_name);

// An int64 tensor of `values` on `device` without a blocking copy: built in place on the CPU; for CUDA,
// staged in pinned memory and copied asynchronously on the current stream (the caching host allocator
// holds the staging buffer until that copy has run).
at::Tensor IndexOnDevice(absl::Span<const int64_t> values, const at::Device& device);

// Validates packed-sequence offsets: int64 [N + 1], starting at 0, non-decreasing, ending at `total`,
// checking the host copy `host_cu_seqlens` instead of the tensor's values when one is given (see
// HostValues). Returns the offsets as host values, so N = values.size() - 1; returns no values when
// cu_seqlens is undefined (then `host_cu_seqlens` must be empty too).
absl::StatusOr<HostIndices> CheckCuSeqlens(const at::Tensor& cu_seqlens,
                                           absl::Span<const int64_t> host_cu_seqlens, int64_t batch,
                                           int64_t total);

// Validates slot indices: int64 [B], each below `pool_slots` and, among the non-negative ones, no
// duplicates. A negative index marks a padding row when `allow_padding` (the decode steps skip it);
// otherwise it is out of range. Checks `host_slots` instead of the tensor's values when given (see
// HostValues) and returns the values it checked.
absl::StatusOr<HostIndices> CheckSlots(const at::Tensor& slots, absl::Span<const int64_t> host_slots,
                                       int64_t batch, int64_t pool_slots, bool allow_padding);

}  // namespace deltaserve::kernels::internal

// Evaluates a Status expression and returns it from the enclosing function when not OK.
#define DS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    const absl::Status _ds_status = (expr);  \
    if (!_ds_status.ok()) return _ds_status; \
  } while (0)

#define DS_CONCAT_INNER(a, b) a##b
#define DS_CONCAT(a, b) DS_CONCAT_INNER(a, b)
// Assigns the value of a StatusOr expression to `lhs`, or returns its error.
#define DS_ASSIGN_OR_RETURN(lhs, expr) DS_ASSIGN_OR_RETURN_IMPL(DS_CONCAT(_ds_or_, __LINE__), lhs, expr)
#define DS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

// Runs ATen code and turns a c10::Error (or any std::exception) into an Internal status.
// Variadic so that commas in the body (braced initialisers, templates) need no extra parentheses.
#define DS_CATCH_ATEN(...)                                                          \
  try {                                                                             \
    __VA_ARGS__                                                                     \
  } catch (const c10::Error& e) {                                                   \
    return absl::InternalError(absl::StrCat("ATen: ", e.what_without_backtrace())); \
  } catch (const std::exception& e) {                                               \
    return absl::InternalError(absl::StrCat("kernel: ", e.what()));                 \
  }

#endif  // DELTASERVE_KERNELS_SRC_CHECK_H_
