// See paged_decode_cpu.h. The ATen composition this replaces gathered each sequence's keys and values into
// new tensors and let matmul broadcast the key heads over their query group, which copies every key and
// value once per query head of the group: at 512 tokens of context that copying was a sixth of a CPU decode
// step (perf, 0.8B dimensions, 2 threads). Here each (sequence, key head) is one task: the group's query
// heads score each key row as it is read from its block, a softmax per head, then each value row is read
// once and added into all the group's outputs.
#include "paged_decode_cpu.h"

// The 64-byte vector helpers are inlined into each target clone (no out-of-line calls take them by value).
#pragma GCC diagnostic ignored "-Wpsabi"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_vec16.h"

namespace deltaserve::kernels::internal {
namespace {

// The cache's values as LoadF16 reads them: float32 as they are, bf16 as their bits.
inline const float* Lanes(const float* p) { return p; }
inline const uint16_t* Lanes(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

// One (sequence, key head): q [group, d] float32 (already scaled), `starts[p]` where position p's row
// starts in the caches; writes the group's outputs [group, d] float32. `scores` holds group * len floats.
template <typename T>
__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void AttendGroup(
    const float* q, int64_t group, int64_t d, const T* k, const T* v, const int64_t* starts, int64_t len,
    float* scores, float* out) {
  const int64_t vecs = d / 16;
  for (int64_t p = 0; p < len; ++p) {
    const T* kr = k + starts[p];
    for (int64_t h = 0; h < group; ++h) {
      F16 acc = {};
      for (int64_t i = 0; i < vecs; ++i) acc += LoadF16(q + h * d + 16 * i) * LoadF16(Lanes(kr + 16 * i));
      scores[h * len + p] = Sum(acc);
    }
  }
  for (int64_t h = 0; h < group; ++h) {
    float* s = scores + h * len;
    const float mx = *std::max_element(s, s + len);
    float sum = 0;
    for (int64_t p = 0; p < len; ++p) {
      s[p] = std::exp(s[p] - mx);
      sum += s[p];
    }
    const float inv = 1.0f / sum;
    for (int64_t p = 0; p < len; ++p) s[p] *= inv;
  }
  std::fill(out, out + group * d, 0.0f);
  for (int64_t p = 0; p < len; ++p) {
    const T* vr = v + starts[p];
    for (int64_t i = 0; i < vecs; ++i) {
      const F16 x = LoadF16(Lanes(vr + 16 * i));
      for (int64_t h = 0; h < group; ++h) {
        F16 o = LoadF16(out + h * d + 16 * i);
        o += scores[h * len + p] * x;
        std::memcpy(out + h * d + 16 * i, &o, sizeof(o));
      }
    }
  }
}

template <typename T>
void Decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
            const at::Tensor& lens, double scale, at::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(2);
  const int64_t blocks = k_cache.size(0), block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  const int64_t group = heads / kv_heads, width = tables.size(1), capacity = width * block_size;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  T* op = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);
  // The caches viewed as rows [blocks * block_size * kv_heads, d]: position p of key head g is row
  // (block * block_size + p % block_size) * kv_heads + g.
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> qf, scores, acc;
    std::vector<int64_t> starts;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / kv_heads, g = w % kv_heads;
      const int64_t len = std::clamp<int64_t>(lp[b], 0, capacity);
      T* ob = op + (b * heads + g * group) * d;
      if (len == 0) {
        std::fill(ob, ob + group * d, T(0.0f));
        continue;
      }
      starts.resize(static_cast<size_t>(len));
      for (int64_t p = 0; p < len; ++p) {
        const int64_t block = tp[b * width + p / block_size];
        TORCH_CHECK(block >= 0 && block < blocks, "block_tables[", b, "][", p / block_size, "] = ", block,
                    " is outside the cache's ", blocks, " blocks");
        starts[static_cast<size_t>(p)] = ((block * block_size + p % block_size) * kv_heads + g) * d;
      }
      qf.resize(static_cast<size_t>(group * d));
      const T* qb = qp + (b * heads + g * group) * d;
      for (int64_t i = 0; i < group * d; ++i) qf[static_cast<size_t>(i)] = static_cast<float>(qb[i]) * fscale;
      scores.resize(static_cast<size_t>(group * len));
      acc.resize(static_cast<size_t>(group * d));
      AttendGroup(qf.data(), group, d, kp, vp, starts.data(), len, scores.data(), acc.data());
      for (int64_t i = 0; i < group * d; ++i) ob[i] = static_cast<T>(acc[static_cast<size_t>(i)]);
    }
  });
}

}  // namespace

at::Tensor PagedDecodeCpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale) {
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (q.scalar_type() == at::kBFloat16) {
    Decode<c10::BFloat16>(q, k_cache, v_cache, block_tables, seq_lens, scale, out);
  } else {
    Decode<float>(q, k_cache, v_cache, block_tables, seq_lens, scale, out);
  }
  return out;
}

}  // namespace deltaserve::kernels::internal
