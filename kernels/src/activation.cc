// SiluAndMul: argument checks, the fp32 ATen composition (the CPU path and the reference of the CUDA
// kernel) and the dispatch to the one-pass CUDA kernel.
#include "deltaserve/kernels/activation.h"

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "fused_ops_impl.h"

namespace deltaserve::kernels {

absl::StatusOr<at::Tensor> SiluAndMul(const at::Tensor& x) {
  DS_RETURN_IF_ERROR(internal::CheckActivations(x, "x"));
  const int64_t two_f = x.size(-1);
  if (two_f % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "x: last dimension holds [gate | up] and must be even, got shape ", internal::ShapeString(x)));
  }
  const int64_t f = two_f / 2;
  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda()) {
      std::vector<int64_t> shape = x.sizes().vec();
      shape.back() = f;
      at::Tensor out = at::empty(shape, x.options());
      internal::SiluAndMulCuda(internal::AsRows(x), out);
      return out;
    }
#endif
    // One rounding at the end, where the unfused model rounds silu(gate) and the product separately.
    at::Tensor xf = x.to(at::kFloat);
    return (at::silu(xf.narrow(-1, 0, f)) * xf.narrow(-1, f, f)).to(x.scalar_type());
  })
}

}  // namespace deltaserve::kernels
