// Decode-time gated delta rule: a pool of per-sequence recurrent states, stored as fp32, bf16, INT8 or
// FP8 (e4m3) with fine-grained fp32 scales, and the one-token step that updates addressed slots in place.
#ifndef DELTASERVE_KERNELS_RECURRENT_STATE_H_
#define DELTASERVE_KERNELS_RECURRENT_STATE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace deltaserve::kernels {

enum class StateDtype {
  kFloat32,
  kBFloat16,
  kInt8,            // per (head, row) fp32 scale, round-to-nearest: the default quantized state
  kInt8Stochastic,  // per (head, row) scale, stochastic rounding (unbiased, twice RTN's variance)
  kInt8Coarse,      // one scale per head, round-to-nearest: the naive scheme public reports warn of
  kFloat8E4M3,      // e4m3 values, per (head, row) fp32 scale, round-to-nearest (the cast's rounding)
};

absl::StatusOr<StateDtype> ParseStateDtype(absl::string_view name);
std::string StateDtypeName(StateDtype dtype);
// Bytes one [dk, dv] head state takes in the pool, scales included.
int64_t StateBytesPerHead(StateDtype dtype, int64_t dk, int64_t dv);

// Slots of recurrent state, [slots, Hv, dk, dv]. `values` holds the state in its storage dtype (float,
// bfloat16, int8 or float8_e4m3fn); `scales` [slots, Hv, dk] (one per row; per head for
// kInt8Coarse, broadcast over rows) for the scaled dtypes, undefined otherwise. Rows are the dk index:
// the delta update adds k_i * u to row i, so a row's range moves as a unit.
struct RecurrentStatePool {
  StateDtype dtype = StateDtype::kFloat32;
  at::Tensor values;
  at::Tensor scales;
  uint64_t seed = 0x5eed;  // stochastic rounding stream; advanced by every step
  uint64_t step = 0;

  int64_t slots() const { return values.size(0); }
  int64_t heads() const { return values.size(1); }
};

absl::StatusOr<RecurrentStatePool> MakeRecurrentStatePool(int64_t slots, int64_t heads, int64_t dk,
                                                          int64_t dv, StateDtype dtype,
                                                          const at::Device& device);
// Host metadata: `host_slots` below, when non-empty, is the caller's host copy of `slots` (same values,
// same order: the caller's contract, not checked against the device). The checks then read it instead
// of the tensor, so nothing is copied back from the device; left empty, a CUDA `slots` is read back
// (a device sync) to be checked.

// Writes fp32 states [n, Hv, dk, dv] (e.g. a prefill's final state) into slots [n] (int64, distinct,
// in the pool), quantizing.
absl::Status WriteStates(RecurrentStatePool& pool, const at::Tensor& slots, const at::Tensor& states,
                         absl::Span<const int64_t> host_slots = {});
// Reads slots [n] back as fp32 [n, Hv, dk, dv].
absl::StatusOr<at::Tensor> ReadStates(const RecurrentStatePool& pool, const at::Tensor& slots,
                                      absl::Span<const int64_t> host_slots = {});

struct DecodeStepOptions {
  bool l2norm_qk = false;
  std::optional<double> scale;  // default dk^-0.5
  // The caller's host copy of `slots` (see above). With it, and slots on the pool's device, the CUDA
  // step is free of host synchronisation and can be captured in a CUDA graph.
  absl::Span<const int64_t> host_slots;
  // On CUDA, the register-tiled kernel where the head shape allows it (dk = dv = 64 or 128; q, k, v
  // float32 or bfloat16, read in place); false: the general kernel (the benchmark's baseline).
  bool tiled_cuda = true;
  // On a Hopper GPU, 1-byte states (INT8, FP8) in that shape take the streamed kernel (persistent blocks,
  // the next head's state copied into shared memory during the current one's arithmetic; the same bytes);
  // false: the register-tiled kernel (the benchmark's baseline for it).
  bool streamed_cuda = true;
};

// One token for each of B sequences: q, k [B, Hk, dk], v [B, Hv, dv], g, beta [B, Hv] (g and beta are
// read as fp32 whatever their dtype), slots [B] int64 indices into the pool, distinct among the
// non-negative ones. A negative slot marks a padding row (vLLM's PAD_SLOT_ID): its output row is zero
// and no state is touched. Dequantizes, decays, applies the delta update, computes o = S^T q and
// requantizes each head in one pass over the state; slots not addressed are untouched. Returns
// o [B, Hv, dv] in v's dtype.
absl::StatusOr<at::Tensor> RecurrentGatedDeltaStep(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& g,
                                                   const at::Tensor& beta, const at::Tensor& slots,
                                                   RecurrentStatePool& pool,
                                                   const DecodeStepOptions& options = {});

// T consecutive tokens for each of B sequences in one pass over their states (the verification step of
// speculative decoding, or a prompt's short tail): q, k [B, T, Hk, dk], v [B, T, Hv, dv], g, beta
// [B, T, Hv], slots [B] as above (negative: padding, zero output). Each addressed head state is read and
// dequantized once, stepped T times in float32, and requantized and written once, so a quantized state
// rounds once per call instead of once per token, and its bytes move once for T tokens. Returns
// o [B, T, Hv, dv] in v's dtype; T = 1 is RecurrentGatedDeltaStep's maths. The states after the
// intermediate tokens are not kept (a rejected draft token needs the state before it: next).
absl::StatusOr<at::Tensor> RecurrentGatedDeltaSteps(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v, const at::Tensor& g,
                                                    const at::Tensor& beta, const at::Tensor& slots,
                                                    RecurrentStatePool& pool,
                                                    const DecodeStepOptions& options = {});

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_RECURRENT_STATE_H_
