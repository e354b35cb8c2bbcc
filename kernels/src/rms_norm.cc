// Zero-centred, residual-add and gated RMS norms: argument checks, the fp32 ATen composition (the CPU
// path and the reference of the CUDA kernel) and the dispatch to the one-pass CUDA kernel.
#include "deltaserve/kernels/rms_norm.h"

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "check.h"
#include "fused_ops_impl.h"

namespace deltaserve::kernels {
namespace {

using internal::CheckLikeX;
using internal::CheckRmsNormArgs;

// Everything in fp32 and one rounding at the end: for fp32 inputs this is the unfused model's
// composition op for op, so golden tests against transformers see the same numbers.
at::Tensor InverseRms(const at::Tensor& xf, double eps) {
  return at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

at::Tensor RmsNormAten(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  return (xf * InverseRms(xf, eps) * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

at::Tensor GatedRmsNormAten(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight,
                            double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y = xf * InverseRms(xf, eps) * weight.to(at::kFloat) * at::silu(gate.to(at::kFloat));
  return y.to(x.scalar_type());
}

}  // namespace

absl::StatusOr<at::Tensor> RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  DS_RETURN_IF_ERROR(CheckRmsNormArgs(x, weight, eps));
  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda()) {
      at::Tensor out = at::empty(x.sizes(), x.options());
      internal::RowNormCuda(internal::RowNormKind::kZeroCentred, internal::AsRows(x), at::Tensor(),
                            weight.contiguous(), eps, out);
      return out;
    }
#endif
    return RmsNormAten(x, weight, eps);
  })
}

absl::StatusOr<at::Tensor> AddRmsNorm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                      double eps) {
  DS_RETURN_IF_ERROR(CheckRmsNormArgs(x, weight, eps));
  DS_RETURN_IF_ERROR(CheckLikeX(residual, "residual", x));
  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda()) {
      at::Tensor out = at::empty(x.sizes(), x.options());
      // The kernel writes the sum in place through one row stride; rows that overlap or do not collapse
      // to one stride go through a contiguous copy that is written back.
      const bool direct = internal::RowStride(residual) >= x.size(-1);
      at::Tensor rows = direct ? residual : residual.contiguous();
      internal::RowNormCuda(internal::RowNormKind::kAddZeroCentred, internal::AsRows(x), rows,
                            weight.contiguous(), eps, out);
      if (!direct) residual.copy_(rows);
      return out;
    }
#endif
    residual.add_(x);
    return RmsNormAten(residual, weight, eps);
  })
}

absl::StatusOr<at::Tensor> GatedRmsNorm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight,
                                        double eps) {
  DS_RETURN_IF_ERROR(CheckRmsNormArgs(x, weight, eps));
  DS_RETURN_IF_ERROR(CheckLikeX(gate, "gate", x));
  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda()) {
      at::Tensor out = at::empty(x.sizes(), x.options());
      internal::RowNormCuda(internal::RowNormKind::kGated, internal::AsRows(x), internal::AsRows(gate),
                            weight.contiguous(), eps, out);
      return out;
    }
#endif
    return GatedRmsNormAten(x, gate, weight, eps);
  })
}

}  // namespace deltaserve::kernels
