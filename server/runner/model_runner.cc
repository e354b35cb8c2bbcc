// The model runner (see model_runner.h): state and KV sizing, validation and layout of each pass, graph
// replay or eager forward, batched sampling with one download per step.
#include "runner/model_runner.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runner/batch_sampler.h"

#if DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace deltaserve::runner {
namespace q = models::qwen35;

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

absl::Status ValidateOptions(const RunnerOptions& o) {
  if (o.max_seqs <= 0 || o.max_model_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_seqs and max_model_len must be positive, got ", o.max_seqs,
                                                   " and ", o.max_model_len));
  }
  // The paged attention kernels' limits (a shift and a mask, at least 8 rows a block).
  if (o.kv_block_size < 8 || o.kv_block_size > 1024 || (o.kv_block_size & (o.kv_block_size - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_block_size must be a power of two in [8, 1024], got ", o.kv_block_size));
  }
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu_memory_utilization must be in (0, 1], got ", o.gpu_memory_utilization));
  }
  if (o.kv_cache_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_tokens must be >= 0, got ", o.kv_cache_tokens));
  }
  for (int64_t b : o.graph_batch_sizes) {
    if (b < 1 || b > o.max_seqs) {
      return absl::InvalidArgumentError(
          absl::StrCat("graph batch sizes must be in [1, max_seqs ", o.max_seqs, "], got ", b));
    }
  }
  return absl::OkStatus();
}

// KV blocks for the options on the model's device: explicit, or everything up to the full-length need
// on CPU, or what fits in the device memory budget on CUDA.
absl::StatusOr<int64_t> KvBlocks(const q::Qwen35Model& model, const RunnerOptions& o, int64_t max_blocks_per_seq) {
  const int64_t full = o.max_seqs * max_blocks_per_seq;
  if (o.kv_cache_tokens > 0) return (o.kv_cache_tokens + o.kv_block_size - 1) / o.kv_block_size;
  if (!model.options().device.is_cuda()) return full;
#if DELTASERVE_WITH_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
  const c10::cuda::CUDAGuard guard(model.options().device);  // the model's GPU, not the current one
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    return absl::InternalError("cudaMemGetInfo failed: cannot size the KV cache (give --kv-cache-tokens)");
  }
  const q::StateShape shape = model.MakeStateShape(o.max_seqs, 1, o.kv_block_size);
  const double used = static_cast<double>(total_bytes - free_bytes);
  const double state = static_cast<double>(o.max_seqs) * q::StateBytesPerSlot(model.config(), shape);
  // Activations of a pass, the logits of a full batch and the sampler's temporaries over them, graphs.
  const double reserve = 1.0 * kGiB + 4.0 * o.max_seqs * model.config().vocab_size * 4;
  const double budget = total_bytes * o.gpu_memory_utilization - used - state - reserve;
  const int64_t per_block = q::KvBytesPerBlock(model.config(), shape);
  const int64_t blocks = per_block > 0 ? static_cast<int64_t>(budget / per_block) : full;
  if (blocks < max_blocks_per_seq) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: ", o.gpu_memory_utilization, " of the device's ", total_bytes / kGiB, " GiB leaves ",
        std::max(0.0, budget) / kGiB, " GiB for KV blocks once ", used / kGiB, " GiB in use, ", state / kGiB,
        " GiB of sequence state (max_num_seqs ", o.max_seqs, ") and a ", reserve / kGiB,
        " GiB reserve are counted: not one sequence of max_model_len ", o.max_model_len,
        " fits. Raise --gpu-memory-utilization or lower --max-num-seqs / --max-model-len"));
  }
  return std::min(blocks, full);
#else
  return absl::UnimplementedError("this build has no CUDA");
#endif
}

}  // namespace

ModelRunner::~ModelRunner() = default;

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Load(const std::string& model_dir,
                                                               const q::ModelOptions& model_options,
                                                               const RunnerOptions& options) {
  absl::StatusOr<std::unique_ptr<q::Qwen35Model>> model = q::Qwen35Model::Load(model_dir, model_options);
  if (!model.ok()) return model.status();
  return Create(*std::move(model), options);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(std::unique_ptr<q::Qwen35Model> model,
                                                                 const RunnerOptions& options) {
  if (!model) return absl::InvalidArgumentError("runner: no model");
  if (absl::Status s = ValidateOptions(options); !s.ok()) return s;
  auto r = std::unique_ptr<ModelRunner>(new ModelRunner());
  r->model_ = std::move(model);
  r->options_ = options;
  const c10::Device device = r->model_->options().device;
  r->max_blocks_per_seq_ = (options.max_model_len + options.kv_block_size - 1) / options.kv_block_size;
  absl::StatusOr<int64_t> blocks = KvBlocks(*r->model_, options, r->max_blocks_per_seq_);
  if (!blocks.ok()) return blocks.status();
  absl::StatusOr<q::Qwen35State> state =
      q::AllocateQwen35State(r->model_->config(), r->model_->MakeStateShape(options.max_seqs, *blocks, options.kv_block_size));
  if (!state.ok()) return state.status();
  r->state_ = *std::move(state);
  r->blocks_ = std::make_unique<KvBlockAllocator>(*blocks, options.kv_block_size);
  r->tables_.resize(options.max_seqs);
  r->lengths_.assign(options.max_seqs, 0);
  r->samplers_.resize(options.max_seqs);
  r->epochs_.assign(options.max_seqs, 0);
  r->has_sample_.assign(options.max_seqs, false);
  for (int64_t s = options.max_seqs - 1; s >= 0; --s) r->free_slots_.push_back(s);
  r->transfer_ = std::make_unique<HostTransfer>(device);
  try {
    r->table_host_ = at::zeros({options.max_seqs, r->max_blocks_per_seq_},
                               at::TensorOptions().dtype(at::kInt).pinned_memory(device.is_cuda()));
    r->table_device_ = device.is_cuda() ? r->table_host_.to(device) : r->table_host_;
    r->last_tokens_ = at::zeros({options.max_seqs}, at::TensorOptions().dtype(at::kLong).device(device));
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("block tables: ", e.what_without_backtrace()));
  }
  const RunnerCapacity cap = r->capacity();
  std::fprintf(stderr,
               "runner: %ld state slots; KV cache %ld blocks of %ld tokens = %ld tokens (%.1f sequences of "
               "max_model_len %ld, %.2f GiB)\n",
               static_cast<long>(cap.slots), static_cast<long>(cap.kv_blocks), static_cast<long>(cap.block_size),
               static_cast<long>(cap.kv_tokens()), static_cast<double>(cap.kv_blocks) / r->max_blocks_per_seq_,
               static_cast<long>(options.max_model_len),
               static_cast<double>(cap.kv_blocks) *
                   q::KvBytesPerBlock(r->model_->config(), r->state_.shape) / kGiB);
  if (device.is_cuda() && options.cuda_graphs) {
    std::vector<int64_t> buckets =
        options.graph_batch_sizes.empty() ? DefaultGraphBuckets(options.max_seqs) : options.graph_batch_sizes;
    absl::StatusOr<std::unique_ptr<DecodeGraphs>> graphs =
        DecodeGraphs::Capture(*r->model_, r->state_, r->table_device_, buckets, options.max_model_len);
    if (!graphs.ok()) {
      // Serving eagerly is slower but correct: say so loudly and go on.
      std::fprintf(stderr, "runner: WARNING: %s; decode runs eagerly (--cuda-graphs=false skips the capture)\n",
                   std::string(graphs.status().message()).c_str());
    } else {
      r->graphs_ = *std::move(graphs);
      std::fprintf(stderr, "runner: decode CUDA graphs captured for batch sizes %s\n",
                   absl::StrJoin(r->graphs_->buckets(), ", ").c_str());
    }
  }
  return r;
}

RunnerCapacity ModelRunner::capacity() const {
  RunnerCapacity c;
  c.slots = options_.max_seqs;
  c.kv_blocks = blocks_->num_blocks();
  c.block_size = blocks_->block_size();
  return c;
}

int64_t ModelRunner::used_kv_tokens() const {
  int64_t n = 0;
  for (int64_t len : lengths_) n += len;
  return n;
}

absl::Status ModelRunner::CheckFits(int64_t tokens) const {
  const int64_t need = blocks_->BlocksFor(tokens);
  if (need > blocks_->num_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt + max_tokens (", tokens, " tokens) needs ", need, " KV blocks of ", blocks_->block_size(),
        " tokens; the KV cache holds ", blocks_->num_blocks(), " blocks (", capacity().kv_tokens(),
        " tokens) in all"));
  }
  return absl::OkStatus();
}

bool ModelRunner::CanAdmit(int64_t tokens) const {
  return !free_slots_.empty() && blocks_->BlocksFor(tokens) <= blocks_->free_blocks();
}

absl::Status ModelRunner::GrowTable(int64_t slot, int64_t tokens) {
  std::vector<int32_t>& table = tables_[slot];
  const size_t before = table.size();
  if (absl::Status s = blocks_->Grow(table, tokens); !s.ok()) return s;
  if (table.size() == before) return absl::OkStatus();
  int32_t* row = table_host_.data_ptr<int32_t>() + slot * max_blocks_per_seq_;
  std::copy(table.begin() + before, table.end(), row + before);
  if (table_device_.data_ptr() != table_host_.data_ptr()) {
    // Only the new entries; the pinned row is not written again until the slot is released, after the
    // steps that read it have been waited for.
    const int64_t n = static_cast<int64_t>(table.size() - before);
    table_device_[slot].narrow(0, before, n).copy_(table_host_[slot].narrow(0, before, n), /*non_blocking=*/true);
  }
  return absl::OkStatus();
}

void ModelRunner::ReleaseSlot(int64_t slot) {
  blocks_->Release(tables_[slot]);
  lengths_[slot] = 0;
  ++epochs_[slot];
  has_sample_[slot] = false;
  (void)q::ResetStateSlot(state_, slot);
}

void ModelRunner::ResetAfterFailure(const std::vector<int64_t>& slots) {
  for (int64_t slot : slots) {
    lengths_[slot] = 0;
    has_sample_[slot] = false;
    (void)q::ResetStateSlot(state_, slot);
  }
}

void ModelRunner::KeepLastSamples(const at::Tensor& packed, const std::vector<int64_t>& slots) {
  // A row flagged as an error has an unspecified id: keep a valid one, so that a pass already launched
  // to feed it reads an embedding row and not out of bounds (its output is dropped with the sequence).
  const at::Tensor ids =
      packed.select(1, 0).nan_to_num(0, 0, 0).clamp(0, model_->config().vocab_size - 1).to(at::kLong);
  const at::Tensor index = transfer_->Upload(static_cast<int64_t>(slots.size()),
                                             [&](int64_t* out) { std::copy(slots.begin(), slots.end(), out); });
  last_tokens_.index_copy_(0, index, ids);
}

absl::StatusOr<int64_t> ModelRunner::AddSequence(Sampler sampler, int64_t tokens) {
  if (tokens > options_.max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence of ", tokens, " tokens is over max_model_len ", options_.max_model_len));
  }
  if (free_slots_.empty()) return absl::ResourceExhaustedError("no free sequence slot");
  const int64_t slot = free_slots_.back();
  if (absl::Status s = GrowTable(slot, tokens); !s.ok()) return s;
  free_slots_.pop_back();
  samplers_[slot].emplace(std::move(sampler));
  return slot;
}

void ModelRunner::RemoveSequence(int64_t slot) {
  if (slot < 0 || slot >= options_.max_seqs || !samplers_[slot]) return;
  samplers_[slot].reset();
  ReleaseSlot(slot);
  free_slots_.push_back(slot);
}

absl::Status ModelRunner::ResetSlot(int64_t slot) {
  if (slot < 0 || slot >= options_.max_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("slot: ", slot, " is outside [0, ", options_.max_seqs, ")"));
  }
  ReleaseSlot(slot);
  return absl::OkStatus();
}

absl::StatusOr<StepInputs> ModelRunner::Plan(const std::vector<const std::vector<int32_t>*>& tokens,
                                             const std::vector<int64_t>& slots,
                                             const std::vector<bool>& logits_after, const std::vector<bool>& fed,
                                             bool all_positions) {
  if (tokens.empty()) return absl::InvalidArgumentError("tokens: no sequences given");
  if (tokens.size() != slots.size()) {
    return absl::InvalidArgumentError(absl::StrCat("slots: ", slots.size(), " given for ", tokens.size(), " sequences"));
  }
  const int64_t vocab = model_->config().vocab_size;
  std::set<int64_t> seen;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t slot = slots[i];
    if (slot < 0 || slot >= options_.max_seqs) {
      return absl::InvalidArgumentError(
          absl::StrCat("slots[", i, "]: ", slot, " is outside [0, ", options_.max_seqs, ")"));
    }
    if (!seen.insert(slot).second) {
      return absl::InvalidArgumentError(absl::StrCat("slots[", i, "]: slot ", slot, " appears twice"));
    }
    if (fed[i] && !has_sample_[slot]) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences[", i, "]: slot ", slot, " has no sampled token to feed back"));
    }
    const int64_t len = fed[i] ? 1 : static_cast<int64_t>(tokens[i]->size());
    if (len == 0) return absl::InvalidArgumentError(absl::StrCat("tokens[", i, "]: empty"));
    if (lengths_[slot] + len > options_.max_model_len) {
      return absl::InvalidArgumentError(absl::StrCat("tokens[", i, "]: sequence would reach ", lengths_[slot] + len,
                                                     " tokens, over max_model_len ", options_.max_model_len));
    }
    for (size_t j = 0; !fed[i] && j < tokens[i]->size(); ++j) {
      const int32_t id = (*tokens[i])[j];
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("tokens[", i, "][", j, "]: id ", id,
                                                       " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t slot = slots[i];
    const int64_t len = fed[i] ? 1 : static_cast<int64_t>(tokens[i]->size());
    if (absl::Status s = GrowTable(slot, lengths_[slot] + len); !s.ok()) return s;
  }
  StepInputs in;
  in.decode = true;
  const int64_t bs = blocks_->block_size();
  in.cu_seqlens.push_back(0);
  bool every_row_samples = true;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t slot = slots[i], start = lengths_[slot];
    const int64_t len = fed[i] ? 1 : static_cast<int64_t>(tokens[i]->size());
    in.decode = in.decode && len == 1 && start > 0;
    in.fed_tokens = in.fed_tokens || fed[i];
    const std::vector<int32_t>& table = tables_[slot];
    for (int64_t j = 0; j < len; ++j) {
      const int64_t pos = start + j;
      in.token_ids.push_back(fed[i] ? FedTokenId(slot) : (*tokens[i])[j]);
      in.positions.push_back(pos);
      in.kv_slots.push_back(static_cast<int64_t>(table[pos / bs]) * bs + pos % bs);
    }
    in.state_slots.push_back(slot);
    in.seq_lens.push_back(start + len);
    in.starts.push_back(start);
    in.cu_seqlens.push_back(in.cu_seqlens.back() + len);
    in.max_seq_len = std::max(in.max_seq_len, start + len);
    if (!all_positions && logits_after[i]) in.logit_rows.push_back(in.cu_seqlens.back() - 1);
    every_row_samples = every_row_samples && logits_after[i];
  }
  in.all_rows = all_positions || (every_row_samples && in.num_tokens() == in.num_seqs());
  if (in.all_rows) in.logit_rows.clear();
  return in;
}

at::Tensor ModelRunner::Run(const StepInputs& in, models::LayerTimer* timer) {
  at::Tensor logits;
  if (graphs_ && in.decode && timer == nullptr && in.num_seqs() <= graphs_->max_batch()) {
    logits = graphs_->Run(in, *transfer_, in.fed_tokens ? &last_tokens_ : nullptr);
  } else {
    at::Tensor packed = transfer_->Upload(in.PackedSize(), [&](int64_t* out) { in.Pack(out); });
    if (in.fed_tokens) ResolveFedTokens(packed.narrow(0, 0, in.num_tokens()), last_tokens_);
    logits = model_->Forward(ViewBatch(in, packed, table_device_), state_, timer);
  }
  for (int64_t i = 0; i < in.num_seqs(); ++i) lengths_[in.state_slots[i]] = in.seq_lens[i];
  return logits;
}

absl::StatusOr<at::Tensor> ModelRunner::Forward(const std::vector<std::vector<int32_t>>& tokens,
                                                const std::vector<int64_t>& slots, bool all_positions,
                                                models::LayerTimer* timer) {
  std::vector<const std::vector<int32_t>*> ptrs;
  for (const auto& t : tokens) ptrs.push_back(&t);
  absl::StatusOr<StepInputs> in = Plan(ptrs, slots, std::vector<bool>(tokens.size(), true),
                                       std::vector<bool>(tokens.size(), false), all_positions);
  if (!in.ok()) return in.status();
  try {
    at::Tensor logits = Run(*in, timer);
    // A replayed graph's logits live in its static output, which the next replay overwrites.
    return graphs_ ? logits.clone() : logits;
  } catch (const c10::Error& e) {
    // The batch's slots may be partly written: they are no longer usable.
    for (int64_t slot : slots) ReleaseSlot(slot);
    return absl::InternalError(absl::StrCat("forward: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<StepOutput> ModelRunner::Execute(const ScheduledBatch& batch) {
  absl::StatusOr<PendingStep> step = Launch(batch);
  if (!step.ok()) return step.status();
  return Collect(*std::move(step));
}

absl::StatusOr<PendingStep> ModelRunner::Launch(const ScheduledBatch& batch) {
  std::vector<const std::vector<int32_t>*> tokens;
  std::vector<int64_t> slots;
  std::vector<bool> sample, fed;
  for (size_t i = 0; i < batch.sequences.size(); ++i) {
    const ScheduledSequence& s = batch.sequences[i];
    if (s.slot < 0 || s.slot >= options_.max_seqs || !samplers_[s.slot]) {
      return absl::InvalidArgumentError(absl::StrCat("slot ", s.slot, " holds no sequence (AddSequence first)"));
    }
    if (s.feed_last_sample && !s.tokens.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences[", i, "]: feed_last_sample takes no tokens, got ", s.tokens.size()));
    }
    tokens.push_back(&s.tokens);
    slots.push_back(s.slot);
    sample.push_back(s.sample);
    fed.push_back(s.feed_last_sample);
  }
  absl::StatusOr<StepInputs> in = Plan(tokens, slots, sample, fed, /*all_positions=*/false);
  if (!in.ok()) return in.status();
  PendingStep step;
  step.num_sequences = batch.sequences.size();
  try {
    at::Tensor logits = Run(*in, batch.timer);
    std::vector<SamplingRow> rows;
    for (size_t i = 0; i < batch.sequences.size(); ++i) {
      const int64_t slot = batch.sequences[i].slot;
      if (!batch.sequences[i].sample) continue;
      rows.push_back(NextRow(*samplers_[slot]));  // draws the request's uniform, as Sample would
      step.sampled.push_back(i);
      step.slots.push_back(slot);
      step.epochs.push_back(epochs_[slot]);
    }
    if (rows.empty()) return step;
    absl::StatusOr<at::Tensor> packed = SampleRows(logits, rows, &step.layout);
    if (!packed.ok()) return packed.status();
    KeepLastSamples(*packed, step.slots);
    for (int64_t slot : step.slots) has_sample_[slot] = true;
    step.download = transfer_->StartDownload(*packed);
  } catch (const c10::Error& e) {
    // The pass's sequences may be partly written: they restart from nothing (the engine finishes them
    // with this error); their reserved blocks stay theirs until RemoveSequence.
    ResetAfterFailure(slots);
    return absl::InternalError(absl::StrCat("forward: ", e.what_without_backtrace()));
  }
  return step;
}

absl::StatusOr<StepOutput> ModelRunner::Collect(PendingStep step) {
  StepOutput out;
  out.samples.resize(step.num_sequences);
  if (step.sampled.empty()) return out;
  // Rows whose sequence has ended since the launch are unpacked with neutral params and dropped.
  static const SamplingParams kEnded;
  std::vector<bool> live(step.sampled.size());
  std::vector<SamplingRow> rows(step.sampled.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t slot = step.slots[r];
    live[r] = epochs_[slot] == step.epochs[r] && samplers_[slot].has_value();
    rows[r].params = live[r] ? &samplers_[slot]->params() : &kEnded;
  }
  at::Tensor host;
  try {
    host = step.download.Wait();
  } catch (const c10::Error& e) {
    std::vector<int64_t> failed;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (live[r]) failed.push_back(step.slots[r]);
    }
    ResetAfterFailure(failed);
    return absl::InternalError(absl::StrCat("collecting samples: ", e.what_without_backtrace()));
  }
  std::vector<absl::StatusOr<SampleResult>> results = UnpackSamples(host.data_ptr<double>(), step.layout, rows);
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!live[r]) continue;
    if (results[r].ok()) samplers_[step.slots[r]]->Record(results[r]->token_id);
    out.samples[step.sampled[r]] = std::move(results[r]);
  }
  return out;
}

}  // namespace deltaserve::runner
