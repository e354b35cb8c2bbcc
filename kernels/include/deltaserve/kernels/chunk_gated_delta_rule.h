// Chunked (prefill) gated delta rule: the whole prompt in parallel chunks of C tokens, each chunk's
// triangular system solved by a TriInverse method, and the state carried from chunk to chunk.
// Qwen3.5 shapes; variable-length packed prompts via cu_seqlens. Runs on any device ATen supports.
#ifndef DELTASERVE_KERNELS_CHUNK_GATED_DELTA_RULE_H_
#define DELTASERVE_KERNELS_CHUNK_GATED_DELTA_RULE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "deltaserve/kernels/tri_inverse.h"

namespace deltaserve::kernels {

struct GatedDeltaRuleOptions {
  int64_t chunk_size = 64;  // C: 16, 32, 64 or 128
  TriInverseOptions inverse = DefaultTriInverseOptions(64, TriInverseMethod::kNeumann);
  bool l2norm_qk = false;       // L2-normalise q and k over dk inside the kernel
  std::optional<double> scale;  // q scale; default dk^-0.5
  // The caller's host copy of cu_seqlens (same values: the caller's contract). When given, the offsets
  // are checked and used from it and cu_seqlens is never read back from the device.
  absl::Span<const int64_t> host_cu_seqlens;
  // On CUDA, run the fused kernels (kernels/cuda/chunk_gated_delta_rule_cuda.cu) where they take the
  // shapes: dk and dv in 16..128 and multiples of 16, C <= 64, float32 or bfloat16, and the forward,
  // neumann or product inverse at 32-bit matmuls. false forces the ATen composition (benchmarks).
  bool fused_cuda = true;
  // The fused kernels count guard fallbacks on the device; true copies the count back into
  // inverse_stats (a device sync). The ATen composition always counts (it syncs anyway).
  bool sync_inverse_stats = false;
};

struct GatedDeltaRuleOutput {
  at::Tensor o;            // [B, T, Hv, dv], dtype of v
  at::Tensor final_state;  // [N, Hv, dk, dv] float32 (float64 for float64 inputs); N = B or #packed
  TriInverseStats inverse_stats;
};

// Per token t of each sequence, per value head h (key head h / (Hv / Hk)):
//   S = exp(g_t) S;  S += k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T (scale q_t).
// q, k: [B, T, Hk, dk]; v: [B, T, Hv, dv]; g (log decay, <= 0), beta: [B, T, Hv]; all one float dtype
// (float32, float64 or bfloat16; the math runs in float32 or better), except that g and beta may be
// float32 whatever the others are (a decay rounded through bfloat16 loses the long memory). initial_state: [N, Hv, dk, dv]
// or undefined for zeros. cu_seqlens: undefined, or int64 [N + 1] offsets of packed sequences in a
// B = 1 batch (then T = cu_seqlens[N]); sequences never exchange state.
absl::StatusOr<GatedDeltaRuleOutput> ChunkGatedDeltaRule(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& g,
                                                         const at::Tensor& beta,
                                                         const at::Tensor& initial_state,
                                                         const at::Tensor& cu_seqlens,
                                                         const GatedDeltaRuleOptions& options);

// The token-by-token recurrence above, for reference and short inputs (same arguments).
absl::StatusOr<GatedDeltaRuleOutput> RecurrentGatedDeltaRuleReference(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
    const at::Tensor& beta, const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
    const GatedDeltaRuleOptions& options);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_CHUNK_GATED_DELTA_RULE_H_
