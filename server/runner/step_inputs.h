// One forward pass's inputs as the runner lays them out: built on the host from what it already knows
// (slots, lengths, block tables), packed into one int64 buffer for one upload, viewed as a ForwardBatch.
#ifndef DELTASERVE_SERVER_RUNNER_STEP_INPUTS_H_
#define DELTASERVE_SERVER_RUNNER_STEP_INPUTS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "models/qwen35/forward_batch.h"

namespace deltaserve::runner {

struct StepInputs {
  bool decode = false;
  // [T]. A negative id -(s + 1) stands for the token last sampled for state slot s, which is still on
  // the device (asynchronous scheduling feeds it before the host has read it); see ResolveFedTokens.
  std::vector<int64_t> token_ids, positions, kv_slots;
  bool fed_tokens = false;  // some token_ids are negative
  std::vector<int64_t> state_slots, seq_lens, starts;   // [N]
  std::vector<int64_t> cu_seqlens;                      // [N + 1]
  std::vector<int64_t> logit_rows;                      // [R]; empty with all_rows
  bool all_rows = false;                                // logits for every token row
  int64_t max_seq_len = 0;

  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  int64_t num_seqs() const { return static_cast<int64_t>(state_slots.size()); }
  // Packed layout: [token_ids | positions | kv_slots | state_slots | seq_lens | cu_seqlens | logit_rows].
  int64_t PackedSize() const;
  void Pack(int64_t* out) const;
};

// Views `packed` (a device copy of Pack()'s buffer) as the model's batch. `block_table` is the runner's
// [slots, max_blocks] int32 table on the device; the batch's rows are gathered from it on the device
// (padding rows read row 0, which their zero length never uses).
models::qwen35::ForwardBatch ViewBatch(const StepInputs& in, const at::Tensor& packed, const at::Tensor& block_table);

// The id StepInputs uses for "the token last sampled for `slot`".
inline int64_t FedTokenId(int64_t slot) { return -(slot + 1); }

// Replaces, in place on the device, every negative id -(s + 1) of `token_ids` (int64, the uploaded copy
// of StepInputs::token_ids) by last_tokens[s] ([slots] int64 on the same device). No host sync.
void ResolveFedTokens(const at::Tensor& token_ids, const at::Tensor& last_tokens);

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_STEP_INPUTS_H_
