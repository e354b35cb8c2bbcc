// The chunked prefill against the recurrent-state pool: each sequence starts from the state in its slot and
// leaves its final state there, in the pool's storage dtype, as a model's prefill step needs.
#ifndef DELTASERVE_KERNELS_CHUNK_GATED_DELTA_RULE_POOL_H_
#define DELTASERVE_KERNELS_CHUNK_GATED_DELTA_RULE_POOL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels {

// ChunkGatedDeltaRule (same q, k, v, g, beta, cu_seqlens and options) where sequence i's initial state is
// the one in pool slot slots[i], dequantized, and its final state is written back to that slot, quantized
// with ReadStates' and WriteStates' rules (round to nearest). The pool's [Hv, dk, dv] must match the
// inputs'. slots: int64 [N], one per sequence, distinct, in the pool; host_slots, when non-empty, is the
// caller's host copy (same values), so that nothing is read back from the device.
// On CUDA where the fused kernels take the shapes, the state pass reads and writes the slots itself: no
// dense copy of the states, and for INT8 / FP8 pools one quantizing launch after it. Elsewhere it is
// exactly ReadStates, ChunkGatedDeltaRule and WriteStates. Returns o and the inverse's stats; final_state
// is left undefined (the states are in the pool).
absl::StatusOr<GatedDeltaRuleOutput> ChunkGatedDeltaRuleInPool(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v, const at::Tensor& g,
                                                               const at::Tensor& beta, const at::Tensor& cu_seqlens,
                                                               RecurrentStatePool& pool, const at::Tensor& slots,
                                                               absl::Span<const int64_t> host_slots,
                                                               const GatedDeltaRuleOptions& options);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_CHUNK_GATED_DELTA_RULE_POOL_H_
