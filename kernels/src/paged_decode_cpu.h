// The CPU decode attention over the paged KV cache: one query token per sequence against its keys and values
// read in place through the block table, float32 accumulation (paged_attention.h's PagedDecodeAttention).
#ifndef DELTASERVE_KERNELS_SRC_PAGED_DECODE_CPU_H_
#define DELTASERVE_KERNELS_SRC_PAGED_DECODE_CPU_H_

#include <ATen/core/Tensor.h>

namespace deltaserve::kernels::internal {

// Every tensor contiguous, as PagedDecodeAttention checks or makes them: q [B, heads, d] (float32 or bf16,
// the caches' dtype), caches [blocks, block_size, kv_heads, d], block_tables int32 [B, max_blocks], seq_lens
// int32 [B] (clamped to the table's capacity; 0: a zero row). Returns [B, heads, d] in q's dtype. A block id
// outside the cache throws (c10::Error).
at::Tensor PagedDecodeCpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_PAGED_DECODE_CPU_H_
