// Allocation and slot reset of the Qwen3.5 sequence state (see state.h).
#include "models/qwen35/state.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "deltaserve/kernels/paged_attention.h"

namespace deltaserve::models::qwen35 {
namespace {

int64_t ConvDim(const Qwen35Config& c) {
  return 2 * c.linear_num_key_heads * c.linear_key_head_dim + c.linear_num_value_heads * c.linear_value_head_dim;
}

}  // namespace

int64_t StateBytesPerSlot(const Qwen35Config& c, const StateShape& shape) {
  int64_t per_layer = c.linear_num_value_heads *
                          kernels::StateBytesPerHead(shape.state_dtype, c.linear_key_head_dim, c.linear_value_head_dim) +
                      ConvDim(c) * (c.linear_conv_kernel_dim - 1) * static_cast<int64_t>(c10::elementSize(shape.dtype));
  int64_t layers = 0;
  for (LayerType t : c.layer_types) layers += t == LayerType::kLinearAttention;
  return per_layer * layers;
}

int64_t KvBytesPerBlock(const Qwen35Config& c, const StateShape& shape) {
  int64_t layers = 0;
  for (LayerType t : c.layer_types) layers += t == LayerType::kFullAttention;
  return layers * 2 * shape.block_size * c.num_key_value_heads * kernels::PagedCacheHeadDim(c.head_dim) *
         static_cast<int64_t>(c10::elementSize(shape.dtype));
}

absl::StatusOr<Qwen35State> AllocateQwen35State(const Qwen35Config& c, const StateShape& shape) {
  if (shape.slots <= 0 || shape.kv_blocks <= 0 || shape.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("state: slots, kv_blocks and block_size must be positive, got ",
                                                   shape.slots, ", ", shape.kv_blocks, " and ", shape.block_size));
  }
  Qwen35State s;
  s.shape = shape;
  const size_t n = c.layer_types.size();
  s.recurrent.resize(n);
  s.conv.resize(n);
  s.k_cache.resize(n);
  s.v_cache.resize(n);
  try {
    const at::TensorOptions opts = at::TensorOptions().device(shape.device).dtype(shape.dtype);
    for (size_t i = 0; i < n; ++i) {
      if (c.layer_types[i] == LayerType::kLinearAttention) {
        absl::StatusOr<kernels::RecurrentStatePool> pool =
            kernels::MakeRecurrentStatePool(shape.slots, c.linear_num_value_heads, c.linear_key_head_dim,
                                            c.linear_value_head_dim, shape.state_dtype, shape.device);
        if (!pool.ok()) return pool.status();
        s.recurrent[i] = *std::move(pool);
        s.conv[i] = at::zeros({shape.slots, ConvDim(c), c.linear_conv_kernel_dim - 1}, opts);
      } else {
        // Zeroed once so no read of a never-written position can meet NaN bits (the attention masks it,
        // but 0 * NaN would not be masked away).
        s.k_cache[i] = at::zeros({shape.kv_blocks, shape.block_size, c.num_key_value_heads, kernels::PagedCacheHeadDim(c.head_dim)}, opts);
        s.v_cache[i] = at::zeros_like(s.k_cache[i]);
      }
    }
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("allocating sequence state (", shape.slots, " slots, ",
                                                     shape.kv_blocks, " KV blocks of ", shape.block_size,
                                                     " tokens): ", e.what_without_backtrace()));
  }
  return s;
}

absl::Status ResetStateSlot(Qwen35State& s, int64_t slot) {
  if (slot < 0 || slot >= s.shape.slots) {
    return absl::InvalidArgumentError(absl::StrCat("slot: ", slot, " is outside [0, ", s.shape.slots, ")"));
  }
  try {
    for (size_t i = 0; i < s.conv.size(); ++i) {
      if (!s.conv[i].defined()) continue;
      s.conv[i][slot].zero_();
      s.recurrent[i].values[slot].zero_();
      if (s.recurrent[i].scales.defined()) s.recurrent[i].scales[slot].zero_();
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("reset slot: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace deltaserve::models::qwen35
