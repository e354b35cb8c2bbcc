// The per-sequence device state a Qwen3.5 model reads and updates: recurrent delta-rule state and conv
// state slots for the linear-attention layers, paged key/value blocks for the full-attention layers.
#ifndef DELTASERVE_SERVER_MODELS_QWEN35_STATE_H_
#define DELTASERVE_SERVER_MODELS_QWEN35_STATE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "models/qwen35/config.h"

namespace deltaserve::models::qwen35 {

struct StateShape {
  int64_t slots = 0;       // sequences whose recurrent and conv state is kept
  int64_t kv_blocks = 0;   // paged KV blocks per full-attention layer
  int64_t block_size = 16;  // tokens per KV block
  at::ScalarType dtype = at::kFloat;  // conv state and KV cache
  kernels::StateDtype state_dtype = kernels::StateDtype::kFloat32;
  c10::Device device = c10::Device(c10::kCPU);
};

// Indexed like the model's layers; entries of the other layer kind stay empty.
struct Qwen35State {
  StateShape shape;
  std::vector<kernels::RecurrentStatePool> recurrent;  // [slots, Hv, dk, dv]
  std::vector<at::Tensor> conv;                        // [slots, conv_dim, K - 1]
  std::vector<at::Tensor> k_cache, v_cache;            // [kv_blocks, block_size, kv_heads, head_dim]
};

// Bytes per sequence slot (recurrent + conv, all linear layers) and per KV block (all full layers).
int64_t StateBytesPerSlot(const Qwen35Config& config, const StateShape& shape);
int64_t KvBytesPerBlock(const Qwen35Config& config, const StateShape& shape);

// Allocates zeroed state. RESOURCE_EXHAUSTED when the device runs out of memory.
absl::StatusOr<Qwen35State> AllocateQwen35State(const Qwen35Config& config, const StateShape& shape);

// Zeroes one slot's recurrent and conv state (a new sequence starts from zero state); KV blocks need no
// clearing, since positions past a sequence's length are never read.
absl::Status ResetStateSlot(Qwen35State& state, int64_t slot);

}  // namespace deltaserve::models::qwen35

#endif  // DELTASERVE_SERVER_MODELS_QWEN35_STATE_H_
