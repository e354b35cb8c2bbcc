// GatedDeltaGates: argument checks, the float32 ATen composition (the CPU path and the reference of the
// CUDA kernel) and the dispatch to the one-pass CUDA kernel.
#include "deltaserve/kernels/gdn_gates.h"

#include <ATen/ATen.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "fused_ops_impl.h"

namespace deltaserve::kernels {

absl::StatusOr<GdnGates> GatedDeltaGates(const at::Tensor& ba, const at::Tensor& neg_a_exp,
                                         const at::Tensor& dt_bias) {
  DS_RETURN_IF_ERROR(internal::CheckActivations(ba, "ba", 2));
  if (ba.dim() != 2 || ba.size(1) % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ba: must be [T, 2H] holding [b | a], got shape ", internal::ShapeString(ba)));
  }
  const int64_t heads = ba.size(1) / 2;
  for (auto [t, name] : {std::pair{&neg_a_exp, "neg_a_exp"}, {&dt_bias, "dt_bias"}}) {
    if (!t->defined()) return absl::InvalidArgumentError(absl::StrCat(name, ": tensor is undefined"));
    if (t->dim() != 1 || t->size(0) != heads) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": shape must be [", heads,
                                                     "] (half of ba's last dimension), got ",
                                                     internal::ShapeString(*t)));
    }
    DS_RETURN_IF_ERROR(internal::CheckDtype(*t, name, {at::kFloat}));
    DS_RETURN_IF_ERROR(internal::CheckSameDevice(*t, name, ba));
  }
  DS_CATCH_ATEN({
    GdnGates out;
#ifdef DELTASERVE_WITH_CUDA
    if (ba.is_cuda()) {
      const at::TensorOptions f32 = ba.options().dtype(at::kFloat);
      out.g = at::empty({ba.size(0), heads}, f32);
      out.beta = at::empty({ba.size(0), heads}, f32);
      internal::GdnGatesCuda(internal::AsRows(ba), neg_a_exp.contiguous(), dt_bias.contiguous(), out.g,
                             out.beta);
      return out;
    }
#endif
    // Each half cast on its own, so that the ops see the same (contiguous or strided) layouts on every
    // path: ATen's vectorised and scalar loops may differ in the last bit.
    out.beta = at::sigmoid(ba.narrow(1, 0, heads).to(at::kFloat));
    out.g = neg_a_exp * at::softplus(ba.narrow(1, heads, heads).to(at::kFloat) + dt_bias);
    return out;
  })
}

}  // namespace deltaserve::kernels
