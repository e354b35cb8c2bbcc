// Paged KV cache attention: the CPU paths against a plain contiguous causal attention in float64 (random
// inputs, shuffled block tables, caches poisoned with NaN wherever no sequence lives), the cache write,
// argument checks, and on a GPU (skipped without one) the CUDA kernels against the ATen path, free of
// host syncs and under CUDA-graph capture.
#include "deltaserve/kernels/paged_attention.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "support/gdn_inputs.h"

#ifdef DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::RelMaxError;
using ::testing::HasSubstr;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Geometry {
  int64_t heads, kv_heads, head_dim, block_size;
};

std::string Describe(const Geometry& g, at::ScalarType dtype) {
  return absl::StrCat(g.heads, "/", g.kv_heads, " heads, head_dim ", g.head_dim, ", block ", g.block_size,
                      ", ", c10::toString(dtype));
}

// A paged cache holding sequences of the given lengths in randomly chosen, non-contiguous blocks. Every
// slot no sequence owns (spare blocks, the tail of each last block) is NaN, so reading one shows up in
// the output; block-table entries past a sequence's blocks are -1.
struct PagedCache {
  at::Tensor k_cache, v_cache;   // [num_blocks, block_size, kv_heads, head_dim]
  at::Tensor block_tables;       // [B, max_blocks] int32
  std::vector<at::Tensor> keys;  // per sequence [len, kv_heads, head_dim], float64, as stored
  std::vector<at::Tensor> values;
};

PagedCache MakePagedCache(const std::vector<int64_t>& lens, const Geometry& g, at::ScalarType dtype,
                          int64_t extra_width = 1) {
  std::vector<int64_t> blocks_of;
  int64_t total = 0, widest = 1;
  for (int64_t len : lens) {
    blocks_of.push_back((len + g.block_size - 1) / g.block_size);
    total += blocks_of.back();
    widest = std::max(widest, blocks_of.back());
  }
  const int64_t num_blocks = total + 3;
  PagedCache c;
  c.k_cache =
      at::full({num_blocks, g.block_size, g.kv_heads, g.head_dim}, kNaN, at::TensorOptions().dtype(dtype));
  c.v_cache = at::full_like(c.k_cache, kNaN);
  c.block_tables = at::full({static_cast<int64_t>(lens.size()), widest + extra_width}, -1, at::kInt);
  const at::Tensor order = at::randperm(num_blocks, at::kLong);
  const at::Tensor kc = c.k_cache.view({-1, g.kv_heads, g.head_dim});
  const at::Tensor vc = c.v_cache.view({-1, g.kv_heads, g.head_dim});
  int64_t next = 0;
  for (size_t b = 0; b < lens.size(); ++b) {
    const int64_t len = lens[b];
    std::vector<int64_t> slots;
    for (int64_t i = 0; i < blocks_of[b]; ++i) {
      c.block_tables[b][i] = order[next + i].item<int64_t>();
    }
    for (int64_t p = 0; p < len; ++p) {
      slots.push_back(order[next + p / g.block_size].item<int64_t>() * g.block_size + p % g.block_size);
    }
    next += blocks_of[b];
    const at::Tensor k = at::randn({len, g.kv_heads, g.head_dim}).to(dtype);
    const at::Tensor v = at::randn({len, g.kv_heads, g.head_dim}).to(dtype);
    if (len > 0) {
      const at::Tensor index = at::tensor(slots, at::kLong);
      kc.index_copy_(0, index, k);
      vc.index_copy_(0, index, v);
    }
    c.keys.push_back(k.to(at::kDouble));
    c.values.push_back(v.to(at::kDouble));
  }
  return c;
}

// Contiguous causal attention in float64 with the KV heads repeated: query r of q_rows [n, heads, d]
// sits at position first_pos + r and sees keys 0 .. first_pos + r.
at::Tensor ContiguousAttention(const at::Tensor& q_rows, const at::Tensor& keys, const at::Tensor& values,
                               int64_t first_pos, double scale) {
  const int64_t n = q_rows.size(0), heads = q_rows.size(1), len = keys.size(0);
  const int64_t group = heads / keys.size(1);
  const at::Tensor k = keys.repeat_interleave(group, 1);  // [len, heads, d]
  const at::Tensor v = values.repeat_interleave(group, 1);
  at::Tensor scores = at::einsum("nhd,lhd->hnl", {q_rows.to(at::kDouble), k}) * scale;
  for (int64_t r = 0; r < n; ++r) {
    if (first_pos + r + 1 < len)
      scores.select(1, r).narrow(1, first_pos + r + 1, len - first_pos - r - 1).fill_(-INFINITY);
  }
  return at::einsum("hnl,lhd->nhd", {at::softmax(scores, -1), v});
}

at::Tensor DecodeReference(const at::Tensor& q, const PagedCache& c, const std::vector<int64_t>& lens,
                           double scale) {
  at::Tensor out = at::zeros(q.sizes(), at::kDouble);
  for (size_t b = 0; b < lens.size(); ++b) {
    if (lens[b] == 0) continue;
    out[b].copy_(ContiguousAttention(q.narrow(0, b, 1), c.keys[b], c.values[b], lens[b] - 1, scale)[0]);
  }
  return out;
}

at::Tensor SeqLens(const std::vector<int64_t>& lens) { return at::tensor(lens, at::kLong).to(at::kInt); }

double Tolerance(at::ScalarType dtype) { return dtype == at::kBFloat16 ? 2e-2 : 1e-5; }

// ---------------------------------------------------------------------------------------------------
// The ATen path (CPU).

TEST(PagedAttention, DecodeMatchesContiguousReference) {
  at::manual_seed(90417);
  const std::vector<Geometry> geometries = {{8, 2, 64, 16}, {16, 4, 128, 32}, {8, 8, 256, 8}};
  // 1 token, block-boundary neighbours, several blocks, and a padding row (0) that must come out zero.
  const std::vector<int64_t> lens = {1, 15, 16, 17, 100, 0, 33};
  for (const Geometry& g : geometries) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      PagedCache c = MakePagedCache(lens, g, dtype);
      const at::Tensor q =
          (at::randn({static_cast<int64_t>(lens.size()), g.heads, g.head_dim}) * 2).to(dtype);
      const double scale = 1.0 / std::sqrt(static_cast<double>(g.head_dim));
      absl::StatusOr<at::Tensor> out =
          PagedDecodeAttention(q, c.k_cache, c.v_cache, c.block_tables, SeqLens(lens), scale, 100);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(out->scalar_type(), dtype);
      EXPECT_EQ(out->sizes(), q.sizes());
      const at::Tensor ref = DecodeReference(q, c, lens, scale);
      EXPECT_LT(RelMaxError(*out, ref), Tolerance(dtype)) << Describe(g, dtype);
      EXPECT_TRUE(at::all((*out)[5] == 0).item<bool>()) << "padding row, " << Describe(g, dtype);
      EXPECT_GT(out->to(at::kFloat).abs().max().item<float>(), 0.1f);
    }
  }
}

struct Chunk {
  int64_t start, queries;  // the chunk's first position and its number of queries
};

at::Tensor PrefillReference(const at::Tensor& q, const PagedCache& c, const std::vector<Chunk>& chunks,
                            double scale) {
  at::Tensor out = at::empty(q.sizes(), at::kDouble);
  int64_t row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].queries == 0) continue;
    out.narrow(0, row, chunks[i].queries)
        .copy_(ContiguousAttention(q.narrow(0, row, chunks[i].queries), c.keys[i], c.values[i],
                                   chunks[i].start, scale));
    row += chunks[i].queries;
  }
  return out;
}

struct PrefillCase {
  PagedCache cache;
  at::Tensor q;
  std::vector<int64_t> cu_q, starts;
};

PrefillCase MakePrefillCase(const std::vector<Chunk>& chunks, const Geometry& g, at::ScalarType dtype) {
  PrefillCase p;
  std::vector<int64_t> lens;
  p.cu_q = {0};
  for (const Chunk& ch : chunks) {
    lens.push_back(ch.start + ch.queries);
    p.cu_q.push_back(p.cu_q.back() + ch.queries);
    p.starts.push_back(ch.start);
  }
  p.cache = MakePagedCache(lens, g, dtype);
  p.q = (at::randn({p.cu_q.back(), g.heads, g.head_dim}) * 2).to(dtype);
  return p;
}

// Whole prompts (start 0), later chunks (start > 0, crossing block boundaries), a one-token chunk and
// a sequence with no queries this step.
const std::vector<Chunk>& PrefillChunks() {
  static const std::vector<Chunk> chunks = {{0, 7}, {5, 1}, {31, 40}, {0, 0}, {16, 16}, {0, 50}};
  return chunks;
}

TEST(PagedAttention, PrefillMatchesContiguousReference) {
  at::manual_seed(23114);
  for (const Geometry& g : {Geometry{8, 2, 64, 16}, Geometry{16, 4, 128, 32}}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      PrefillCase p = MakePrefillCase(PrefillChunks(), g, dtype);
      const double scale = 1.0 / std::sqrt(static_cast<double>(g.head_dim));
      absl::StatusOr<at::Tensor> out = PagedPrefillAttention(p.q, p.cache.k_cache, p.cache.v_cache,
                                                             p.cache.block_tables, p.cu_q, p.starts, scale);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(out->scalar_type(), dtype);
      EXPECT_LT(RelMaxError(*out, PrefillReference(p.q, p.cache, PrefillChunks(), scale)), Tolerance(dtype))
          << Describe(g, dtype);
    }
  }
}

TEST(PagedAttention, PrefillLastRowEqualsDecode) {
  // The two entry points agree where they overlap: a chunk's last query is a decode at that length.
  at::manual_seed(6203);
  const Geometry g{16, 4, 128, 16};
  PrefillCase p = MakePrefillCase({{40, 9}}, g, at::kFloat);
  const double scale = 0.07;
  at::Tensor prefill = *PagedPrefillAttention(p.q, p.cache.k_cache, p.cache.v_cache, p.cache.block_tables,
                                              p.cu_q, p.starts, scale);
  at::Tensor decode = *PagedDecodeAttention(p.q.narrow(0, 8, 1), p.cache.k_cache, p.cache.v_cache,
                                            p.cache.block_tables, SeqLens({49}), scale, 49);
  EXPECT_LT(RelMaxError(decode[0], prefill[8]), 1e-6);
}

TEST(PagedAttention, WriteKvCacheWritesExactlyTheNonNegativeSlots) {
  at::manual_seed(7719);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const int64_t blocks = 6, block_size = 8, kv_heads = 2, head_dim = 64, tokens = 12;
    at::Tensor k_cache =
        at::full({blocks, block_size, kv_heads, head_dim}, kNaN, at::TensorOptions().dtype(dtype));
    at::Tensor v_cache = at::full_like(k_cache, kNaN);
    const at::Tensor k = at::randn({tokens, kv_heads, head_dim}).to(dtype);
    const at::Tensor v = at::randn({tokens, kv_heads, head_dim}).to(dtype);
    at::Tensor slots = at::randperm(blocks * block_size, at::kLong).narrow(0, 0, tokens).clone();
    for (int64_t padding : {1, 4, 11}) slots[padding] = -1;
    ASSERT_TRUE(WriteKvCache(k, v, slots, k_cache, v_cache).ok());
    const at::Tensor kc = k_cache.view({-1, kv_heads, head_dim});
    const at::Tensor vc = v_cache.view({-1, kv_heads, head_dim});
    at::Tensor written = at::zeros({blocks * block_size}, at::kBool);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t s = slots[t].item<int64_t>();
      if (s < 0) continue;
      written[s] = true;
      EXPECT_TRUE(at::equal(kc[s], k[t])) << "token " << t;
      EXPECT_TRUE(at::equal(vc[s], v[t])) << "token " << t;
    }
    EXPECT_EQ(written.sum().item<int64_t>(), tokens - 3);
    const at::Tensor untouched = written.logical_not();
    EXPECT_TRUE(at::all(at::isnan(kc.index({untouched}))).item<bool>()) << c10::toString(dtype);
    EXPECT_TRUE(at::all(at::isnan(vc.index({untouched}))).item<bool>()) << c10::toString(dtype);
  }
}

void ExpectInvalid(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field)) << s;
}

TEST(PagedAttention, CacheHeadDimIsTheSmallestKernelSizeThatHoldsTheHead) {
  EXPECT_EQ(PagedCacheHeadDim(16), 64);
  EXPECT_EQ(PagedCacheHeadDim(64), 64);
  EXPECT_EQ(PagedCacheHeadDim(65), 128);
  EXPECT_EQ(PagedCacheHeadDim(200), 256);
  EXPECT_EQ(PagedCacheHeadDim(257), 257);  // no kernel: the ops refuse it by name
}

// Zero-padding q, k and v to the cache width changes no output dimension a narrower head has.
TEST(PagedAttention, ZeroPaddedHeadsAttendAsUnpadded) {
  at::manual_seed(11);
  const int64_t hd = 16, cd = PagedCacheHeadDim(hd), len = 21, block = 8, blocks = 4;
  const at::Tensor k = at::randn({len, 2, hd}), v = at::randn({len, 2, hd}), q = at::randn({1, 4, hd});
  at::Tensor kc = at::zeros({blocks, block, 2, cd}), vc = at::zeros({blocks, block, 2, cd});
  const at::Tensor slots = at::arange(len, at::kLong);
  ASSERT_TRUE(WriteKvCache(at::constant_pad_nd(k, {0, cd - hd}), at::constant_pad_nd(v, {0, cd - hd}), slots, kc, vc)
                  .ok());
  const at::Tensor tables = at::arange(blocks, at::kInt).view({1, blocks});
  const at::Tensor lens = at::full({1}, len, at::kInt);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  absl::StatusOr<at::Tensor> out =
      PagedDecodeAttention(at::constant_pad_nd(q, {0, cd - hd}), kc, vc, tables, lens, scale, len);
  ASSERT_TRUE(out.ok()) << out.status();
  // Plain softmax attention of the one query over all keys, GQA 2 query heads per KV head.
  const at::Tensor kk = k.repeat_interleave(2, 1), vv = v.repeat_interleave(2, 1);  // [len, 4, hd]
  const at::Tensor p = at::softmax(at::einsum("hd,thd->ht", {q[0], kk}) * scale, -1);
  const at::Tensor expected = at::einsum("ht,thd->hd", {p, vv});
  EXPECT_TRUE(at::allclose(out->narrow(-1, 0, hd)[0], expected, 1e-5, 1e-5));
  EXPECT_EQ(out->narrow(-1, hd, cd - hd).abs().max().item<float>(), 0.0f);
}

// A block-table entry outside the cache (a corrupt table) is an error naming the entry, on the CPU path,
// never a read outside the cache.
TEST(PagedAttention, DecodeRefusesABlockOutsideTheCache) {
  const Geometry g{8, 2, 64, 16};
  PagedCache c = MakePagedCache({20, 5}, g, at::kFloat);
  const at::Tensor q = at::randn({2, 8, 64});
  for (int32_t bad : {-1, static_cast<int32_t>(c.k_cache.size(0))}) {
    at::Tensor tables = c.block_tables.clone();
    tables[0][1] = bad;  // the second block of the 20-token sequence
    const absl::Status st = PagedDecodeAttention(q, c.k_cache, c.v_cache, tables, SeqLens({20, 5}), 0.125, 20).status();
    EXPECT_FALSE(st.ok());
    EXPECT_THAT(st.message(), HasSubstr("block_tables[0][1]")) << st;
  }
}

TEST(PagedAttention, ArgumentChecks) {
  const Geometry g{8, 2, 64, 16};
  PagedCache c = MakePagedCache({20, 5}, g, at::kFloat);
  const at::Tensor q = at::randn({2, 8, 64});
  const at::Tensor lens = SeqLens({20, 5});
  auto decode = [&](const at::Tensor& q_, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& bt,
                    const at::Tensor& sl, double scale, int64_t max_len) {
    return PagedDecodeAttention(q_, kc, vc, bt, sl, scale, max_len).status();
  };
  EXPECT_TRUE(decode(q, c.k_cache, c.v_cache, c.block_tables, lens, 0.1, 20).ok());
  ExpectInvalid(decode(q.to(at::kBFloat16), c.k_cache, c.v_cache, c.block_tables, lens, 0.1, 20), "q: dtype");
  ExpectInvalid(decode(at::randn({2, 7, 64}), c.k_cache, c.v_cache, c.block_tables, lens, 0.1, 20),
                "multiple of the caches' 2 kv_heads");
  ExpectInvalid(decode(at::randn({2, 8, 128}), c.k_cache, c.v_cache, c.block_tables, lens, 0.1, 20),
                "q: dimension 2");
  ExpectInvalid(decode(q[0], c.k_cache, c.v_cache, c.block_tables, lens, 0.1, 20),
                "q: expected 3 dimensions");
  ExpectInvalid(decode(q, c.k_cache.to(at::kHalf), c.v_cache, c.block_tables, lens, 0.1, 20),
                "k_cache: dtype");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache.to(at::kBFloat16), c.block_tables, lens, 0.1, 20),
                "v_cache: dtype");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache.narrow(0, 0, 2), c.block_tables, lens, 0.1, 20),
                "v_cache: shape");
  ExpectInvalid(decode(q, c.k_cache.transpose(1, 2), c.v_cache, c.block_tables, lens, 0.1, 20), "contiguous");
  const at::Tensor odd_block = at::randn({4, 12, 2, 64});
  ExpectInvalid(decode(q, odd_block, odd_block, c.block_tables, lens, 0.1, 20), "power of two >= 8");
  const at::Tensor odd_dim = at::randn({4, 16, 2, 96});
  ExpectInvalid(decode(at::randn({2, 8, 96}), odd_dim, odd_dim, c.block_tables, lens, 0.1, 20),
                "64, 128 or 256");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables.to(at::kLong), lens, 0.1, 20),
                "block_tables: dtype");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables.narrow(0, 0, 1), lens, 0.1, 20),
                "block_tables: dimension 0");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables, lens.to(at::kLong), 0.1, 20),
                "seq_lens: dtype");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables, SeqLens({3}), 0.1, 20),
                "seq_lens: dimension 0");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables, lens, 0.0, 20), "scale");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables, lens, 0.1, 49),
                "max_seq_len: must be in [0, 48]");
  ExpectInvalid(decode(q, c.k_cache, c.v_cache, c.block_tables, lens, 0.1, -1), "max_seq_len");

  auto prefill = [&](const at::Tensor& q_, const at::Tensor& bt, std::vector<int64_t> cu,
                     std::vector<int64_t> starts) {
    return PagedPrefillAttention(q_, c.k_cache, c.v_cache, bt, cu, starts, 0.1).status();
  };
  const at::Tensor qp = at::randn({9, 8, 64});
  EXPECT_TRUE(prefill(qp, c.block_tables, {0, 5, 9}, {15, 1}).ok());
  ExpectInvalid(prefill(qp, c.block_tables, {0, 5, 8}, {15, 1}), "host_cu_q: must run from 0 to q's 9 rows");
  ExpectInvalid(prefill(qp, c.block_tables, {0, 9}, {15}), "block_tables: dimension 0");
  ExpectInvalid(prefill(qp, c.block_tables, {0, 5, 9}, {15}),
                "host_starts: must hold one start per sequence");
  ExpectInvalid(prefill(qp, c.block_tables, {0, 5, 9}, {44, 1}),
                "host_starts: sequence 0 spans positions 44 .. 49");
  ExpectInvalid(prefill(qp, c.block_tables, {0, 5, 9}, {-1, 1}), "host_starts");
  ExpectInvalid(prefill(qp, c.block_tables, {0, 10, 9}, {0, 1}), "must not decrease");
  ExpectInvalid(prefill(qp, c.block_tables, {0}, {}), "host_cu_q: needs at least 2 offsets");

  at::Tensor kc = c.k_cache.clone(), vc = c.v_cache.clone();
  const at::Tensor kv = at::randn({3, 2, 64});
  const at::Tensor slots = at::tensor({0, -1, 7}, at::kLong);
  EXPECT_TRUE(WriteKvCache(kv, kv, slots, kc, vc).ok());
  ExpectInvalid(WriteKvCache(at::randn({3, 1, 64}), kv, slots, kc, vc), "k: dimension 1");
  ExpectInvalid(WriteKvCache(kv, at::randn({2, 2, 64}), slots, kc, vc), "v: dimension 0");
  ExpectInvalid(WriteKvCache(kv, kv, slots.to(at::kInt), kc, vc), "slot_mapping: dtype");
  ExpectInvalid(WriteKvCache(kv, kv, slots.narrow(0, 0, 2), kc, vc), "slot_mapping: dimension 0");
  ExpectInvalid(WriteKvCache(kv.to(at::kBFloat16), kv, slots, kc, vc), "k: dtype");
}

// ---------------------------------------------------------------------------------------------------
// CUDA: the kernels against the ATen path on the same inputs.

class PagedAttentionCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

struct DeviceCache {
  at::Tensor k_cache, v_cache, block_tables;
};

DeviceCache ToCuda(const PagedCache& c) {
  return {c.k_cache.to(at::kCUDA), c.v_cache.to(at::kCUDA), c.block_tables.to(at::kCUDA)};
}

double CudaTolerance(at::ScalarType dtype) { return dtype == at::kBFloat16 ? 2e-2 : 1e-4; }

void ExpectDecodeMatchesCpu(const std::vector<int64_t>& lens, const Geometry& g, at::ScalarType dtype,
                            int64_t max_seq_len = -1) {
  // A bound given beyond the lengths gets a block table wide enough to allow it.
  const int64_t extra_width = max_seq_len < 0 ? 1 : (max_seq_len + g.block_size - 1) / g.block_size;
  PagedCache c = MakePagedCache(lens, g, dtype, extra_width);
  const DeviceCache d = ToCuda(c);
  const int64_t batch = static_cast<int64_t>(lens.size());
  const at::Tensor q = (at::randn({batch, g.heads, g.head_dim}) * 2).to(dtype);
  const double scale = 1.0 / std::sqrt(static_cast<double>(g.head_dim));
  const int64_t longest = *std::max_element(lens.begin(), lens.end());
  if (max_seq_len < 0) max_seq_len = longest;
  const at::Tensor cpu =
      *PagedDecodeAttention(q, c.k_cache, c.v_cache, c.block_tables, SeqLens(lens), scale, longest);
  absl::StatusOr<at::Tensor> gpu = PagedDecodeAttention(q.to(at::kCUDA), d.k_cache, d.v_cache, d.block_tables,
                                                        SeqLens(lens).to(at::kCUDA), scale, max_seq_len);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_TRUE(gpu->is_cuda());
  EXPECT_EQ(gpu->scalar_type(), dtype);
  const std::string what =
      absl::StrCat(Describe(g, dtype), ", longest ", longest, ", max_seq_len ", max_seq_len);
  EXPECT_LT(RelMaxError(gpu->cpu(), cpu), CudaTolerance(dtype)) << what;
  for (size_t b = 0; b < lens.size(); ++b) {
    if (lens[b] == 0) {
      EXPECT_TRUE(at::all(gpu->cpu()[b] == 0).item<bool>()) << "padding row " << b << ", " << what;
    }
  }
}

TEST_F(PagedAttentionCuda, DecodeMatchesCpu) {
  at::manual_seed(33051);
  const std::vector<Geometry> geometries = {
      {8, 2, 64, 16},    // the 0.8B's grouping
      {16, 4, 128, 32},  // the 9B's grouping
      {8, 2, 256, 16},   // real head_dim
      {24, 4, 256, 32},  // the 27B's group of 6
      {12, 1, 128, 8},   // a group of 12: two head chunks, the second half idle
      {4, 4, 64, 16},    // no grouping
  };
  for (const Geometry& g : geometries) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      ExpectDecodeMatchesCpu({1, 15, 16, 17, 0, 300, 64, 2}, g, dtype);
    }
  }
}

TEST_F(PagedAttentionCuda, LongDecodeSplitsMatchCpu) {
  // Few (sequence, KV head) blocks and thousands of keys: the keys are split across blocks and merged.
  at::manual_seed(48810);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    ExpectDecodeMatchesCpu({3000}, {8, 2, 256, 16}, dtype);
    ExpectDecodeMatchesCpu({3000, 5, 0, 1200}, {16, 4, 128, 32}, dtype);
    ExpectDecodeMatchesCpu({2999}, {24, 4, 256, 32}, dtype);
    // A generous bound (more splits than keys warrant for the short rows) changes nothing.
    ExpectDecodeMatchesCpu({700, 1, 33}, {8, 2, 64, 16}, dtype, /*max_seq_len=*/4096);
  }
}

TEST_F(PagedAttentionCuda, PrefillMatchesCpu) {
  at::manual_seed(5127);
  // The short chunks of the CPU test, then long ones: a 600-query chunk behind 1500 cached keys and a
  // one-query chunk at position 2999.
  const std::vector<Chunk> long_chunks = {{0, 300}, {1500, 600}, {2999, 1}};
  for (const Geometry& g : {Geometry{8, 2, 64, 16}, Geometry{16, 4, 128, 32}, Geometry{8, 2, 256, 16},
                            Geometry{24, 4, 256, 32}}) {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      PrefillCase p = MakePrefillCase(g.heads == 24 ? long_chunks : PrefillChunks(), g, dtype);
      const DeviceCache d = ToCuda(p.cache);
      const double scale = 1.0 / std::sqrt(static_cast<double>(g.head_dim));
      const at::Tensor cpu = *PagedPrefillAttention(p.q, p.cache.k_cache, p.cache.v_cache,
                                                    p.cache.block_tables, p.cu_q, p.starts, scale);
      absl::StatusOr<at::Tensor> gpu = PagedPrefillAttention(p.q.to(at::kCUDA), d.k_cache, d.v_cache,
                                                             d.block_tables, p.cu_q, p.starts, scale);
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      EXPECT_EQ(gpu->scalar_type(), dtype);
      EXPECT_LT(RelMaxError(gpu->cpu(), cpu), CudaTolerance(dtype)) << Describe(g, dtype);
    }
  }
}

// Bit patterns, so that NaN entries compare equal to NaN.
at::Tensor Bits(const at::Tensor& t) { return t.cpu().view(t.element_size() == 4 ? at::kInt : at::kShort); }

TEST_F(PagedAttentionCuda, WriteKvCacheMatchesCpu) {
  at::manual_seed(1882);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (bool misaligned : {false, true}) {
      const int64_t blocks = 9, block_size = 16, kv_heads = 4, head_dim = 128, tokens = 37;
      at::Tensor k_cache =
          at::full({blocks, block_size, kv_heads, head_dim}, kNaN, at::TensorOptions().dtype(dtype));
      at::Tensor v_cache = at::full_like(k_cache, kNaN);
      at::Tensor k_gpu_cache = k_cache.to(at::kCUDA), v_gpu_cache = v_cache.to(at::kCUDA);
      const int64_t n = tokens * kv_heads * head_dim;
      // One element into a flat buffer: a contiguous view whose start is not 16-byte aligned.
      const at::Tensor flat = at::randn({2 * n + 1}).to(dtype);
      const int64_t offset = misaligned ? 1 : 0;
      const at::Tensor k = flat.narrow(0, offset, n).view({tokens, kv_heads, head_dim});
      const at::Tensor v = flat.narrow(0, offset + n, n).view({tokens, kv_heads, head_dim});
      at::Tensor slots = at::randperm(blocks * block_size, at::kLong).narrow(0, 0, tokens).clone();
      for (int64_t padding : {0, 3, 36}) slots[padding] = -1 - padding;
      ASSERT_TRUE(WriteKvCache(k, v, slots, k_cache, v_cache).ok());
      const at::Tensor kg = flat.to(at::kCUDA).narrow(0, offset, n).view({tokens, kv_heads, head_dim});
      const at::Tensor vg = flat.to(at::kCUDA).narrow(0, offset + n, n).view({tokens, kv_heads, head_dim});
      const absl::Status s = WriteKvCache(kg, vg, slots.to(at::kCUDA), k_gpu_cache, v_gpu_cache);
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_TRUE(at::equal(Bits(k_gpu_cache), Bits(k_cache))) << c10::toString(dtype) << " " << misaligned;
      EXPECT_TRUE(at::equal(Bits(v_gpu_cache), Bits(v_cache))) << c10::toString(dtype) << " " << misaligned;
      EXPECT_EQ(at::isnan(k_cache.to(at::kFloat)).sum().item<int64_t>(),
                (blocks * block_size - (tokens - 3)) * kv_heads * head_dim);
    }
  }
}

#ifdef DELTASERVE_WITH_CUDA
// Turns any host sync inside its scope into an error, and restores the default on the way out.
class SyncsAreErrors {
 public:
  SyncsAreErrors() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
  ~SyncsAreErrors() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
};

TEST_F(PagedAttentionCuda, WriteAndDecodeNeverSyncWithTheHost) {
  at::manual_seed(60331);
  const Geometry g{16, 4, 256, 16};
  const std::vector<int64_t> lens = {40, 2000, 1, 0};
  PagedCache c = MakePagedCache(lens, g, at::kBFloat16);
  // Each sequence's newest token is written by WriteKvCache inside the checked region.
  std::vector<int64_t> last_slots;
  for (size_t b = 0; b < lens.size(); ++b) {
    if (lens[b] == 0) {
      last_slots.push_back(-1);
      continue;
    }
    const int64_t p = lens[b] - 1;
    last_slots.push_back(c.block_tables[b][p / g.block_size].item<int64_t>() * g.block_size +
                         p % g.block_size);
  }
  const at::Tensor new_k = at::randn({4, g.kv_heads, g.head_dim}).to(at::kBFloat16);
  const at::Tensor new_v = at::randn({4, g.kv_heads, g.head_dim}).to(at::kBFloat16);
  const at::Tensor q = at::randn({4, g.heads, g.head_dim}).to(at::kBFloat16);
  DeviceCache d = ToCuda(c);
  const at::Tensor slots_d = at::tensor(last_slots, at::kLong).to(at::kCUDA);
  const at::Tensor k_d = new_k.to(at::kCUDA), v_d = new_v.to(at::kCUDA), q_d = q.to(at::kCUDA);
  const at::Tensor lens_d = SeqLens(lens).to(at::kCUDA);
  absl::StatusOr<at::Tensor> out;
  {
    SyncsAreErrors guard;
    ASSERT_TRUE(WriteKvCache(k_d, v_d, slots_d, d.k_cache, d.v_cache).ok());
    out = PagedDecodeAttention(q_d, d.k_cache, d.v_cache, d.block_tables, lens_d, 0.0625, 2000);
  }
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(WriteKvCache(new_k, new_v, at::tensor(last_slots, at::kLong), c.k_cache, c.v_cache).ok());
  const at::Tensor cpu =
      *PagedDecodeAttention(q, c.k_cache, c.v_cache, c.block_tables, SeqLens(lens), 0.0625, 2000);
  EXPECT_LT(RelMaxError(out->cpu(), cpu), CudaTolerance(at::kBFloat16));
}

TEST_F(PagedAttentionCuda, CapturedDecodeReplaysWithNewLengths) {
  // A CUDA graph captured once and replayed with other lengths and queries: nothing about the lengths
  // may be frozen into the launch.
  at::manual_seed(7340);
  const Geometry g{8, 2, 128, 16};
  const std::vector<int64_t> full = {900, 300, 37};
  PagedCache c = MakePagedCache(full, g, at::kFloat);
  DeviceCache d = ToCuda(c);
  at::Tensor q_d = at::zeros({3, g.heads, g.head_dim}, at::TensorOptions().device(at::kCUDA));
  at::Tensor lens_d = SeqLens({1, 1, 1}).to(at::kCUDA);
  const double scale = 1.0 / std::sqrt(128.0);

  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  at::Tensor out_d;
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard on_stream(stream);
    out_d = *PagedDecodeAttention(q_d, d.k_cache, d.v_cache, d.block_tables, lens_d, scale, 900);  // warm-up
    graph.capture_begin();
    out_d = *PagedDecodeAttention(q_d, d.k_cache, d.v_cache, d.block_tables, lens_d, scale, 900);
    graph.capture_end();
  }
  for (const std::vector<int64_t>& lens :
       {std::vector<int64_t>{900, 300, 37}, std::vector<int64_t>{17, 0, 5}}) {
    const at::Tensor q = at::randn({3, g.heads, g.head_dim});
    q_d.copy_(q);
    lens_d.copy_(SeqLens(lens));
    {
      c10::cuda::CUDAStreamGuard on_stream(stream);
      graph.replay();
    }
    stream.synchronize();
    const at::Tensor cpu =
        *PagedDecodeAttention(q, c.k_cache, c.v_cache, c.block_tables, SeqLens(lens), scale, 900);
    EXPECT_LT(RelMaxError(out_d.cpu(), cpu), CudaTolerance(at::kFloat)) << lens[0];
  }
}
#endif  // DELTASERVE_WITH_CUDA

}  // namespace
}  // namespace deltaserve::kernels
