// Token-by-token gated delta rule: the definition the chunked and decode kernels are tested against.
#include <ATen/ATen.h>

#include "check.h"
#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "gated_delta_inputs.h"

namespace deltaserve::kernels {

absl::StatusOr<GatedDeltaRuleOutput> RecurrentGatedDeltaRuleReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
    const GatedDeltaRuleOptions& options) {
  int64_t n = 0;
  DS_RETURN_IF_ERROR(
      internal::ValidateGatedDeltaArgs(q, k, v, g, beta, initial_state, cu_seqlens, options, &n));
  DS_CATCH_ATEN({
    internal::PackedGatedDeltaInputs in =
        internal::PackGatedDeltaInputs(q, k, v, g, beta, initial_state, cu_seqlens, n, options, 1);
    at::Tensor s = in.initial_state.clone();  // [N, H, dk, dv]
    const int64_t len = in.q.size(1);
    at::Tensor o = at::empty({n, len, in.v.size(2), in.v.size(3)}, in.v.options());
    for (int64_t t = 0; t < len; ++t) {
      at::Tensor qt = in.q.select(1, t), kt = in.k.select(1, t), vt = in.v.select(1, t);  // [N, H, d]
      s = s * in.g.select(1, t).exp().unsqueeze(-1).unsqueeze(-1);
      at::Tensor kv = (s * kt.unsqueeze(-1)).sum(-2);  // S^T k
      at::Tensor delta = (vt - kv) * in.beta.select(1, t).unsqueeze(-1);
      s = s + kt.unsqueeze(-1) * delta.unsqueeze(-2);
      o.select(1, t).copy_((s * qt.unsqueeze(-1)).sum(-2));
    }
    GatedDeltaRuleOutput out;
    out.o = internal::UnpackOutputs(in, o, v.scalar_type());
    out.final_state = s;  // float32, or float64 for float64 inputs
    return out;
  })
}

}  // namespace deltaserve::kernels
