// CUDA kernels for the paged KV cache: the cache write (slots filtered on the device) and one-token
// decode attention. Decode gives one thread block of four warps to (sequence, KV head, key split) and
// all the query heads that share that KV head, so each key and value row is read from memory once for
// the whole GQA group. A lane holds head_dim / 32 consecutive elements of a row (one vector load), warps
// take interleaved tiles of keys and run an fp32 online softmax (base 2, the scale folded into q), then
// combine through shared memory. When (sequence, KV head) blocks are too few to fill the GPU, keys are
// split across blocks (flash-decoding) and a second small kernel merges the partial softmaxes. All
// lengths come from device tensors, so the launch sequence is fixed and CUDA-graph capturable.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

namespace deltaserve::kernels::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr unsigned kFullMask = 0xffffffffu;
// Splitting stops at this many keys per split (a split's fixed cost, the q load and the merge, stays
// small against its reads) and at kMaxSplits (the scratch and the merge loop stay small).
constexpr int64_t kMinKeysPerSplit = 64;
constexpr int64_t kMaxSplits = 32;
// Blocks per SM the split count aims for: about what the decode kernel's registers allow resident, and
// enough loads in flight to keep HBM busy.
constexpr int64_t kTargetBlocksPerSm = 4;
constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------------
// Row loads: `Words` 32-bit words from an address aligned to min(16, 4 * Words) bytes, as 16-, 8- or
// 4-byte vector loads.
template <int Words>
struct Raw {
  uint32_t w[Words];
};

template <int Words>
__device__ __forceinline__ Raw<Words> LoadRaw(const void* p) {
  Raw<Words> r;
  if constexpr (Words >= 4) {
    static_assert(Words % 4 == 0, "whole 16-byte vectors");
    const uint4* v = static_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < Words / 4; ++i) {
      const uint4 x = v[i];
      r.w[4 * i] = x.x;
      r.w[4 * i + 1] = x.y;
      r.w[4 * i + 2] = x.z;
      r.w[4 * i + 3] = x.w;
    }
  } else if constexpr (Words == 2) {
    const uint2 x = *static_cast<const uint2*>(p);
    r.w[0] = x.x;
    r.w[1] = x.y;
  } else {
    static_assert(Words == 1, "1, 2 or a multiple of 4 words");
    r.w[0] = *static_cast<const uint32_t*>(p);
  }
  return r;
}

template <int Words>
__device__ __forceinline__ Raw<Words> ZeroRaw() {
  Raw<Words> r;
#pragma unroll
  for (int i = 0; i < Words; ++i) r.w[i] = 0;
  return r;
}

// The element type's view of E values per lane: how many words they take and how to widen them.
template <typename T, int E>
struct Lane;

template <int E>
struct Lane<float, E> {
  static constexpr int kWords = E;
  __device__ static __forceinline__ void ToFloat(const Raw<kWords>& r, float (&out)[E]) {
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = __uint_as_float(r.w[i]);
  }
};

template <int E>
struct Lane<c10::BFloat16, E> {
  static_assert(E % 2 == 0, "bf16 pairs");
  static constexpr int kWords = E / 2;
  // bf16 is the top half of an fp32; element 2i is the low half of word i (little-endian).
  __device__ static __forceinline__ void ToFloat(const Raw<kWords>& r, float (&out)[E]) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      out[2 * i] = __uint_as_float(r.w[i] << 16);
      out[2 * i + 1] = __uint_as_float(r.w[i] & 0xffff0000u);
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Cache write: one block per token, a straight copy of its [kv_heads, head_dim] row (a multiple of 128
// bytes, both ends 16-byte aligned) into the cache row `slot`.
__global__ void __launch_bounds__(256)
    WriteKvKernel(const uint4* __restrict__ k, const uint4* __restrict__ v, const int64_t* __restrict__ slots,
                  uint4* __restrict__ k_cache, uint4* __restrict__ v_cache, int64_t num_slots, int row_vecs) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  // Padding rows (negative) and slots past the cache are skipped; the condition is uniform over the
  // block and no barrier follows.
  if (slot < 0 || slot >= num_slots) return;
  const uint4* ks = k + t * row_vecs;
  const uint4* vs = v + t * row_vecs;
  uint4* kd = k_cache + slot * row_vecs;
  uint4* vd = v_cache + slot * row_vecs;
  for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}

// ---------------------------------------------------------------------------------------------------
// Decode.
struct DecodeArgs {
  const void* q;                // [B, heads, D]
  const void* k_cache;          // [num_blocks, block_size, kv_heads, D]
  const void* v_cache;          // same
  const int32_t* block_tables;  // [B, max_blocks]
  const int32_t* seq_lens;      // [B]
  void* out;                    // [B, heads, D] in q's dtype (written directly when splits == 1)
  float* part_acc;              // [B, heads, splits, D]: unnormalised output of each split
  float* part_ml;               // [B, heads, splits, 2]: the split's running max (base 2) and sum
  int heads, kv_heads, group, head_chunks, max_blocks, block_shift, splits;
  float scale_log2;  // softmax scale * log2(e): scores are kept in base 2 for exp2f
};

// Keys a warp processes per step. More keys put more loads in flight (the kernel is memory-bound) but
// cost registers: q and the accumulators take 2 G E floats per lane, each key E floats of value, G
// scores and its raw key and value words. Aims at about 160 registers so three or more blocks fit an SM.
template <typename T, int D, int G>
constexpr int KeysPerStep() {
  constexpr int e = D / 32;
  constexpr int words = Lane<T, e>::kWords;
  constexpr int by_memory = 64 / (4 * words);  // 64 bytes of key (and as many of value) per lane
  constexpr int budget = 160 - 2 * G * e;
  constexpr int by_registers = budget / (e + G + 2 * words);
  int u = by_memory < by_registers ? by_memory : by_registers;
  if (u > 8) u = 8;
  int p = 1;
  while (p * 2 <= u) p *= 2;
  return p;
}

template <typename T, int D, int G>
__global__ void __launch_bounds__(kThreads) PagedDecodeKernel(const DecodeArgs a) {
  constexpr int E = D / 32;  // elements per lane
  using L = Lane<T, E>;
  constexpr int W = L::kWords;
  constexpr int U = KeysPerStep<T, D, G>();
  __shared__ float red_acc[kWarps][G][D];
  __shared__ float red_m[kWarps][G];
  __shared__ float red_l[kWarps][G];

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int b = blockIdx.x;
  const int kvh = blockIdx.y / a.head_chunks;
  const int chunk = blockIdx.y % a.head_chunks;
  const int split = blockIdx.z;
  const int g = min(G, a.group - chunk * G);  // heads this block serves, 1 .. G
  const int h0 = kvh * a.group + chunk * G;   // its first query head; all read KV head kvh

  // The sequence's length, clamped to what its block-table row addresses (a bad length must not make
  // the table read run past the row). The split's share is an even part of the real length, in whole
  // steps of U keys, so max_seq_len (which chose a.splits) never affects which keys are read.
  const int64_t capacity = static_cast<int64_t>(a.max_blocks) << a.block_shift;
  const int64_t len = min(max(static_cast<int64_t>(a.seq_lens[b]), int64_t{0}), capacity);
  const int64_t share = ((len + a.splits - 1) / a.splits + U - 1) / U * U;
  const int64_t begin = split * share;
  const int64_t end = min(len, begin + share);

  // q for the block's heads, this lane's E elements, pre-multiplied by scale * log2(e).
  float qf[G][E];
  const T* q = static_cast<const T*>(a.q) + (static_cast<int64_t>(b) * a.heads + h0) * D + lane * E;
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h < g) {
      L::ToFloat(LoadRaw<W>(q + h * D), qf[h]);
#pragma unroll
      for (int e = 0; e < E; ++e) qf[h][e] *= a.scale_log2;
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) qf[h][e] = 0.0f;
    }
  }

  float m[G], l[G], acc[G][E];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[h][e] = 0.0f;
  }

  const int32_t* table = a.block_tables + static_cast<int64_t>(b) * a.max_blocks;
  const int64_t block_size = int64_t{1} << a.block_shift;
  const int64_t slot_stride = static_cast<int64_t>(a.kv_heads) * D;  // elements from one slot to the next
  const T* k_rows = static_cast<const T*>(a.k_cache) + static_cast<int64_t>(kvh) * D + lane * E;
  const T* v_rows = static_cast<const T*>(a.v_cache) + static_cast<int64_t>(kvh) * D + lane * E;

  for (int64_t t0 = begin + warp * U; t0 < end; t0 += kWarps * U) {
    // Issue every load of the step before using any: U keys and U values in flight per lane.
    Raw<W> kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t pos = t0 + u;
      if (pos < end) {
        const int64_t slot =
            static_cast<int64_t>(table[pos >> a.block_shift]) * block_size + (pos & (block_size - 1));
        kr[u] = LoadRaw<W>(k_rows + slot * slot_stride);
        vr[u] = LoadRaw<W>(v_rows + slot * slot_stride);
      } else {
        // Keys past the end are never read (the cache there may hold anything, NaN included).
        kr[u] = ZeroRaw<W>();
        vr[u] = ZeroRaw<W>();
      }
    }

    // Scores (base 2) of the U keys for each head: lane partial dots, then a butterfly sum that leaves
    // the total in every lane.
    float s[U][G];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[E];
      L::ToFloat(kr[u], kf);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float dot = 0.0f;
        if (h < g) {
#pragma unroll
          for (int e = 0; e < E; ++e) dot = fmaf(qf[h][e], kf[e], dot);
        }
        s[u][h] = dot;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int h = 0; h < G; ++h) s[u][h] += __shfl_xor_sync(kFullMask, s[u][h], offset);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (t0 + u >= end) {
#pragma unroll
        for (int h = 0; h < G; ++h) s[u][h] = -INFINITY;
      }
    }

    float vf[U][E];
#pragma unroll
    for (int u = 0; u < U; ++u) L::ToFloat(vr[u], vf[u]);

#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= g) continue;
      // Online softmax. Key t0 is always valid, so the new max is finite and exp2f(-inf - max) = 0
      // for the first step's old max and for the keys past the end.
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[u][h]);
      const float alpha = exp2f(m[h] - mx);
      float p[U];
      float sum = 0.0f;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        p[u] = exp2f(s[u][h] - mx);
        sum += p[u];
      }
      l[h] = l[h] * alpha + sum;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        float o = acc[h][e] * alpha;
#pragma unroll
        for (int u = 0; u < U; ++u) o = fmaf(p[u], vf[u][e], o);
        acc[h][e] = o;
      }
      m[h] = mx;
    }
  }

  // Merge the four warps' softmaxes. A warp that saw no key has max -inf, sum 0 and zero accumulators.
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= g) continue;
    if (lane == 0) {
      red_m[warp][h] = m[h];
      red_l[warp][h] = l[h];
    }
#pragma unroll
    for (int e = 0; e < E; ++e) red_acc[warp][h][lane * E + e] = acc[h][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < g * D; i += kThreads) {
    const int h = i / D;
    const int d = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red_m[w][h]);
    float num = 0.0f, den = 0.0f;
    if (mx != -INFINITY) {  // else no key at all: a padding row or an empty split
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(red_m[w][h] - mx);
        num = fmaf(f, red_acc[w][h][d], num);
        den = fmaf(f, red_l[w][h], den);
      }
    }
    const int64_t bh = static_cast<int64_t>(b) * a.heads + h0 + h;
    if (a.splits == 1) {
      static_cast<T*>(a.out)[bh * D + d] = static_cast<T>(den > 0.0f ? num / den : 0.0f);
    } else {
      const int64_t part = bh * a.splits + split;
      a.part_acc[part * D + d] = num;
      if (d == 0) {
        a.part_ml[part * 2] = mx;
        a.part_ml[part * 2 + 1] = den;
      }
    }
  }
}

// Merges the splits of one (sequence, head): one thread per output element.
template <typename T, int D>
__global__ void __launch_bounds__(D)
    MergeSplitsKernel(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                      T* __restrict__ out, int splits) {
  const int64_t bh = blockIdx.x;
  const int d = threadIdx.x;
  const float* ml = part_ml + bh * splits * 2;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
  float num = 0.0f, den = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      const float f = exp2f(ml[2 * s] - mx);  // 0 for an empty split (max -inf)
      num = fmaf(f, part_acc[(bh * splits + s) * D + d], num);
      den = fmaf(f, ml[2 * s + 1], den);
    }
  }
  out[bh * D + d] = static_cast<T>(den > 0.0f ? num / den : 0.0f);
}

template <typename T, int D, int G>
void LaunchDecode(DecodeArgs a, int64_t batch, const at::Tensor& out, const at::Tensor& part_acc) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(a.kv_heads * a.head_chunks),
                  static_cast<unsigned>(a.splits));
  PagedDecodeKernel<T, D, G><<<grid, kThreads, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (a.splits > 1) {
    MergeSplitsKernel<T, D><<<static_cast<unsigned>(batch * a.heads), D, 0, stream>>>(
        part_acc.data_ptr<float>(), a.part_ml, out.data_ptr<T>(), a.splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T, int D>
void DispatchGroup(int group_tile, DecodeArgs a, int64_t batch, const at::Tensor& out,
                   const at::Tensor& part_acc) {
  switch (group_tile) {
    case 1:
      return LaunchDecode<T, D, 1>(a, batch, out, part_acc);
    case 2:
      return LaunchDecode<T, D, 2>(a, batch, out, part_acc);
    case 4:
      return LaunchDecode<T, D, 4>(a, batch, out, part_acc);
    case 6:
      return LaunchDecode<T, D, 6>(a, batch, out, part_acc);
    default:
      return LaunchDecode<T, D, 8>(a, batch, out, part_acc);
  }
}

template <typename T>
void DispatchHeadDim(int64_t head_dim, int group_tile, DecodeArgs a, int64_t batch, const at::Tensor& out,
                     const at::Tensor& part_acc) {
  switch (head_dim) {
    case 64:
      return DispatchGroup<T, 64>(group_tile, a, batch, out, part_acc);
    case 128:
      return DispatchGroup<T, 128>(group_tile, a, batch, out, part_acc);
    default:
      TORCH_CHECK(head_dim == 256, "paged decode: head_dim ", head_dim, " has no kernel");
      return DispatchGroup<T, 256>(group_tile, a, batch, out, part_acc);
  }
}

// Heads per block: the group itself when it fits a kernel's tile (1, 2, 4, 6 or 8), else the next tile
// up with its extra heads idle; groups over 8 are cut into chunks of 8.
int GroupTile(int64_t group) {
  for (int tile : {1, 2, 4, 6, 8}) {
    if (group <= tile) return tile;
  }
  return 8;
}

// Rows of q are 128-byte multiples, so a 16-byte aligned start aligns every row for the vector loads;
// a view at an odd offset is copied (a fresh allocation is aligned).
at::Tensor Aligned16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

}  // namespace

bool FlashAttentionAvailable(const at::Tensor& q) {
  const at::ScalarType dtype = q.scalar_type();
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  const c10::cuda::CUDAGuard device(q.device());
  return at::cuda::getCurrentDeviceProperties()->major >= 8;
}

void WriteKvCacheCuda(const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                      at::Tensor& k_cache, at::Tensor& v_cache) {
  const c10::cuda::CUDAGuard device(k_cache.device());
  const int64_t tokens = k.size(0);
  const int64_t row_bytes = k.size(1) * k.size(2) * k.element_size();  // head_dim in {64, 128, 256}
  TORCH_CHECK(row_bytes % 16 == 0, "WriteKvCache: row of ", row_bytes, " bytes is not whole vectors");
  const at::Tensor ka = Aligned16(k), va = Aligned16(v);
  const int row_vecs = static_cast<int>(row_bytes / 16);
  const int threads = std::min(256, (row_vecs + 31) / 32 * 32);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  WriteKvKernel<<<static_cast<unsigned>(tokens), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const uint4*>(ka.data_ptr()), static_cast<const uint4*>(va.data_ptr()),
      slot_mapping.data_ptr<int64_t>(), static_cast<uint4*>(k_cache.data_ptr()),
      static_cast<uint4*>(v_cache.data_ptr()), num_slots, row_vecs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor PagedDecodeCuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                           const at::Tensor& block_tables, const at::Tensor& seq_lens, float scale,
                           int64_t max_seq_len) {
  const c10::cuda::CUDAGuard device(q.device());
  const int64_t batch = q.size(0), heads = q.size(1), head_dim = q.size(2);
  const int64_t kv_heads = k_cache.size(2), block_size = k_cache.size(1);
  const int64_t group = heads / kv_heads;
  const int group_tile = GroupTile(group);
  const int64_t head_chunks = (group + group_tile - 1) / group_tile;
  TORCH_CHECK(kv_heads * head_chunks <= 65535, "paged decode: too many KV heads for the grid");

  // Split the keys until about kTargetBlocksPerSm blocks per SM are busy, but never below
  // kMinKeysPerSplit keys a split for the longest sequence.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t base_blocks = batch * kv_heads * head_chunks;
  const int64_t want = (kTargetBlocksPerSm * sms + base_blocks - 1) / base_blocks;
  const int64_t by_length = (max_seq_len + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
  const int64_t splits = std::max<int64_t>(1, std::min({want, by_length, kMaxSplits}));

  const at::Tensor qa = Aligned16(q);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor part_acc, part_ml;
  if (splits > 1) {
    const at::TensorOptions f32 = q.options().dtype(at::kFloat);
    part_acc = at::empty({batch, heads, splits, head_dim}, f32);
    part_ml = at::empty({batch, heads, splits, 2}, f32);
  }

  DecodeArgs a;
  a.q = qa.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.seq_lens = seq_lens.data_ptr<int32_t>();
  a.out = out.data_ptr();
  a.part_acc = splits > 1 ? part_acc.data_ptr<float>() : nullptr;
  a.part_ml = splits > 1 ? part_ml.data_ptr<float>() : nullptr;
  a.heads = static_cast<int>(heads);
  a.kv_heads = static_cast<int>(kv_heads);
  a.group = static_cast<int>(group);
  a.head_chunks = static_cast<int>(head_chunks);
  a.max_blocks = static_cast<int>(block_tables.size(1));
  int shift = 0;
  while ((int64_t{1} << shift) < block_size) ++shift;
  a.block_shift = shift;
  a.splits = static_cast<int>(splits);
  a.scale_log2 = scale * kLog2e;

  if (q.scalar_type() == at::kBFloat16) {
    DispatchHeadDim<c10::BFloat16>(head_dim, group_tile, a, batch, out, part_acc);
  } else {
    DispatchHeadDim<float>(head_dim, group_tile, a, batch, out, part_acc);
  }
  return out;
}

}  // namespace deltaserve::kernels::internal
