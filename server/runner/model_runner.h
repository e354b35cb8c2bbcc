// The model runner: owns the device side of text generation (the model, the sequences' state slots and
// paged KV blocks, step buffers, decode graphs, sampling) and executes the engine's scheduled batches.
#ifndef DELTASERVE_SERVER_RUNNER_MODEL_RUNNER_H_
#define DELTASERVE_SERVER_RUNNER_MODEL_RUNNER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/layer_timer.h"
#include "models/qwen35/model.h"
#include "runner/batch_sampler.h"
#include "runner/decode_graphs.h"
#include "runner/host_transfer.h"
#include "runner/kv_block_allocator.h"
#include "runner/sampler.h"
#include "runner/step_inputs.h"

namespace deltaserve::runner {

struct RunnerOptions {
  int64_t max_seqs = 8;         // sequence slots (recurrent and conv state)
  int64_t max_model_len = 4096;  // tokens per sequence
  int64_t kv_block_size = 16;    // tokens per paged KV block
  // KV capacity in tokens. 0: on CPU max_seqs * max_model_len; on CUDA whatever fits in
  // gpu_memory_utilization of the device's memory once weights, state and a working reserve are counted.
  int64_t kv_cache_tokens = 0;
  double gpu_memory_utilization = 0.9;  // fraction of the device's memory this process may use (CUDA)
  bool cuda_graphs = true;              // capture the decode pass (CUDA); false: always eager
  std::vector<int64_t> graph_batch_sizes;  // empty: DefaultGraphBuckets(max_seqs)
};

// One sequence's part of a forward pass.
struct ScheduledSequence {
  int64_t slot = -1;            // from AddSequence
  std::vector<int32_t> tokens;  // appended this pass: a prompt chunk, or the last sampled token
  bool sample = false;          // sample the next token after them (decodes and a prompt's last chunk)
  // Instead of `tokens` (then left empty): one token, the one this runner last sampled for the slot,
  // read where it lies on the device. This lets the engine launch a decode before the previous pass's
  // samples have reached the host (asynchronous scheduling).
  bool feed_last_sample = false;
};

// What the engine asks the runner to run: all decodes, or prompt chunks.
struct ScheduledBatch {
  std::vector<ScheduledSequence> sequences;
  models::LayerTimer* timer = nullptr;  // times this pass's layers (an eager pass) when set
};

struct StepOutput {
  // Parallel to ScheduledBatch::sequences: the sampled token (recorded in the sequence's history), an
  // error that concerns that sequence alone, or nothing when it did not sample.
  std::vector<std::optional<absl::StatusOr<SampleResult>>> samples;
};

// A launched pass whose samples are still on their way to the host; ModelRunner::Collect turns it into
// the pass's StepOutput. Move-only.
class PendingStep {
 public:
  PendingStep(PendingStep&&) = default;
  PendingStep& operator=(PendingStep&&) = default;

 private:
  friend class ModelRunner;
  PendingStep() = default;
  size_t num_sequences = 0;
  std::vector<size_t> sampled;    // positions in the batch of the sequences that sample, in row order
  std::vector<int64_t> slots;     // per sampled row: its slot
  std::vector<uint64_t> epochs;   // per sampled row: the slot's sequence at launch (see epochs_)
  BatchSampleLayout layout;
  PendingDownload download;
};

struct RunnerCapacity {
  int64_t slots = 0, kv_blocks = 0, block_size = 0;
  int64_t kv_tokens() const { return kv_blocks * block_size; }
};

class ModelRunner {
 public:
  // Allocates the state slots and KV blocks (sized as RunnerOptions says, logged) and, on CUDA with
  // cuda_graphs, captures the decode graphs. InvalidArgument for bad options; ResourceExhausted when
  // the state does not fit.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(std::unique_ptr<models::qwen35::Qwen35Model> model,
                                                             const RunnerOptions& options);
  // Qwen35Model::Load followed by Create.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Load(const std::string& model_dir,
                                                           const models::qwen35::ModelOptions& model_options,
                                                           const RunnerOptions& options);
  ~ModelRunner();

  const models::qwen35::Qwen35Model& model() const { return *model_; }
  const RunnerOptions& options() const { return options_; }
  RunnerCapacity capacity() const;
  bool graphs_enabled() const { return graphs_ != nullptr; }

  // --- The engine's contract -------------------------------------------------------------------------
  // OK when a sequence of `tokens` positions (prompt + max new tokens) could ever run; ResourceExhausted
  // naming the limit when the KV cache is too small for it even empty.
  absl::Status CheckFits(int64_t tokens) const;
  // Whether a slot and KV blocks for `tokens` positions are free now.
  bool CanAdmit(int64_t tokens) const;
  // Takes a free slot for a new sequence, reserves KV blocks for `tokens` positions (so it never runs
  // out mid-generation) and keeps `sampler` (the request's parameters, RNG and history). Returns the slot.
  absl::StatusOr<int64_t> AddSequence(Sampler sampler, int64_t tokens);
  // Frees the slot, its blocks and sampler; its state is zeroed for the next sequence.
  void RemoveSequence(int64_t slot);
  // One forward pass and the sampling of its sequences, with one device->host copy: Launch, then
  // Collect. An error status concerns the whole pass (its sequences are reset and should be finished).
  absl::StatusOr<StepOutput> Execute(const ScheduledBatch& batch);
  // Execute's first half: validates and lays out the pass, queues the forward pass, the sampling and
  // the copy of the samples to the host, and returns without waiting for the device. Each sampling
  // sequence's token also stays on the device for a later pass's feed_last_sample. Passes run in the
  // order they are launched; the next may be launched before this one is collected.
  absl::StatusOr<PendingStep> Launch(const ScheduledBatch& batch);
  // Execute's second half: waits for the pass's samples (the one synchronisation of a pass), records
  // each token in its sequence's history and returns them. A sequence removed since the launch gets no
  // sample. Penalties read that history, so a pass that samples a sequence with penalties must be
  // launched after the sequence's previous pass was collected.
  absl::StatusOr<StepOutput> Collect(PendingStep step);

  // --- Direct use (tests, offline tools, benchmarks) --------------------------------------------------
  // Appends tokens[i] to the sequence in slots[i] (a fresh or reset slot starts at position 0; KV blocks
  // are taken as the sequence grows) and returns float32 logits after the last token of each, [N, vocab],
  // or after every token, [sum, vocab], with `all_positions`. Bad ids, slots or lengths give
  // InvalidArgument naming the field and limit and change nothing.
  absl::StatusOr<at::Tensor> Forward(const std::vector<std::vector<int32_t>>& tokens,
                                     const std::vector<int64_t>& slots, bool all_positions = false,
                                     models::LayerTimer* timer = nullptr);
  // Forgets the sequence in `slot` (state zeroed, blocks freed, length 0).
  absl::Status ResetSlot(int64_t slot);
  int64_t SequenceLength(int64_t slot) const { return lengths_.at(slot); }
  int64_t active_sequences() const { return static_cast<int64_t>(options_.max_seqs - free_slots_.size()); }
  int64_t used_kv_blocks() const { return blocks_->used_blocks(); }
  int64_t used_kv_tokens() const;  // positions held by all sequences

 private:
  ModelRunner() = default;
  // Validates sequences (ids, slots, lengths) and lays the pass out; grows block tables. Nothing changes
  // when it fails.
  // fed[i]: row i is one token, the slot's last sample on the device (tokens[i] is then ignored).
  absl::StatusOr<StepInputs> Plan(const std::vector<const std::vector<int32_t>*>& tokens,
                                  const std::vector<int64_t>& slots, const std::vector<bool>& logits_after,
                                  const std::vector<bool>& fed, bool all_positions);
  // Runs the planned pass (graph replay or eager) and advances the lengths. Throws c10::Error.
  at::Tensor Run(const StepInputs& in, models::LayerTimer* timer);
  absl::Status GrowTable(int64_t slot, int64_t tokens);
  void ReleaseSlot(int64_t slot);
  // Keeps the sampled ids of `packed` (SampleRows' result) in last_tokens_ at `slots`, on the device.
  void KeepLastSamples(const at::Tensor& packed, const std::vector<int64_t>& slots);
  // Zeroes the state of a failed pass's slots: they restart from nothing.
  void ResetAfterFailure(const std::vector<int64_t>& slots);

  std::unique_ptr<models::qwen35::Qwen35Model> model_;
  RunnerOptions options_;
  models::qwen35::Qwen35State state_;
  std::unique_ptr<KvBlockAllocator> blocks_;
  int64_t max_blocks_per_seq_ = 0;
  std::vector<std::vector<int32_t>> tables_;  // per slot
  at::Tensor table_host_;                     // [slots, max_blocks] int32, pinned on CUDA
  at::Tensor table_device_;                   // the same on the device (the same tensor on CPU)
  std::vector<int64_t> lengths_;              // per slot
  std::vector<std::optional<Sampler>> samplers_;  // per slot, for sequences added by AddSequence
  std::vector<int64_t> free_slots_;
  // Per slot: bumped whenever the slot's sequence ends, so a pass collected after its sequence was
  // removed (and the slot perhaps reused) recognises its rows as stale.
  std::vector<uint64_t> epochs_;
  std::vector<bool> has_sample_;  // per slot: last_tokens_ holds a token of the current sequence
  at::Tensor last_tokens_;        // [slots] int64 on the device: each slot's last sampled token
  std::unique_ptr<HostTransfer> transfer_;
  std::unique_ptr<DecodeGraphs> graphs_;
};

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_MODEL_RUNNER_H_
