// Paged KV cache attention for Qwen3.5's gated full-attention layers (GQA): writing new keys and values
// into a block-paged cache, one-token decode attention over it, and (chunked) prefill attention.
#ifndef DELTASERVE_KERNELS_PAGED_ATTENTION_H_
#define DELTASERVE_KERNELS_PAGED_ATTENTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace deltaserve::kernels {

// KV cache layout: k_cache, v_cache [num_blocks, block_size, kv_heads, head_dim], fp32 or bf16,
// contiguous, head_dim in {64, 128, 256}, block_size a power of two >= 8. A token's flat slot is
// block * block_size + offset, so slot s is row s of the cache viewed as [num_blocks * block_size, ...].
// A sequence's position p lives at slot block_tables[b, p / block_size] * block_size + p % block_size;
// entries of a block-table row past the sequence's last block are never read.
//
// Every op checks shapes, dtypes and devices only (InvalidArgument naming the argument and the limit),
// never the values of device tensors: block ids and slots are the caller's contract.

// The cache head_dim that holds a model's `head_dim`: the smallest of 64, 128, 256 not below it (itself
// when above 256, which the ops refuse). A model with smaller heads allocates its caches at this size and
// zero-pads q, k and v: zero dimensions add nothing to a score and give zero output dimensions, which it
// narrows away, so small test models run through the same kernels as real ones.
int64_t PagedCacheHeadDim(int64_t head_dim);

// Writes k, v [T, kv_heads, head_dim] (the caches' dtype) into the caches at slot_mapping [T] (int64, on
// the caches' device). A negative slot is a padding row and is skipped. No host sync on CUDA (slots are
// filtered in the kernel, which also skips slots past the cache rather than write out of bounds).
absl::Status WriteKvCache(const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                          at::Tensor& k_cache, at::Tensor& v_cache);

// Decode: one query token per sequence. q [B, heads, head_dim] (the caches' dtype); block_tables
// [B, max_blocks] int32; seq_lens [B] int32: sequence b sees its keys 0 .. seq_lens[b]-1 (its own new
// key already written); seq_lens[b] == 0 (a padding row) gives a zero output row. Softmax in fp32 with
// `scale`; GQA: query head h reads KV head h / (heads / kv_heads). Returns [B, heads, head_dim] in q's
// dtype. Reads nothing back to the host (CUDA-graph capturable). `max_seq_len` is a host upper bound on
// the seq_lens, in [0, max_blocks * block_size], used only to choose how many blocks split the keys;
// the result does not depend on it.
absl::StatusOr<at::Tensor> PagedDecodeAttention(const at::Tensor& q, const at::Tensor& k_cache,
                                                const at::Tensor& v_cache, const at::Tensor& block_tables,
                                                const at::Tensor& seq_lens, double scale,
                                                int64_t max_seq_len);

// Prefill / chunked prefill over packed sequences: q [T, heads, head_dim] with sequence i's queries at
// rows host_cu_q[i] .. host_cu_q[i+1]-1, sitting at positions host_starts[i] + r and seeing keys
// 0 .. host_starts[i] + r (causal, bottom-right aligned); the chunk's own keys are already in the cache.
// block_tables [N, max_blocks] int32 on the caches' device; host_cu_q (N+1 offsets from 0 to T) and
// host_starts (N) are host metadata. Returns [T, heads, head_dim] in q's dtype.
absl::StatusOr<at::Tensor> PagedPrefillAttention(const at::Tensor& q, const at::Tensor& k_cache,
                                                 const at::Tensor& v_cache, const at::Tensor& block_tables,
                                                 absl::Span<const int64_t> host_cu_q,
                                                 absl::Span<const int64_t> host_starts, double scale);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_PAGED_ATTENTION_H_
