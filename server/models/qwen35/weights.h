// The Qwen3.5 text model's weights as tensors, taken from a safetensors checkpoint and checked name by
// name, shape by shape against the config; every problem is reported at once.
#ifndef DELTASERVE_SERVER_MODELS_QWEN35_WEIGHTS_H_
#define DELTASERVE_SERVER_MODELS_QWEN35_WEIGHTS_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <vector>

#include "absl/status/statusor.h"
#include "deltaserve/kernels/linear_weight.h"
#include "models/qwen35/config.h"
#include "models/safetensors.h"

namespace deltaserve::models::qwen35 {

struct LinearAttentionWeights {
  // The checkpoint's in_proj_qkv, in_proj_z, in_proj_b and in_proj_a stacked in that order, so the four
  // projections are one GEMM: [conv_dim + Hv dv + 2 Hv, hidden].
  kernels::LinearWeight in_proj;
  at::Tensor conv1d;          // [conv_dim, K] (the checkpoint's [conv_dim, 1, K] squeezed)
  at::Tensor dt_bias, a_log;  // [Hv], kept float32
  at::Tensor neg_a_exp;       // -exp(A_log) [Hv] float32: the decay's rate, computed once
  at::Tensor norm;            // [dv] gated RMSNorm weight (plain, not zero-centred)
  kernels::LinearWeight out_proj;  // [hidden, Hv dv]
};

struct FullAttentionWeights {
  // q_proj ([heads 2 head_dim]: per head, query then output gate), k_proj and v_proj ([kv_heads
  // head_dim] each) stacked, so the three projections are one GEMM: [(2 heads + 2 kv_heads) head_dim, hidden].
  kernels::LinearWeight qkv_proj;
  kernels::LinearWeight o_proj;  // [hidden, heads head_dim]
  at::Tensor q_norm, k_norm;  // [head_dim] zero-centred RMSNorm weights
};

struct LayerWeights {
  LayerType type;
  LinearAttentionWeights linear;               // set when type is kLinearAttention
  FullAttentionWeights full;                   // set when type is kFullAttention
  at::Tensor input_norm, post_attention_norm;  // [hidden] zero-centred
  kernels::LinearWeight gate_up_proj;  // gate_proj and up_proj stacked: [2 intermediate, hidden], one GEMM
  kernels::LinearWeight down_proj;
};

struct Qwen35Weights {
  at::Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // [hidden]
  // [vocab, hidden]; the embedding itself when tied (an INT8 copy of it with int8 weights: the lookup keeps
  // the dense embedding).
  kernels::LinearWeight lm_head;
};

// Converts to `dtype` on `device` (float32 or bfloat16); A_log and dt_bias stay float32 because the
// decay is computed in float32. Skips mtp.* and model.visual.*. Errors list every missing, unexpected
// and mismatched tensor (name, expected and found shape/dtype) in one InvalidArgument. With
// WeightDtype::kInt8 or kInt4 (CPU only) the projections are quantized to INT8 or 4 bits with group scales
// (kernels::QuantizeWeight) and the lm_head to INT8 either way; norms, the conv, the embedding lookup and
// the gates stay in `dtype`.
absl::StatusOr<Qwen35Weights> LoadQwen35Weights(const SafetensorsCheckpoint& checkpoint,
                                                const Qwen35Config& config, at::ScalarType dtype,
                                                const c10::Device& device,
                                                kernels::WeightDtype weight_dtype = kernels::WeightDtype::kSame);

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_WEIGHTS_H_
