// Chunked gated delta rule (prefill). Within a chunk with cumulative log decay G and start state S0,
// the delta updates U solve (I + A) U = beta V - diag(beta e^G) K S0 with
// A_ij = beta_i (k_i . k_j) e^(G_i - G_j) (i > j), so with T = (I + A)^-1:
//   U = T (beta V) - T (beta e^G K) S0,   O = (Q e^G) S0 + tril(Q K^T e^(G_i - G_j)) U,
//   S1 = e^(G_C) S0 + (K e^(G_C - G))^T U.
// Everything but the chunk-to-chunk carry of S runs for all chunks at once.
#include "deltaserve/kernels/chunk_gated_delta_rule.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "check.h"
#include "gated_delta_inputs.h"
#ifdef DELTASERVE_WITH_CUDA
#include "chunk_gated_delta_rule_cuda.h"
#endif

namespace deltaserve::kernels {

#ifdef DELTASERVE_WITH_CUDA
namespace internal {
absl::StatusOr<GatedDeltaRuleOutput> RunFusedPrefill(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& g, const at::Tensor& beta,
                                                     const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
                                                     const GatedDeltaRuleOptions& options, RecurrentStatePool* pool,
                                                     const at::Tensor& slots) {
  FusedPrefillArgs a;
  std::vector<int64_t> fixed;  // sequence offsets of an unpacked [B, T] batch
  if (cu_seqlens.defined()) {
    DS_ASSIGN_OR_RETURN(HostIndices cu, HostValues(cu_seqlens, options.host_cu_seqlens, "cu_seqlens", "host_cu_seqlens"));
    fixed.assign(cu.values.begin(), cu.values.end());
  } else {
    for (int64_t i = 0; i <= q.size(0); ++i) fixed.push_back(i * q.size(1));
  }
  DS_CATCH_ATEN({
    a.q = q;
    a.k = k;
    a.v = v;
    a.g = g.to(at::kFloat).contiguous();
    a.beta = beta.to(at::kFloat).contiguous();
    if (initial_state.defined()) a.initial_state = initial_state.to(at::kFloat).contiguous();
    a.pool = pool;
    a.slots = slots;
    a.device_offsets = cu_seqlens.defined() ? cu_seqlens : IndexOnDevice(fixed, q.device());
    a.offsets = fixed;
    a.chunk_size = options.chunk_size;
    a.l2norm_qk = options.l2norm_qk;
    a.scale = static_cast<float>(options.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3)))));
    a.inverse = options.inverse;
    a.read_inverse_stats = options.sync_inverse_stats;
    return ChunkGatedDeltaRuleCuda(a);
  })
}
}  // namespace internal
#endif

absl::StatusOr<GatedDeltaRuleOutput> ChunkGatedDeltaRule(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& g,
                                                         const at::Tensor& beta,
                                                         const at::Tensor& initial_state,
                                                         const at::Tensor& cu_seqlens,
                                                         const GatedDeltaRuleOptions& options) {
  int64_t n = 0;
  DS_RETURN_IF_ERROR(
      internal::ValidateGatedDeltaArgs(q, k, v, g, beta, initial_state, cu_seqlens, options, &n));
#ifdef DELTASERVE_WITH_CUDA
  if (options.fused_cuda && internal::FusedPrefillSupports(q, v, options)) {
    return internal::RunFusedPrefill(q, k, v, g, beta, initial_state, cu_seqlens, options);
  }
#endif
  DS_CATCH_ATEN({
    const int64_t c = options.chunk_size;
    internal::PackedGatedDeltaInputs in =
        internal::PackGatedDeltaInputs(q, k, v, g, beta, initial_state, cu_seqlens, n, options, c);
    const int64_t len = in.q.size(1), h = in.q.size(2), dv = in.v.size(3);
    const int64_t nc = len / c;
    // [N, L, H, d] -> [N, H, nc, C, d]: heads and chunks become batch dimensions of the matmuls.
    auto chunked = [&](const at::Tensor& x) {
      return x.view({n, nc, c, h, x.size(3)}).permute({0, 3, 1, 2, 4}).contiguous();
    };
    at::Tensor qc = chunked(in.q), kc = chunked(in.k), vc = chunked(in.v);
    at::Tensor gcum = in.g.view({n, nc, c, h}).permute({0, 3, 1, 2}).cumsum(-1);  // [N, H, nc, C]
    at::Tensor bc = in.beta.view({n, nc, c, h}).permute({0, 3, 1, 2}).unsqueeze(-1);

    // Decay between tokens i >= j of a chunk; masked before exp so i < j cannot overflow.
    at::Tensor upper = at::ones({c, c}, qc.options().dtype(at::kBool)).triu(1);
    at::Tensor decay = (gcum.unsqueeze(-1) - gcum.unsqueeze(-2)).masked_fill(upper, -INFINITY).exp();
    at::Tensor a = (at::matmul(kc, kc.transpose(-1, -2)) * decay * bc).tril(-1);

    GatedDeltaRuleOutput out;
    DS_ASSIGN_OR_RETURN(at::Tensor tinv, InvertUnitLowerTriangular(a, options.inverse, &out.inverse_stats));
    tinv = tinv.to(qc.scalar_type());
    at::Tensor eg = gcum.exp().unsqueeze(-1);         // e^G      [N, H, nc, C, 1]
    at::Tensor u0 = at::matmul(tinv, vc * bc);        // T beta V [.., C, dv]
    at::Tensor w = at::matmul(tinv, kc * (bc * eg));  // T beta e^G K [.., C, dk]
    at::Tensor qe = qc * eg;
    at::Tensor attn = at::matmul(qc, kc.transpose(-1, -2)) * decay;  // lower incl. diagonal
    at::Tensor g_last = gcum.narrow(-1, c - 1, 1);                   // [N, H, nc, 1]
    at::Tensor kd = kc * (g_last.unsqueeze(-1) - gcum.unsqueeze(-1)).exp();
    at::Tensor state_decay = g_last.exp().unsqueeze(-1);  // [N, H, nc, 1, 1]

    at::Tensor s = in.initial_state.clone();  // [N, H, dk, dv]
    at::Tensor o = at::empty({n, h, nc, c, dv}, qc.options());
    for (int64_t i = 0; i < nc; ++i) {
      at::Tensor u = u0.select(2, i) - at::matmul(w.select(2, i), s);
      o.select(2, i).copy_(at::matmul(qe.select(2, i), s) + at::matmul(attn.select(2, i), u));
      s = s * state_decay.select(2, i) + at::matmul(kd.select(2, i).transpose(-1, -2), u);
    }
    o = o.permute({0, 2, 3, 1, 4}).reshape({n, len, h, dv});
    out.o = internal::UnpackOutputs(in, o, v.scalar_type());
    out.final_state = s;  // float32, or float64 for float64 inputs
    return out;
  })
}

}  // namespace deltaserve::kernels
