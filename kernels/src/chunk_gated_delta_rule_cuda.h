// The fused CUDA chunked prefill behind ChunkGatedDeltaRule: two launches (per chunk: decayed K K^T,
// the in-kernel triangular inverse and W/U; then per sequence and value block: the chunk-to-chunk pass).
#ifndef DELTASERVE_KERNELS_SRC_CHUNK_GATED_DELTA_RULE_CUDA_H_
#define DELTASERVE_KERNELS_SRC_CHUNK_GATED_DELTA_RULE_CUDA_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels::internal {

// Inputs as ChunkGatedDeltaRule validated them. q, k [B, T, Hk, dk], v [B, T, Hv, dv]: contiguous, all
// float32 or all bfloat16; g, beta [B, T, Hv] float32 contiguous; initial_state [N, Hv, dk, dv] float32
// contiguous or undefined (zeros). `offsets` [N + 1] are the sequences' token offsets into the flattened
// B * T tokens on the host, `device_offsets` the same values on the device (never read back).
struct FusedPrefillArgs {
  at::Tensor q, k, v, g, beta, initial_state, device_offsets;
  // The prefill in the pool: with `pool`, sequence i starts from slot slots[i] (int64 on the pool's device)
  // and its final state is written back there, and initial_state is unused.
  RecurrentStatePool* pool = nullptr;
  at::Tensor slots;
  absl::Span<const int64_t> offsets;
  int64_t chunk_size = 64;
  bool l2norm_qk = false;
  float scale = 1.0f;
  TriInverseOptions inverse;
  bool read_inverse_stats = false;  // copy the guard's counters back (a device sync) into the stats
};

// Whether the fused kernels take these shapes and options: dk, dv in 16..128 and multiples of 16, C in
// {16, 32, 64}, float32 or bfloat16, inverse methods forward / neumann / product at 32-bit matmuls.
// Anything else runs the ATen composition.
bool FusedPrefillSupports(const at::Tensor& q, const at::Tensor& v, const GatedDeltaRuleOptions& options);

// o [B, T, Hv, dv] in v's dtype and final_state [N, Hv, dk, dv] float32 (undefined with a pool: the final
// states are in it). Throws c10::Error.
GatedDeltaRuleOutput ChunkGatedDeltaRuleCuda(const FusedPrefillArgs& args);

// ChunkGatedDeltaRule's fused path from validated arguments: the host offsets (from host_cu_seqlens, or a
// read-back of cu_seqlens, or the fixed lengths of an unpacked batch) and the kernels' arguments, then
// ChunkGatedDeltaRuleCuda. With `pool` (and `slots` on its device) the states come from and go to the pool.
absl::StatusOr<GatedDeltaRuleOutput> RunFusedPrefill(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& g, const at::Tensor& beta,
                                                     const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
                                                     const GatedDeltaRuleOptions& options,
                                                     RecurrentStatePool* pool = nullptr, const at::Tensor& slots = {});

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CHUNK_GATED_DELTA_RULE_CUDA_H_
