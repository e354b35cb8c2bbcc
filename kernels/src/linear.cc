// Linear, RmsNormLinear, LinearAccumulate: argument checks and the choice between the small-batch CUDA
// kernel (with the norm, the MLP's activation or the residual add folded in) and the ATen compositions.
#include "deltaserve/kernels/linear.h"

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "cpu_gemv.h"
#include "deltaserve/kernels/activation.h"
#include "deltaserve/kernels/rms_norm.h"
#include "fused_ops_impl.h"

namespace deltaserve::kernels {
namespace {

std::atomic<bool> small_batch_linear_enabled{true};

// x [..., K] and weight [N, K] of one dtype and device.
absl::Status CheckLinearArgs(const at::Tensor& x, const at::Tensor& weight) {
  DS_RETURN_IF_ERROR(internal::CheckActivations(x, "x"));
  DS_RETURN_IF_ERROR(internal::CheckTensor(weight, "weight", 2, /*require_contiguous=*/false));
  if (weight.size(1) != x.size(-1)) {
    return absl::InvalidArgumentError(absl::StrCat("weight: expected [N, ", x.size(-1), "] to match x's last dimension, got ",
                                                   internal::ShapeString(weight)));
  }
  if (weight.scalar_type() != x.scalar_type() || weight.device() != x.device()) {
    return absl::InvalidArgumentError("weight: must have x's dtype and device");
  }
  return absl::OkStatus();
}

// An empty batch (no rows this pass) is not an error: at::linear returns the empty result.
bool EmptyBatch(const at::Tensor& x, const at::Tensor& weight) {
  return x.defined() && weight.defined() && x.numel() == 0 && x.dim() >= 1 && weight.dim() == 2 &&
         x.size(-1) == weight.size(1);
}

#ifdef DELTASERVE_WITH_CUDA
// Whether the rows the small-batch kernel would stage ([rows, K] of bf16, `product_input` being x as
// the product reads it) fit the block's shared memory.
bool StagedRowsFit(const at::Tensor& product_input) {
  return product_input.numel() * 2 <= internal::kSmallBatchStagedMaxBytes;
}
#endif

std::vector<int64_t> OutputShape(const at::Tensor& x, const at::Tensor& weight) {
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = weight.size(0);
  return shape;
}

// x [..., K] on the CPU and a quantized weight (linear_weight.h): INT8 values int8 [N, K] or 4-bit values
// uint8 [N, K / 2], float32 scales [N, K / group], contiguous.
absl::Status CheckQuantizedArgs(const at::Tensor& x, const LinearWeight& w) {
  DS_RETURN_IF_ERROR(internal::CheckActivations(x, "x"));
  const at::Tensor& q = w.weight;
  if (!q.defined() || q.dim() != 2 || (q.scalar_type() != at::kChar && q.scalar_type() != at::kByte) ||
      !q.is_contiguous()) {
    return absl::InvalidArgumentError(
        "weight: quantized values must be a contiguous int8 [N, K] or uint8 (4-bit pairs) [N, K / 2] tensor");
  }
  if (w.in_features() != x.size(-1)) {
    return absl::InvalidArgumentError(absl::StrCat("weight: expected ", w.int4() ? "4-bit values of " : "", "[N, ",
                                                   x.size(-1), "] to match x's last dimension, got ",
                                                   w.int4() ? "K = " + std::to_string(w.in_features()) + " in " : "",
                                                   internal::ShapeString(q)));
  }
  const at::Tensor& sc = w.scales;
  const int64_t k = w.in_features();
  if (k % kWeightQuantGroup != 0 || sc.scalar_type() != at::kFloat || !sc.is_contiguous() || sc.dim() != 2 ||
      sc.size(0) != q.size(0) || sc.size(1) != k / kWeightQuantGroup) {
    return absl::InvalidArgumentError(absl::StrCat("weight: quantized scales must be float32 [N, K / ",
                                                   kWeightQuantGroup, "] with K a multiple of ", kWeightQuantGroup,
                                                   ", got ", internal::ShapeString(sc), " for values ",
                                                   internal::ShapeString(q)));
  }
  if (!x.device().is_cpu() || !q.device().is_cpu() || !sc.device().is_cpu()) {
    return absl::InvalidArgumentError(
        "weight: quantized weights run on the CPU only (x and weight must be CPU tensors)");
  }
  return absl::OkStatus();
}

// x W^T for a checked quantized weight: the dequantizing GEMV for decode's few rows, blocks into at::mm beyond.
at::Tensor QuantizedProduct(const at::Tensor& x, const LinearWeight& w) {
  const int64_t k = x.size(-1);
  const int64_t rows = x.numel() / k;
  at::Tensor out = at::empty(OutputShape(x, w.weight), x.options());
  if (rows == 0) return out;
  if (internal::CpuGemvQuantizedApplies(x)) {
    internal::CpuGemvQuantized(x, internal::RowStride(x), w, out, /*accumulate=*/false, /*silu_and_mul=*/false);
    return out;
  }
  return internal::CpuLinearQuantized(x.reshape({rows, k}).contiguous(), w).view(out.sizes());
}

}  // namespace

void SetSmallBatchLinearEnabled(bool enabled) { small_batch_linear_enabled.store(enabled, std::memory_order_relaxed); }

bool UsesSmallBatchLinear(const at::Tensor& x, const at::Tensor& weight) {
  if (!small_batch_linear_enabled.load(std::memory_order_relaxed)) return false;
  if (x.device().is_cpu()) return internal::CpuGemvApplies(x, weight);
#ifdef DELTASERVE_WITH_CUDA
  if (!x.is_cuda() || x.scalar_type() != at::kBFloat16 || weight.scalar_type() != at::kBFloat16) return false;
  const int64_t k = x.size(-1);
  const int64_t rows = x.numel() / k;
  const int64_t stride = internal::RowStride(x);
  return rows <= kSmallBatchLinearMaxRows && k % 8 == 0 && weight.is_contiguous() && stride >= 0 &&
         stride % 8 == 0 && internal::Aligned16(x.data_ptr()) && internal::Aligned16(weight.data_ptr()) &&
         weight.size(0) <= kSmallBatchLinearMaxOutputsCuda;
#else
  (void)x;
  (void)weight;
  return false;
#endif
}

absl::StatusOr<at::Tensor> Linear(const at::Tensor& x, const LinearWeight& w) {
  if (w.quantized()) {
    if (EmptyBatch(x, w.weight)) DS_CATCH_ATEN(return at::empty(OutputShape(x, w.weight), x.options());)
    DS_RETURN_IF_ERROR(CheckQuantizedArgs(x, w));
    DS_CATCH_ATEN(return QuantizedProduct(x, w);)
  }
  const at::Tensor& weight = w.weight;
  if (EmptyBatch(x, weight)) DS_CATCH_ATEN(return at::linear(x, weight);)
  DS_RETURN_IF_ERROR(CheckLinearArgs(x, weight));
  DS_CATCH_ATEN({
    if (UsesSmallBatchLinear(x, weight) && x.device().is_cpu()) {
      at::Tensor out = at::empty(OutputShape(x, weight), x.options());
      internal::CpuGemv(x, internal::RowStride(x), weight, out, /*accumulate=*/false, /*silu_and_mul=*/false);
      return out;
    }
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda() && UsesSmallBatchLinear(x, weight)) {
      at::Tensor out = at::empty(OutputShape(x, weight), x.options());
      internal::SmallBatchLinearCuda(x, internal::RowStride(x), weight, out);
      return out;
    }
#endif
    return at::linear(x, weight);
  })
}

absl::StatusOr<at::Tensor> RmsNormLinear(const at::Tensor& x, const at::Tensor& norm_weight, double eps,
                                         const LinearWeight& w) {
  DS_RETURN_IF_ERROR(internal::CheckRmsNormArgs(x, norm_weight, eps, "norm_weight"));
  if (w.quantized()) {
    DS_RETURN_IF_ERROR(CheckQuantizedArgs(x, w));
    DS_ASSIGN_OR_RETURN(at::Tensor normed, RmsNorm(x, norm_weight, eps));
    return Linear(normed, w);
  }
  const at::Tensor& weight = w.weight;
  DS_RETURN_IF_ERROR(CheckLinearArgs(x, weight));
#ifdef DELTASERVE_WITH_CUDA
  if (x.is_cuda() && UsesSmallBatchLinear(x, weight) && norm_weight.is_contiguous() &&
      internal::Aligned16(norm_weight.data_ptr()) && StagedRowsFit(x)) {
    DS_CATCH_ATEN({
      at::Tensor out = at::empty(OutputShape(x, weight), x.options());
      internal::SmallBatchLinearFusion fusion;
      fusion.norm_weight = norm_weight;
      fusion.eps = eps;
      internal::SmallBatchLinearCuda(x, internal::RowStride(x), weight, out, fusion);
      return out;
    })
  }
#endif
  DS_ASSIGN_OR_RETURN(at::Tensor normed, RmsNorm(x, norm_weight, eps));
  return Linear(normed, weight);
}

absl::Status LinearAccumulate(const at::Tensor& x, const LinearWeight& w, at::Tensor& residual,
                              LinearInput input) {
  const at::Tensor& weight = w.weight;
  if (input == LinearInput::kSiluAndMul) {
    DS_RETURN_IF_ERROR(internal::CheckActivations(x, "x"));
    if (!weight.defined() || weight.dim() != 2 || x.size(-1) != 2 * w.in_features()) {
      return absl::InvalidArgumentError(absl::StrCat("weight: expected [N, ", x.size(-1) / 2,
                                                     "] (half of x's [gate | up] last dimension), got ",
                                                     weight.defined() ? internal::ShapeString(weight) : "none"));
    }
  }
  // The projection's input as the checks and the composition see it: x, or a view of its gate half
  // (same rows, same base pointer) standing in for SiluAndMul(x).
  const at::Tensor x_in = input == LinearInput::kSiluAndMul ? x.narrow(-1, 0, w.in_features()) : x;
  DS_RETURN_IF_ERROR(w.quantized() ? CheckQuantizedArgs(x_in, w) : CheckLinearArgs(x_in, weight));
  DS_RETURN_IF_ERROR(internal::CheckTensor(residual, "residual", x.dim()));
  if (residual.sizes().vec() != OutputShape(x_in, weight)) {
    return absl::InvalidArgumentError(absl::StrCat("residual: expected shape x W^T [",
                                                   absl::StrJoin(OutputShape(x_in, weight), ", "), "], got ",
                                                   internal::ShapeString(residual)));
  }
  if (residual.scalar_type() != x.scalar_type() || residual.device() != x.device()) {
    return absl::InvalidArgumentError("residual: must have x's dtype and device");
  }
  if (w.quantized()) {
    if (internal::CpuGemvQuantizedApplies(x_in) && residual.is_contiguous()) {
      DS_CATCH_ATEN({
        internal::CpuGemvQuantized(x, internal::RowStride(x_in), w, residual, /*accumulate=*/true,
                                   input == LinearInput::kSiluAndMul);
        return absl::OkStatus();
      })
    }
    at::Tensor product_input = x;
    if (input == LinearInput::kSiluAndMul) {
      DS_ASSIGN_OR_RETURN(product_input, SiluAndMul(x));
    }
    DS_CATCH_ATEN({
      residual.add_(QuantizedProduct(product_input, w));
      return absl::OkStatus();
    })
  }
  if (UsesSmallBatchLinear(x_in, weight) && x.device().is_cpu() && residual.is_contiguous()) {
    DS_CATCH_ATEN({
      internal::CpuGemv(x, internal::RowStride(x_in), weight, residual, /*accumulate=*/true,
                        input == LinearInput::kSiluAndMul);
      return absl::OkStatus();
    })
  }
#ifdef DELTASERVE_WITH_CUDA
  if (x.is_cuda() && UsesSmallBatchLinear(x_in, weight) && internal::Aligned16(residual.data_ptr()) &&
      StagedRowsFit(x_in)) {
    DS_CATCH_ATEN({
      internal::SmallBatchLinearFusion fusion;
      fusion.silu_and_mul = input == LinearInput::kSiluAndMul;
      fusion.accumulate = true;
      internal::SmallBatchLinearCuda(x, internal::RowStride(x_in), weight, residual, fusion);
      return absl::OkStatus();
    })
  }
#endif
  at::Tensor product_input = x;
  if (input == LinearInput::kSiluAndMul) {
    DS_ASSIGN_OR_RETURN(product_input, SiluAndMul(x));
  }
  DS_CATCH_ATEN({
    at::Tensor out2d = residual.view({-1, weight.size(0)});
    out2d.addmm_(product_input.reshape({-1, product_input.size(-1)}), weight.t());
    return absl::OkStatus();
  })
}

}  // namespace deltaserve::kernels
