// Depthwise causal conv1d (Qwen3.5's short convolution before the gated delta rule): the full-sequence
// form for prefill (packed variable-length sequences) and the one-token update against a conv-state pool.
#ifndef DELTASERVE_KERNELS_CAUSAL_CONV1D_H_
#define DELTASERVE_KERNELS_CAUSAL_CONV1D_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace deltaserve::kernels {

struct CausalConv1dOutput {
  at::Tensor y;            // [B, T, D]
  at::Tensor final_state;  // [N, D, K - 1]: the last K - 1 inputs of each sequence (zeros before)
};

// Host metadata: `host_cu_seqlens` / `host_slots`, when non-empty, are the caller's host copies of
// `cu_seqlens` / `slots` (same values: the caller's contract, not checked against the device). The
// checks and the index arithmetic then use them, and nothing is read back from the device; left
// empty, CUDA index tensors are read back (a device sync).

// x [B, T, D]; weight [D, K]; bias [D] or undefined; initial_state [N, D, K - 1] or undefined (zeros);
// cu_seqlens as in ChunkGatedDeltaRule (B = 1 packing). y_t = act(sum_j w[:, j] x_{t - K + 1 + j} + b),
// act = SiLU when `silu`, else identity.
absl::StatusOr<CausalConv1dOutput> CausalConv1d(const at::Tensor& x, const at::Tensor& weight,
                                                const at::Tensor& bias, const at::Tensor& initial_state,
                                                const at::Tensor& cu_seqlens, bool silu,
                                                absl::Span<const int64_t> host_cu_seqlens = {});

// One token per sequence: x [B, D] (rows may be strided, channels contiguous); conv_state pool [slots, D, K - 1] updated in place at slots [B]
// (int64, distinct among the non-negative ones). A negative slot marks a padding row: its y row is
// zero and no state is touched. On CUDA one fused kernel, free of host synchronisation when slots is
// on x's device (with host_slots, or the check reads slots back). Returns y [B, D].
absl::StatusOr<at::Tensor> CausalConv1dStep(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bias, at::Tensor& conv_state,
                                            const at::Tensor& slots, bool silu,
                                            absl::Span<const int64_t> host_slots = {});

// Prefill against the conv-state pool: x [T, D] (rows may be strided, channels contiguous) holds N packed
// sequences (cu_seqlens int64 [N + 1], 0 .. T); sequence i continues from the state in slots[i] of
// conv_state [slots, D, K - 1] (slots int64 [N], distinct, none negative), and that state is replaced in
// place by the sequence's last K - 1 inputs (an empty sequence keeps it). Returns y [T, D] in x's dtype,
// as CausalConv1d over the gathered states. On CUDA two fused launches (outputs, then states) for K of 2
// to 4, free of host synchronisation given both host copies; elsewhere CausalConv1d with the states
// gathered and scattered around it.
absl::StatusOr<at::Tensor> CausalConv1dPrefill(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                               at::Tensor& conv_state, const at::Tensor& slots,
                                               const at::Tensor& cu_seqlens, bool silu,
                                               absl::Span<const int64_t> host_cu_seqlens = {},
                                               absl::Span<const int64_t> host_slots = {});

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_CAUSAL_CONV1D_H_
