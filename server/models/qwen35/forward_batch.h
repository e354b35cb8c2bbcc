// What one forward pass of the Qwen3.5 model reads besides the weights: the tokens' ids and positions and
// where each sequence's state lives (state slots, paged KV slots), on the device and, as metadata, on the host.
#ifndef DELTASERVE_SERVER_MODELS_QWEN35_FORWARD_BATCH_H_
#define DELTASERVE_SERVER_MODELS_QWEN35_FORWARD_BATCH_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace deltaserve::models::qwen35 {

// N sequences packed back to back into T tokens. Built by whoever owns the state (the runner), which
// also guarantees its consistency: the model checks shapes, never values, so that it reads nothing back
// from the device and a decode pass can be captured in a CUDA graph.
struct ForwardBatch {
  // Every sequence appends exactly one token to a started sequence: the decode kernels (recurrent step,
  // conv step, paged decode attention). Otherwise the chunked prefill kernels run.
  bool decode = false;
  int64_t num_seqs = 0;    // N, padding rows included
  int64_t num_tokens = 0;  // T (equals N for decode)

  // Device tensors.
  at::Tensor token_ids;     // [T] int64
  at::Tensor positions;     // [T] int64: position of each token in its sequence
  at::Tensor state_slots;   // [N] int64: recurrent and conv state slot; negative: padding row (skipped)
  at::Tensor kv_slots;      // [T] int64: flat paged-KV slot (block * block_size + offset); negative: skip
  at::Tensor block_tables;  // [N, max_blocks] int32: each sequence's KV blocks in order
  at::Tensor seq_lens;      // [N] int32: the sequence's length after this pass (0 for padding rows)
  at::Tensor cu_seqlens;    // [N + 1] int64: token offsets of the sequences (prefill)
  at::Tensor logit_rows;    // [R] int64: rows of the hidden states to compute logits for

  // Host metadata, equal to the device values above (prefill and checks only; decode reads none of it
  // after capture).
  std::vector<int64_t> host_state_slots;  // [N]
  std::vector<int64_t> host_cu_seqlens;   // [N + 1]
  std::vector<int64_t> host_starts;       // [N]: tokens already in each sequence before this pass
  int64_t max_seq_len = 0;                // >= every seq_lens entry (sizes the attention's work)
};

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_FORWARD_BATCH_H_
