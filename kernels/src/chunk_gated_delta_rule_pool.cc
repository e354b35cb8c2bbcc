// The prefill in the pool: one validation of inputs, pool and slots, then the fused CUDA kernels with the
// pool as their state source and sink, or the composition ReadStates -> ChunkGatedDeltaRule -> WriteStates.
#include "deltaserve/kernels/chunk_gated_delta_rule_pool.h"

#include <ATen/ATen.h>

#include <utility>

#include "check.h"
#include "gated_delta_inputs.h"
#include "state_pool_check.h"
#include "state_quant.h"
#ifdef DELTASERVE_WITH_CUDA
#include "chunk_gated_delta_rule_cuda.h"
#endif

namespace deltaserve::kernels {

absl::StatusOr<GatedDeltaRuleOutput> ChunkGatedDeltaRuleInPool(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v, const at::Tensor& g,
                                                               const at::Tensor& beta, const at::Tensor& cu_seqlens,
                                                               RecurrentStatePool& pool, const at::Tensor& slots,
                                                               absl::Span<const int64_t> host_slots,
                                                               const GatedDeltaRuleOptions& options) {
  int64_t n = 0;
  DS_RETURN_IF_ERROR(internal::ValidateGatedDeltaArgs(q, k, v, g, beta, at::Tensor(), cu_seqlens, options, &n));
  DS_RETURN_IF_ERROR(internal::CheckPool(pool));
  DS_RETURN_IF_ERROR(internal::CheckSameDevice(pool.values, "state pool", v));
  DS_RETURN_IF_ERROR(internal::CheckSize(pool.values, "state pool", 1, v.size(2), "Hv, v's value heads"));
  DS_RETURN_IF_ERROR(internal::CheckSize(pool.values, "state pool", 2, q.size(3), "dk, q's head size"));
  DS_RETURN_IF_ERROR(internal::CheckSize(pool.values, "state pool", 3, v.size(3), "dv, v's head size"));
  DS_ASSIGN_OR_RETURN(const internal::HostIndices host,
                      internal::CheckSlots(slots, host_slots, n, pool.slots(), /*allow_padding=*/false));
  at::Tensor device_slots;
  DS_CATCH_ATEN({ device_slots = internal::SlotsOnPoolDevice(pool, slots, host); })
#ifdef DELTASERVE_WITH_CUDA
  const bool dense_pool =
      pool.values.is_contiguous() && (!internal::IsScaled(pool.dtype) || pool.scales.is_contiguous());
  if (pool.values.is_cuda() && dense_pool && options.fused_cuda && internal::FusedPrefillSupports(q, v, options)) {
    return internal::RunFusedPrefill(q, k, v, g, beta, at::Tensor(), cu_seqlens, options, &pool, device_slots);
  }
#endif
  at::Tensor initial;
  DS_CATCH_ATEN({ initial = internal::GatherDequantized(pool, device_slots, host.values); })
  DS_ASSIGN_OR_RETURN(GatedDeltaRuleOutput out,
                      ChunkGatedDeltaRule(q, k, v, g, beta, initial, cu_seqlens, options));
  DS_CATCH_ATEN({
    internal::ScatterQuantized(pool, device_slots, out.final_state.to(at::kFloat), /*stochastic=*/false,
                               host.values);
  })
  out.final_state = at::Tensor();
  return out;
}

}  // namespace deltaserve::kernels
