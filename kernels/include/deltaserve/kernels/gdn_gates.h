// The Gated DeltaNet gates from their projections in one pass (instead of a cast, add, softplus, multiply,
// cast and sigmoid per layer): the per-token decay g and the write strength beta, in float32.
#ifndef DELTASERVE_KERNELS_GDN_GATES_H_
#define DELTASERVE_KERNELS_GDN_GATES_H_

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

struct GdnGates {
  at::Tensor g;     // [T, H] float32: log decay, -exp(A_log) * softplus(a + dt_bias)
  at::Tensor beta;  // [T, H] float32: sigmoid(b)
};

// ba [T, 2H] holds [b | a] (fp32 or bf16; rows may be strided, the last dimension contiguous), as the
// layer's input projection lays them out; neg_a_exp = -exp(A_log) and dt_bias are [H] float32 on ba's
// device. softplus as torch's (threshold 20). The math is float32 whatever ba's dtype: the decay must not
// round through bf16.
absl::StatusOr<GdnGates> GatedDeltaGates(const at::Tensor& ba, const at::Tensor& neg_a_exp,
                                         const at::Tensor& dt_bias);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_GDN_GATES_H_
