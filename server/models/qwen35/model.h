// The Qwen3.5 hybrid text model (Gated DeltaNet + gated attention) on LibTorch: weights and the forward
// pass over a packed batch whose sequence state (recurrent, conv, paged KV) the caller owns.
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
#include "models/qwen35/forward_batch.h"
#include "models/qwen35/state.h"
#include "models/qwen35/weights.h"
#include "models/safetensors.h"

namespace deltaserve::models::qwen35 {

struct ModelOptions {
  at::ScalarType dtype = at::kFloat;  // float32 or bfloat16 weights and activations
  c10::Device device = c10::Device(c10::kCPU);
  // kernels::ParseTriInverseMethod names, or "auto": the fastest measured on the device's kind.
  std::string inverse_method = "auto";
  kernels::StateDtype state_dtype = kernels::StateDtype::kFloat32;  // recurrent state storage
  int64_t chunk_size = 64;                                          // prefill chunk of the delta rule
  // Projections' weights: in `dtype`, or INT8 with group scales (CPU only; LoadQwen35Weights).
  kernels::WeightDtype weight_dtype = kernels::WeightDtype::kSame;
};

class Qwen35Model {
 public:
  // Reads DIR/config.json and DIR's safetensors (one file or sharded) and checks them.
  static absl::StatusOr<std::unique_ptr<Qwen35Model>> Load(const std::string& model_dir,
                                                           const ModelOptions& options);

  const Qwen35Config& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  // The state layout this model needs for `slots` sequences and `kv_blocks` blocks of `block_size`.
  StateShape MakeStateShape(int64_t slots, int64_t kv_blocks, int64_t block_size) const;

  // One pass over `batch`: appends its tokens to the sequences' state in `state` and returns float32
  // logits [R, vocab] for batch.logit_rows. Trusts the batch's values (the caller built them; see
  // ForwardBatch) and checks only what it can without reading the device, so a decode pass can be
  // captured in a CUDA graph. Throws c10::Error when a kernel fails; the state of the batch's sequences
  // is then undefined. `timer` (may be null) gets one Begin/End per TimedSpans() entry.
  at::Tensor Forward(const ForwardBatch& batch, Qwen35State& state, LayerTimer* timer = nullptr) const;

  // What Forward times, in order: embedding, then each layer's token mixer and MLP, then lm_head.
  std::vector<TimedSpan> TimedSpans() const;

 private:
  Qwen35Model() = default;
  // A token-mixing block: reads the residual stream through the layer's input norm and adds its output
  // to the stream in place.
  void LinearAttention(size_t layer, at::Tensor& residual, const ForwardBatch& batch, Qwen35State& state) const;
  void FullAttention(size_t layer, at::Tensor& residual, const ForwardBatch& batch, Qwen35State& state) const;

  Qwen35Config config_;
  ModelOptions options_;
  kernels::GatedDeltaRuleOptions delta_rule_;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint_;  // weights may be views into its mapping
  Qwen35Weights weights_;
  at::Tensor inv_freq_;  // [rotary_dim / 2] float32
};

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_MODEL_H_
