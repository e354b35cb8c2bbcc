// CUDA graphs of the model's decode pass, one per batch-size bucket, over static input buffers: a step
// pads its batch to the bucket, uploads its inputs into the bucket's buffer and replays the graph.
#ifndef DELTASERVE_SERVER_RUNNER_DECODE_GRAPHS_H_
#define DELTASERVE_SERVER_RUNNER_DECODE_GRAPHS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "models/qwen35/model.h"
#include "runner/host_transfer.h"
#include "runner/step_inputs.h"

namespace deltaserve::runner {

class DecodeGraphs {
 public:
  // Captures one graph per entry of `buckets` (ascending). The model, state and block table must outlive
  // the graphs, which read and write them in place. `max_seq_len` bounds every sequence's length (it
  // sizes the attention's work at capture). UNIMPLEMENTED without CUDA; INTERNAL when a capture fails.
  static absl::StatusOr<std::unique_ptr<DecodeGraphs>> Capture(const models::qwen35::Qwen35Model& model,
                                                               models::qwen35::Qwen35State& state,
                                                               const at::Tensor& block_table,
                                                               std::vector<int64_t> buckets, int64_t max_seq_len);
  ~DecodeGraphs();

  int64_t max_batch() const { return buckets_.empty() ? 0 : buckets_.back(); }
  const std::vector<int64_t>& buckets() const { return buckets_; }
  // The smallest bucket holding `n` sequences; 0 when none does.
  int64_t BucketFor(int64_t n) const;

  // Runs a decode pass of in.num_seqs() <= max_batch() sequences: pads to the bucket (padding rows have
  // a negative state slot and length 0), uploads through `transfer`, resolves fed token ids from
  // `last_tokens` when given (ResolveFedTokens) and replays. Returns logits [num_seqs, vocab]: a view of
  // the graph's output, valid until the next Run.
  at::Tensor Run(const StepInputs& in, HostTransfer& transfer, const at::Tensor* last_tokens = nullptr);

 private:
  struct Graph;
  DecodeGraphs() = default;
  std::vector<int64_t> buckets_;
  std::vector<std::unique_ptr<Graph>> graphs_;  // parallel to buckets_
};

// The default buckets: 1, 2, 4, 8, ... 256, cut at max_seqs, and max_seqs itself.
std::vector<int64_t> DefaultGraphBuckets(int64_t max_seqs);

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_DECODE_GRAPHS_H_
