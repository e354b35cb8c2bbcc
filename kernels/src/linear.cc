// Linear: argument checks and the choice between the small-batch CUDA kernel and at::linear.
#include "deltaserve/kernels/linear.h"

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "fused_ops_impl.h"

namespace deltaserve::kernels {
namespace {

std::atomic<bool> small_batch_linear_enabled{true};

#ifdef DELTASERVE_WITH_CUDA
bool Aligned16(const at::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0; }

#endif

}  // namespace

void SetSmallBatchLinearEnabled(bool enabled) { small_batch_linear_enabled.store(enabled, std::memory_order_relaxed); }

bool UsesSmallBatchLinear(const at::Tensor& x, const at::Tensor& weight) {
#ifdef DELTASERVE_WITH_CUDA
  if (!small_batch_linear_enabled.load(std::memory_order_relaxed)) return false;
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || weight.scalar_type() != at::kBFloat16) return false;
  const int64_t k = x.size(-1);
  const int64_t rows = x.numel() / k;
  const int64_t stride = internal::RowStride(x);
  return rows <= kSmallBatchLinearMaxRows && k % 8 == 0 && weight.is_contiguous() && stride >= 0 &&
         stride % 8 == 0 && Aligned16(x) && Aligned16(weight) && weight.size(0) < (int64_t{1} << 31);
#else
  (void)x;
  (void)weight;
  return false;
#endif
}

absl::StatusOr<at::Tensor> Linear(const at::Tensor& x, const at::Tensor& weight) {
  // An empty batch (no rows this pass) is not an error here: at::linear returns the empty result.
  if (x.defined() && weight.defined() && x.numel() == 0 && x.dim() >= 1 && weight.dim() == 2 &&
      x.size(-1) == weight.size(1)) {
    DS_CATCH_ATEN(return at::linear(x, weight);)
  }
  DS_RETURN_IF_ERROR(internal::CheckActivations(x, "x"));
  DS_RETURN_IF_ERROR(internal::CheckTensor(weight, "weight", 2, /*require_contiguous=*/false));
  if (weight.size(1) != x.size(-1)) {
    return absl::InvalidArgumentError(absl::StrCat("weight: expected [N, ", x.size(-1), "] to match x's last dimension, got ",
                                                   internal::ShapeString(weight)));
  }
  if (weight.scalar_type() != x.scalar_type() || weight.device() != x.device()) {
    return absl::InvalidArgumentError("weight: must have x's dtype and device");
  }
  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (UsesSmallBatchLinear(x, weight)) {
      std::vector<int64_t> shape = x.sizes().vec();
      shape.back() = weight.size(0);
      at::Tensor out = at::empty(shape, x.options());
      internal::SmallBatchLinearCuda(x, internal::RowStride(x), weight, out);
      return out;
    }
#endif
    return at::linear(x, weight);
  })
}

}  // namespace deltaserve::kernels
