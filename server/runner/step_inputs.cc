// Packing a pass's inputs for one upload and viewing them as the model's batch (see step_inputs.h).
#include "runner/step_inputs.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace deltaserve::runner {

int64_t StepInputs::PackedSize() const {
  return 3 * num_tokens() + 2 * num_seqs() + static_cast<int64_t>(cu_seqlens.size()) +
         static_cast<int64_t>(logit_rows.size());
}

void StepInputs::Pack(int64_t* out) const {
  for (const std::vector<int64_t>* v :
       {&token_ids, &positions, &kv_slots, &state_slots, &seq_lens, &cu_seqlens, &logit_rows}) {
    out = std::copy(v->begin(), v->end(), out);
  }
}

models::qwen35::ForwardBatch ViewBatch(const StepInputs& in, const at::Tensor& packed, const at::Tensor& block_table) {
  models::qwen35::ForwardBatch b;
  const int64_t t = in.num_tokens(), n = in.num_seqs();
  b.decode = in.decode;
  b.num_seqs = n;
  b.num_tokens = t;
  int64_t off = 0;
  auto take = [&](int64_t len) {
    at::Tensor v = packed.narrow(0, off, len);
    off += len;
    return v;
  };
  b.token_ids = take(t);
  b.positions = take(t);
  b.kv_slots = take(t);
  b.state_slots = take(n);
  b.seq_lens = take(n).to(at::kInt);
  b.cu_seqlens = take(n + 1);
  if (!in.all_rows) b.logit_rows = take(static_cast<int64_t>(in.logit_rows.size()));
  b.block_tables = block_table.index_select(0, b.state_slots.clamp_min(0));
  b.host_state_slots = in.state_slots;
  b.host_cu_seqlens = in.cu_seqlens;
  b.host_starts = in.starts;
  b.max_seq_len = in.max_seq_len;
  return b;
}

void ResolveFedTokens(const at::Tensor& token_ids, const at::Tensor& last_tokens) {
  const at::Tensor fed = token_ids.lt(0);
  const at::Tensor slots = token_ids.neg().sub_(1).clamp_min_(0);
  token_ids.copy_(at::where(fed, last_tokens.index_select(0, slots), token_ids));
}

}  // namespace deltaserve::runner
