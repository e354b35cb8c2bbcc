// The Qwen3.5 hybrid text model (Gated DeltaNet + gated attention) on LibTorch: batched packed prefill
// and batched decode over per-sequence slots (recurrent, conv and KV state), returning logits.
#ifndef DELTASERVE_SERVER_MODELS_QWEN35_MODEL_H_
#define DELTASERVE_SERVER_MODELS_QWEN35_MODEL_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "models/layer_timer.h"
#include "models/qwen35/config.h"
#include "models/qwen35/weights.h"
#include "models/safetensors.h"

namespace deltaserve::models::qwen35 {

struct ModelOptions {
  at::ScalarType dtype = at::kFloat;  // float32 or bfloat16 weights and activations
  c10::Device device = c10::Device(c10::kCPU);
  // kernels::ParseTriInverseMethod names, or "auto": the fastest measured on the device's kind.
  std::string inverse_method = "auto";
  kernels::StateDtype state_dtype = kernels::StateDtype::kFloat32;  // recurrent state in the pool
  int64_t max_seqs = 8;                                             // sequence slots
  int64_t max_model_len = 4096;                                     // tokens per sequence (KV capacity)
  int64_t chunk_size = 64;                                          // prefill chunk of the delta rule
};

class Qwen35Model {
 public:
  // Reads DIR/config.json and DIR's safetensors (one file or sharded), checks them, allocates the pools.
  static absl::StatusOr<std::unique_ptr<Qwen35Model>> Load(const std::string& model_dir,
                                                           const ModelOptions& options);

  const Qwen35Config& config() const { return config_; }
  const ModelOptions& options() const { return options_; }

  // Appends tokens[i] to the sequence in slots[i] (a reset slot starts at position 0) and returns float32
  // logits after the last appended token of each sequence, [N, vocab], or after every token, [sum, vocab],
  // when `all_positions`. A batch where every sequence appends one token to a started sequence runs the
  // decode kernels (recurrent step, conv step); any other batch runs the chunked prefill. Bad ids, slots
  // or lengths give InvalidArgument naming the field and limit, and leave every slot unchanged.
  // `timer` (may be null) gets one Begin/End per TimedSpans() entry.
  absl::StatusOr<at::Tensor> Forward(const std::vector<std::vector<int32_t>>& tokens,
                                     const std::vector<int64_t>& slots, bool all_positions = false,
                                     LayerTimer* timer = nullptr);

  // What Forward times, in order: embedding, then each layer's token mixer and MLP, then lm_head.
  std::vector<TimedSpan> TimedSpans() const;

  // Forgets the sequence in `slot`: zero state, length 0.
  absl::Status ResetSlot(int64_t slot);
  int64_t SequenceLength(int64_t slot) const { return lengths_.at(slot); }

 private:
  struct Batch;  // one Forward call's packed layout
  Qwen35Model() = default;
  at::Tensor LinearAttention(size_t layer, const at::Tensor& x, const Batch& batch);
  at::Tensor FullAttention(size_t layer, const at::Tensor& x, const Batch& batch);
  at::Tensor Mlp(const LayerWeights& w, const at::Tensor& x) const;

  Qwen35Config config_;
  ModelOptions options_;
  kernels::GatedDeltaRuleOptions delta_rule_;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint_;  // weights may be views into its mapping
  Qwen35Weights weights_;
  at::Tensor inv_freq_;  // [rotary_dim / 2] float32
  // Per layer (indexed like weights_.layers; unused entries stay empty).
  std::vector<kernels::RecurrentStatePool> recurrent_;
  std::vector<at::Tensor> conv_state_;         // [slots, conv_dim, K - 1]
  std::vector<at::Tensor> k_cache_, v_cache_;  // [slots, kv_heads, max_model_len, head_dim]
  std::vector<int64_t> lengths_;
};

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_MODEL_H_
