// Input handling shared by the chunked and recurrent gated delta rule: validation, the in-kernel
// q/k normalisation and head repeat, and the packing of sequences into a padded [N, L, H, d] layout.
#ifndef DELTASERVE_KERNELS_SRC_GATED_DELTA_INPUTS_H_
#define DELTASERVE_KERNELS_SRC_GATED_DELTA_INPUTS_H_

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/statusor.h"
#include "deltaserve/kernels/chunk_gated_delta_rule.h"

namespace deltaserve::kernels::internal {

// The inputs per sequence, padded to a common length `padded_len` (a multiple of `multiple`), in the
// compute dtype (float32, or float64 for float64 inputs), heads already repeated to Hv. Padding has
// k = v = q = 0, beta = 0 and g = 0: it neither decays nor writes the state.
struct PackedGatedDeltaInputs {
  at::Tensor q, k, v, g, beta;           // [N, L, Hv, d] / [N, L, Hv]
  at::Tensor initial_state;              // [N, Hv, dk, dv], zeros when none was given
  std::vector<int64_t> starts, lengths;  // of each sequence in the caller's [B*T] token order
  int64_t batch = 0, time = 0;           // B, T of the caller's layout
  bool packed = false;                   // cu_seqlens given
};

absl::Status ValidateGatedDeltaArgs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& g, const at::Tensor& beta,
                                    const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
                                    const GatedDeltaRuleOptions& options, int64_t* num_sequences);

// Call after ValidateGatedDeltaArgs. Throws c10::Error on ATen failures (callers wrap in DS_CATCH_ATEN).
PackedGatedDeltaInputs PackGatedDeltaInputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& g, const at::Tensor& beta,
                                            const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
                                            int64_t num_sequences, const GatedDeltaRuleOptions& options,
                                            int64_t multiple);

// Scatters per-sequence outputs [N, L, Hv, dv] back to the caller's [B, T, Hv, dv] in `dtype`.
at::Tensor UnpackOutputs(const PackedGatedDeltaInputs& in, const at::Tensor& o, at::ScalarType dtype);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_GATED_DELTA_INPUTS_H_
