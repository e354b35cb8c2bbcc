// QkNormRotary: argument checks, the fp32 ATen composition (the CPU path and the reference of the CUDA
// kernel) and the dispatch to the one-pass CUDA kernel.
#include "deltaserve/kernels/rotary.h"

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "fused_ops_impl.h"

namespace deltaserve::kernels {
namespace {

using internal::ShapeString;

absl::Status CheckRotaryArgs(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& positions,
                             const at::Tensor& inv_freq, double eps) {
  DS_RETURN_IF_ERROR(internal::CheckActivations(x, "x", 3));
  if (x.dim() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: expected [T, heads, head_dim], got shape ", ShapeString(x)));
  }
  const int64_t tokens = x.size(0), head_dim = x.size(2);
  DS_RETURN_IF_ERROR(internal::CheckFeatureWeight(norm_weight, "norm_weight", head_dim, x));
  if (!positions.defined() || positions.dim() != 1 || positions.size(0) != tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("positions: shape must be [", tokens, "] (x's tokens), got ",
                     positions.defined() ? ShapeString(positions) : "undefined"));
  }
  DS_RETURN_IF_ERROR(internal::CheckDtype(positions, "positions", {at::kLong}));
  DS_RETURN_IF_ERROR(internal::CheckSameDevice(positions, "positions", x));
  if (!inv_freq.defined() || inv_freq.dim() != 1 || inv_freq.size(0) < 1 || 2 * inv_freq.size(0) > head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("inv_freq: shape must be [rotary_dim / 2] with 2 <= rotary_dim <= head_dim (", head_dim,
                     "), got ", inv_freq.defined() ? ShapeString(inv_freq) : "undefined"));
  }
  DS_RETURN_IF_ERROR(internal::CheckDtype(inv_freq, "inv_freq", {at::kFloat}));
  DS_RETURN_IF_ERROR(internal::CheckSameDevice(inv_freq, "inv_freq", x));
  return internal::CheckEps(eps);
}

// The unfused model rounds the norm's output, cos/sin and each product to the activation dtype; here
// all of it is fp32 with one rounding at the end (for fp32 the same ops in the same order).
at::Tensor QkNormRotaryAten(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& positions,
                            const at::Tensor& inv_freq, double eps) {
  const int64_t half = inv_freq.size(0), rot = 2 * half, head_dim = x.size(2);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y =
      xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps) * (norm_weight.to(at::kFloat) + 1.0);
  at::Tensor angles = positions.to(at::kFloat).unsqueeze(-1) * inv_freq.unsqueeze(0);  // [T, half]
  at::Tensor cos = angles.cos().unsqueeze(1), sin = angles.sin().unsqueeze(1);         // over heads
  at::Tensor y1 = y.narrow(-1, 0, half), y2 = y.narrow(-1, half, half);
  std::vector<at::Tensor> parts = {y1 * cos - y2 * sin, y2 * cos + y1 * sin};
  if (rot < head_dim) parts.push_back(y.narrow(-1, rot, head_dim - rot));
  return at::cat(parts, -1).to(x.scalar_type());
}

}  // namespace

absl::StatusOr<at::Tensor> QkNormRotary(const at::Tensor& x, const at::Tensor& norm_weight,
                                        const at::Tensor& positions, const at::Tensor& inv_freq, double eps) {
  DS_RETURN_IF_ERROR(CheckRotaryArgs(x, norm_weight, positions, inv_freq, eps));
  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda()) {
      at::Tensor out = at::empty(x.sizes(), x.options());
      // Any stride(0) and stride(1) is fine for the kernel; only a strided last dimension needs a copy.
      at::Tensor rows = x.size(2) == 1 || x.stride(2) == 1 ? x : x.contiguous();
      internal::QkNormRotaryCuda(rows, norm_weight.contiguous(), positions.contiguous(),
                                 inv_freq.contiguous(), eps, out);
      return out;
    }
#endif
    return QkNormRotaryAten(x, norm_weight, positions, inv_freq, eps);
  })
}

}  // namespace deltaserve::kernels
