// Internals shared by the fused row ops (rms_norm.cc, activation.cc, rotary.cc, gdn_gates.cc): their argument checks,
// how a [..., H] tensor is addressed as rows, and the CUDA launchers behind them.
#ifndef DELTASERVE_KERNELS_SRC_FUSED_OPS_IMPL_H_
#define DELTASERVE_KERNELS_SRC_FUSED_OPS_IMPL_H_

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "check.h"

namespace deltaserve::kernels::internal {

// The kernels take one base pointer and one stride between rows, so that a narrow() of a wider
// projection needs no copy. Returns that stride (elements) when the last dimension is contiguous and
// every leading dimension steps uniformly, else -1 (the caller then copies).
inline int64_t RowStride(const at::Tensor& t) {
  if (t.size(-1) != 1 && t.stride(-1) != 1) return -1;
  int64_t stride = -1, next = 0;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;  // a unit dimension's stride is meaningless
    if (stride < 0) {
      stride = t.stride(d);
    } else if (t.stride(d) != next) {
      return -1;
    }
    next = t.stride(d) * t.size(d);
  }
  return stride < 0 ? t.size(-1) : stride;
}

// `t` itself when the kernels can address its rows, else a contiguous copy.
inline at::Tensor AsRows(const at::Tensor& t) { return RowStride(t) >= 0 ? t : t.contiguous(); }

// The kernels' 16-byte vector paths need every base pointer so aligned (and row strides a whole number
// of vectors, which each launcher checks for its own layout).
inline bool Aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Activations [..., H]: defined, at least `min_dims` dimensions, non-empty, fp32 or bf16.
inline absl::Status CheckActivations(const at::Tensor& t, absl::string_view name, int64_t min_dims = 1) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(name, ": tensor is undefined"));
  if (t.dim() < min_dims) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected at least ", min_dims, " dimensions, got shape ", ShapeString(t)));
  }
  if (t.numel() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": empty tensor, shape ", ShapeString(t)));
  }
  // The launchers index rows with 32-bit grid sizes; no real batch comes near this.
  if (t.numel() / t.size(-1) >= std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": too many rows, shape ", ShapeString(t)));
  }
  return CheckDtype(t, name, {at::kFloat, at::kBFloat16});
}

// A second input with exactly x's shape, dtype and device (the residual, the gate).
inline absl::Status CheckLikeX(const at::Tensor& t, absl::string_view name, const at::Tensor& x) {
  DS_RETURN_IF_ERROR(CheckActivations(t, name));
  if (!t.sizes().equals(x.sizes())) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": shape must equal x's ", ShapeString(x), ", got ", ShapeString(t)));
  }
  if (t.scalar_type() != x.scalar_type()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": dtype must equal x's (",
                                                   c10::toString(x.scalar_type()), "), got ",
                                                   c10::toString(t.scalar_type())));
  }
  return CheckSameDevice(t, name, x);
}

// A per-feature weight [size] in x's dtype or fp32, on x's device.
inline absl::Status CheckFeatureWeight(const at::Tensor& w, absl::string_view name, int64_t size,
                                       const at::Tensor& x) {
  if (!w.defined()) return absl::InvalidArgumentError(absl::StrCat(name, ": tensor is undefined"));
  if (w.dim() != 1 || w.size(0) != size) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": shape must be [", size, "] (x's last dimension), got ", ShapeString(w)));
  }
  DS_RETURN_IF_ERROR(x.scalar_type() == at::kFloat ? CheckDtype(w, name, {at::kFloat})
                                                   : CheckDtype(w, name, {x.scalar_type(), at::kFloat}));
  return CheckSameDevice(w, name, x);
}

inline absl::Status CheckEps(double eps) {
  if (!(eps >= 0) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(absl::StrCat("eps: must be finite and >= 0, got ", eps));
  }
  return absl::OkStatus();
}

// The RMS norms' arguments: x activations, weight [H] per feature (named `weight_name`), eps.
inline absl::Status CheckRmsNormArgs(const at::Tensor& x, const at::Tensor& weight, double eps,
                                     absl::string_view weight_name = "weight") {
  DS_RETURN_IF_ERROR(CheckActivations(x, "x"));
  DS_RETURN_IF_ERROR(CheckFeatureWeight(weight, weight_name, x.size(-1), x));
  return CheckEps(eps);
}

#ifdef DELTASERVE_WITH_CUDA
enum class RowNormKind {
  kZeroCentred,     // x / rms(x) * (1 + w)
  kAddZeroCentred,  // residual += x in place, then the above on residual
  kGated,           // x / rms(x) * w * silu(gate)
};
// Validated inputs on one CUDA device. x: rows addressable (RowStride >= 0). `other`: the residual
// (kAddZeroCentred: RowStride >= H, written in place) or the gate (kGated: RowStride >= 0), undefined
// for kZeroCentred. weight [H] contiguous. out: fresh contiguous [rows, H] of x's dtype.
void RowNormCuda(RowNormKind kind, const at::Tensor& x, const at::Tensor& other, const at::Tensor& weight,
                 double eps, const at::Tensor& out);
// What the small-batch linear kernel folds in. norm_weight defined: x's rows are first normalised as
// kernels::RmsNorm(x, norm_weight, eps) does (norm_weight [K] bf16 or fp32, contiguous, 16-byte aligned).
// silu_and_mul: x's rows hold [gate | up] of 2K and the product reads kernels::SiluAndMul(x). Either way
// rows * K * 2 bytes <= kSmallBatchStagedMaxBytes. accumulate: out += x weight^T instead of out = ... .
struct SmallBatchLinearFusion {
  at::Tensor norm_weight;
  double eps = 0.0;
  bool silu_and_mul = false;
  bool accumulate = false;
};
// The block's staged rows of x: dynamic shared memory, which with the kernel's static shared memory
// must stay within the 48 KB a launch gets without opting in (2 rows of K = 12288 did not launch).
inline constexpr int64_t kSmallBatchStagedMaxBytes = 47 * 1024;
// x [rows <= kSmallBatchLinearMaxRows, K] bf16 with rows `x_stride` apart (16-byte aligned, K % 8 == 0),
// weight [N, K] bf16 contiguous and aligned; out contiguous [rows, N] bf16 (fresh unless accumulating).
void SmallBatchLinearCuda(const at::Tensor& x, int64_t x_stride, const at::Tensor& weight, const at::Tensor& out,
                          const SmallBatchLinearFusion& fusion = {});
// x [..., 2F] rows addressable; out fresh contiguous [..., F].
void SiluAndMulCuda(const at::Tensor& x, const at::Tensor& out);
// x [T, heads, D] with stride(2) == 1; weight [D], positions [T] int64, inv_freq [R / 2] fp32, all
// contiguous; out fresh contiguous [T, heads, D].
void QkNormRotaryCuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& positions,
                      const at::Tensor& inv_freq, double eps, const at::Tensor& out);
// ba [T, 2H] rows addressable; neg_a_exp, dt_bias [H] float32 contiguous; g, beta fresh [T, H] float32.
void GdnGatesCuda(const at::Tensor& ba, const at::Tensor& neg_a_exp, const at::Tensor& dt_bias,
                  const at::Tensor& g, const at::Tensor& beta);
#endif

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_FUSED_OPS_IMPL_H_
