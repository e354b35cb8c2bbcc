// Paged KV cache attention: argument checks, the CPU paths (decode: paged_decode_cpu.cc; prefill: a plain
// ATen composition) and device dispatch. Decode and cache writes on CUDA are our own kernels
// (kernels/cuda/paged_attention_cuda.cu); prefill on CUDA gathers each sequence's keys on the device
// and hands them to ATen's flash attention (bf16) or scaled_dot_product_attention (fp32).
#include "deltaserve/kernels/paged_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "check.h"
#include "paged_decode_cpu.h"

namespace deltaserve::kernels {

#ifdef DELTASERVE_WITH_CUDA
namespace internal {
// Defined in kernels/cuda/paged_attention_cuda.cu. Arguments are checked and contiguous.
void WriteKvCacheCuda(const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                      at::Tensor& k_cache, at::Tensor& v_cache);
at::Tensor PagedDecodeCuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& block_tables, const at::Tensor& seq_lens, float scale,
                           int64_t max_seq_len);
// Whether ATen's flash attention kernel takes q (bf16 or fp16 on an Ampere or newer GPU).
bool FlashAttentionAvailable(const at::Tensor& q);
}  // namespace internal
#endif

namespace {

using internal::CheckDtype;
using internal::CheckSameDevice;
using internal::CheckSize;
using internal::CheckTensor;
using internal::ShapeString;

struct CacheShape {
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t slots() const { return num_blocks * block_size; }
};

// Like CheckTensor but any strides: activations may arrive as views (q split from its gate); the ops
// make them contiguous themselves.
absl::Status CheckInput(const at::Tensor& t, absl::string_view name, int64_t dims) {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(name, ": tensor is undefined"));
  if (t.dim() != dims) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected ", dims, " dimensions, got shape ", ShapeString(t)));
  }
  if (t.numel() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": empty tensor, shape ", ShapeString(t)));
  }
  return absl::OkStatus();
}

// The limits are the CUDA decode kernel's (head_dim is a template argument, the block size a shift and
// a mask, rows are read with 16-byte loads); they hold on every device so that what runs on CPU runs on
// the GPU too.
absl::StatusOr<CacheShape> CheckCaches(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  DS_RETURN_IF_ERROR(CheckTensor(k_cache, "k_cache", 4));
  DS_RETURN_IF_ERROR(CheckDtype(k_cache, "k_cache", {at::kFloat, at::kBFloat16}));
  DS_RETURN_IF_ERROR(CheckTensor(v_cache, "v_cache", 4));
  DS_RETURN_IF_ERROR(CheckDtype(v_cache, "v_cache", {k_cache.scalar_type()}));
  DS_RETURN_IF_ERROR(CheckSameDevice(v_cache, "v_cache", k_cache));
  if (v_cache.sizes() != k_cache.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("v_cache: shape ", ShapeString(v_cache),
                                                   " must equal k_cache's ", ShapeString(k_cache)));
  }
  CacheShape s{k_cache.size(0), k_cache.size(1), k_cache.size(2), k_cache.size(3)};
  if (s.block_size < 8 || (s.block_size & (s.block_size - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k_cache: block_size (dimension 1) must be a power of two >= 8, got shape ", ShapeString(k_cache)));
  }
  if (s.head_dim != 64 && s.head_dim != 128 && s.head_dim != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k_cache: head_dim (dimension 3) must be 64, 128 or 256, got shape ", ShapeString(k_cache)));
  }
  for (const auto& [t, name] : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}}) {
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": data must start on a 16-byte boundary (is it a view at an offset?)"));
    }
  }
  return s;
}

// q [rows, heads, head_dim] against the caches: dtype, device, head_dim, GQA divisibility. Returns heads.
absl::StatusOr<int64_t> CheckQuery(const at::Tensor& q, const at::Tensor& k_cache, const CacheShape& cache) {
  DS_RETURN_IF_ERROR(CheckInput(q, "q", 3));
  DS_RETURN_IF_ERROR(CheckDtype(q, "q", {k_cache.scalar_type()}));
  DS_RETURN_IF_ERROR(CheckSameDevice(q, "q", k_cache));
  DS_RETURN_IF_ERROR(CheckSize(q, "q", 2, cache.head_dim, "head_dim, the caches'"));
  const int64_t heads = q.size(1);
  if (heads % cache.kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("q: heads (dimension 1) must be a multiple of the caches' ", cache.kv_heads,
                     " kv_heads, got shape ", ShapeString(q)));
  }
  return heads;
}

absl::Status CheckBlockTables(const at::Tensor& block_tables, const at::Tensor& k_cache, int64_t rows) {
  DS_RETURN_IF_ERROR(CheckInput(block_tables, "block_tables", 2));
  DS_RETURN_IF_ERROR(CheckDtype(block_tables, "block_tables", {at::kInt}));
  DS_RETURN_IF_ERROR(CheckSameDevice(block_tables, "block_tables", k_cache));
  return CheckSize(block_tables, "block_tables", 0, rows, "sequences");
}

absl::Status CheckScale(double scale) {
  if (!(scale > 0) || !std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat("scale: must be positive and finite, got ", scale));
  }
  return absl::OkStatus();
}

// Sequence positions 0 .. len-1 mapped to cache slots through one block-table row (int32, any device),
// built on the row's device: nothing is uploaded.
at::Tensor SequenceSlots(const at::Tensor& table_row, int64_t len, int64_t block_size) {
  const at::Tensor pos = at::arange(len, table_row.options().dtype(at::kLong));
  const at::Tensor blocks = table_row.index_select(0, at::div(pos, block_size, "floor")).to(at::kLong);
  return blocks * block_size + pos.remainder(block_size);
}

// Rows `slots` of a cache viewed as [slots, kv_heads, head_dim].
at::Tensor Gather(const at::Tensor& cache, const at::Tensor& slots) {
  return cache.view({-1, cache.size(2), cache.size(3)}).index_select(0, slots);
}

// Keys hidden from each query: query r sits at position first_pos + r and sees keys 0 .. first_pos + r.
// [n, len] bool on `device`, true where hidden.
at::Tensor HiddenKeys(int64_t n, int64_t len, int64_t first_pos, const at::Device& device) {
  const at::TensorOptions options = at::TensorOptions().dtype(at::kLong).device(device);
  return at::arange(len, options).unsqueeze(0) > at::arange(first_pos, first_pos + n, options).unsqueeze(1);
}

// The plain reference: q_rows [n, heads, d] against keys, values [len, kv_heads, d], in fp32, with the
// key heads broadcast to their query-head group (a view, never a copy). Returns fp32 [n, heads, d].
at::Tensor AttendReference(const at::Tensor& q_rows, const at::Tensor& keys, const at::Tensor& values,
                           int64_t first_pos, double scale) {
  const int64_t n = q_rows.size(0), heads = q_rows.size(1), d = q_rows.size(2);
  const int64_t kv_heads = keys.size(1), len = keys.size(0);
  const at::Tensor qg =
      q_rows.to(at::kFloat).reshape({n, kv_heads, heads / kv_heads, d}).permute({1, 2, 0, 3});
  const at::Tensor kt = keys.to(at::kFloat).permute({1, 2, 0}).unsqueeze(1);  // [kv_heads, 1, d, len]
  at::Tensor scores = at::matmul(qg, kt).mul_(scale);                         // [kv_heads, group, n, len]
  scores.masked_fill_(HiddenKeys(n, len, first_pos, q_rows.device()),
                      -std::numeric_limits<float>::infinity());
  const at::Tensor vt = values.to(at::kFloat).permute({1, 0, 2}).unsqueeze(1);  // [kv_heads, 1, len, d]
  const at::Tensor out = at::matmul(at::softmax(scores, -1), vt);               // [kv_heads, group, n, d]
  return out.permute({2, 0, 1, 3}).reshape({n, heads, d});
}

// Prefill on the GPU, q_rows [n, heads, d] against keys, values [len, kv_heads, d], no KV head ever
// repeated in memory.
//
// bf16/fp16: ATen's flash kernel, called directly. It takes the GQA key heads as they are, and its causal
// mask is bottom-right aligned, which is exactly a chunk's (query r at position len - n + r), so no mask
// tensor is built for any chunk. at::scaled_dot_product_attention is avoided here because on Hopper in
// LibTorch 2.11 it picks cuDNN's attention for these shapes, which builds an execution graph on the first
// call of every new (chunk, length) shape: measured on the H200, 65 ms to 1.6 s per new shape, and every
// prompt brings new shapes.
//
// fp32 (no flash kernel): SDPA with enable_gqa. A first chunk (first_pos 0) is square and takes SDPA's own
// causal mask, which is top-left aligned and so only right when queries and keys start together; a later
// chunk gets an explicit boolean mask built on the device.
at::Tensor AttendGpu(const at::Tensor& q_rows, const at::Tensor& keys, const at::Tensor& values,
                     int64_t first_pos, double scale) {
  const at::Tensor qh = q_rows.transpose(0, 1).unsqueeze(0);  // [1, heads, n, d]
  const at::Tensor kh = keys.transpose(0, 1).unsqueeze(0);    // [1, kv_heads, len, d]
  const at::Tensor vh = values.transpose(0, 1).unsqueeze(0);
#ifdef DELTASERVE_WITH_CUDA
  if (q_rows.is_cuda() && internal::FlashAttentionAvailable(q_rows)) {
    const at::Tensor out = std::get<0>(at::_scaled_dot_product_flash_attention(
        qh, kh, vh, /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false, scale));
    return out[0].transpose(0, 1);  // [n, heads, d]
  }
#endif
  std::optional<at::Tensor> allowed;
  if (first_pos > 0) {
    allowed = HiddenKeys(q_rows.size(0), keys.size(0), first_pos, q_rows.device()).logical_not();
  }
  const at::Tensor out = at::scaled_dot_product_attention(qh, kh, vh, allowed, /*dropout_p=*/0.0,
                                                          /*is_causal=*/first_pos == 0, scale,
                                                          /*enable_gqa=*/true);
  return out[0].transpose(0, 1);  // [n, heads, d]
}

void WriteKvCacheReference(const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                           at::Tensor& k_cache, at::Tensor& v_cache, int64_t slots) {
  // The CUDA kernel skips slots outside [0, slots); so does this path, to behave the same everywhere.
  const at::Tensor keep = at::nonzero(slot_mapping.ge(0).logical_and(slot_mapping.lt(slots))).squeeze(1);
  const at::Tensor index = slot_mapping.index_select(0, keep);
  k_cache.view({-1, k_cache.size(2), k_cache.size(3)}).index_copy_(0, index, k.index_select(0, keep));
  v_cache.view({-1, v_cache.size(2), v_cache.size(3)}).index_copy_(0, index, v.index_select(0, keep));
}

}  // namespace

int64_t PagedCacheHeadDim(int64_t head_dim) {
  for (int64_t d : {64, 128, 256}) {
    if (head_dim <= d) return d;
  }
  return head_dim;
}

absl::Status WriteKvCache(const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                          at::Tensor& k_cache, at::Tensor& v_cache) {
  DS_ASSIGN_OR_RETURN(const CacheShape cache, CheckCaches(k_cache, v_cache));
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    DS_RETURN_IF_ERROR(CheckInput(*t, name, 3));
    DS_RETURN_IF_ERROR(CheckDtype(*t, name, {k_cache.scalar_type()}));
    DS_RETURN_IF_ERROR(CheckSameDevice(*t, name, k_cache));
    DS_RETURN_IF_ERROR(CheckSize(*t, name, 1, cache.kv_heads, "kv_heads, the caches'"));
    DS_RETURN_IF_ERROR(CheckSize(*t, name, 2, cache.head_dim, "head_dim, the caches'"));
  }
  DS_RETURN_IF_ERROR(CheckSize(v, "v", 0, k.size(0), "tokens, k's"));
  DS_RETURN_IF_ERROR(CheckInput(slot_mapping, "slot_mapping", 1));
  DS_RETURN_IF_ERROR(CheckDtype(slot_mapping, "slot_mapping", {at::kLong}));
  DS_RETURN_IF_ERROR(CheckSameDevice(slot_mapping, "slot_mapping", k_cache));
  DS_RETURN_IF_ERROR(CheckSize(slot_mapping, "slot_mapping", 0, k.size(0), "tokens, k's"));

  DS_CATCH_ATEN({
    const at::Tensor kc = k.contiguous(), vc = v.contiguous(), sc = slot_mapping.contiguous();
#ifdef DELTASERVE_WITH_CUDA
    if (k_cache.is_cuda()) {
      internal::WriteKvCacheCuda(kc, vc, sc, k_cache, v_cache);
      return absl::OkStatus();
    }
#endif
    WriteKvCacheReference(kc, vc, sc, k_cache, v_cache, cache.slots());
    return absl::OkStatus();
  })
}

absl::StatusOr<at::Tensor> PagedDecodeAttention(const at::Tensor& q, const at::Tensor& k_cache,
                                                const at::Tensor& v_cache, const at::Tensor& block_tables,
                                                const at::Tensor& seq_lens, double scale,
                                                int64_t max_seq_len) {
  DS_ASSIGN_OR_RETURN(const CacheShape cache, CheckCaches(k_cache, v_cache));
  DS_RETURN_IF_ERROR(CheckQuery(q, k_cache, cache).status());
  const int64_t batch = q.size(0);
  DS_RETURN_IF_ERROR(CheckBlockTables(block_tables, k_cache, batch));
  DS_RETURN_IF_ERROR(CheckInput(seq_lens, "seq_lens", 1));
  DS_RETURN_IF_ERROR(CheckDtype(seq_lens, "seq_lens", {at::kInt}));
  DS_RETURN_IF_ERROR(CheckSameDevice(seq_lens, "seq_lens", k_cache));
  DS_RETURN_IF_ERROR(CheckSize(seq_lens, "seq_lens", 0, batch, "batch, q's"));
  DS_RETURN_IF_ERROR(CheckScale(scale));
  const int64_t capacity = block_tables.size(1) * cache.block_size;
  if (max_seq_len < 0 || max_seq_len > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_seq_len: must be in [0, ", capacity, "] (block_tables width ", block_tables.size(1),
                     " x block_size ", cache.block_size, "), got ", max_seq_len));
  }

  DS_CATCH_ATEN({
    const at::Tensor qc = q.contiguous(), tables = block_tables.contiguous(), lens = seq_lens.contiguous();
#ifdef DELTASERVE_WITH_CUDA
    if (k_cache.is_cuda()) {
      return internal::PagedDecodeCuda(qc, k_cache, v_cache, tables, lens, static_cast<float>(scale),
                                       max_seq_len);
    }
#endif
    return internal::PagedDecodeCpu(qc, k_cache, v_cache, tables, lens, scale);
  })
}

absl::StatusOr<at::Tensor> PagedPrefillAttention(const at::Tensor& q, const at::Tensor& k_cache,
                                                 const at::Tensor& v_cache, const at::Tensor& block_tables,
                                                 absl::Span<const int64_t> host_cu_q,
                                                 absl::Span<const int64_t> host_starts, double scale) {
  DS_ASSIGN_OR_RETURN(const CacheShape cache, CheckCaches(k_cache, v_cache));
  DS_RETURN_IF_ERROR(CheckQuery(q, k_cache, cache).status());
  if (host_cu_q.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("host_cu_q: needs at least 2 offsets (one sequence), got ", host_cu_q.size()));
  }
  const int64_t num_seqs = static_cast<int64_t>(host_cu_q.size()) - 1;
  DS_RETURN_IF_ERROR(CheckBlockTables(block_tables, k_cache, num_seqs));
  if (static_cast<int64_t>(host_starts.size()) != num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("host_starts: must hold one start per sequence (",
                                                   num_seqs, "), got ", host_starts.size()));
  }
  if (host_cu_q[0] != 0 || host_cu_q[num_seqs] != q.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("host_cu_q: must run from 0 to q's ", q.size(0),
                                                   " rows, got ", host_cu_q[0], " .. ", host_cu_q[num_seqs]));
  }
  const int64_t capacity = block_tables.size(1) * cache.block_size;
  for (int64_t i = 0; i < num_seqs; ++i) {
    if (host_cu_q[i + 1] < host_cu_q[i]) {
      return absl::InvalidArgumentError(absl::StrCat("host_cu_q: offsets must not decrease (index ", i + 1,
                                                     ": ", host_cu_q[i + 1], " < ", host_cu_q[i], ")"));
    }
    if (host_starts[i] < 0 || host_starts[i] + host_cu_q[i + 1] - host_cu_q[i] > capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          "host_starts: sequence ", i, " spans positions ", host_starts[i], " .. ",
          host_starts[i] + host_cu_q[i + 1] - host_cu_q[i], ", outside [0, ", capacity,
          "] (block_tables width ", block_tables.size(1), " x block_size ", cache.block_size, ")"));
    }
  }
  DS_RETURN_IF_ERROR(CheckScale(scale));

  DS_CATCH_ATEN({
    const bool reference = k_cache.is_cpu();
    at::Tensor out = at::empty(q.sizes(), q.options().dtype(reference ? at::kFloat : q.scalar_type()));
    // One sequence at a time: prefill is never graph-captured, and a host loop keeps every gather the
    // size of one sequence.
    for (int64_t i = 0; i < num_seqs; ++i) {
      const int64_t n = host_cu_q[i + 1] - host_cu_q[i];
      if (n == 0) continue;
      const int64_t len = host_starts[i] + n;
      const at::Tensor slots = SequenceSlots(block_tables[i], len, cache.block_size);
      const at::Tensor keys = Gather(k_cache, slots), values = Gather(v_cache, slots);
      const at::Tensor rows = q.narrow(0, host_cu_q[i], n);
      out.narrow(0, host_cu_q[i], n)
          .copy_(reference ? AttendReference(rows, keys, values, host_starts[i], scale)
                           : AttendGpu(rows, keys, values, host_starts[i], scale));
    }
    return reference ? out.to(q.scalar_type()) : out;
  })
}

}  // namespace deltaserve::kernels
