// Fused CUDA chunked prefill of the gated delta rule: three launches, fp32-accurate products on tensor cores.
//  1. Prepare, one block per (chunk, value head), all chunks of all sequences at once: loads the chunk's
//     q and k (normalised, scaled) and the cumulative log decay G; forms the intra-chunk scores
//     Q K^T e^(G_i - G_j) and A = beta K K^T e^(G_i - G_j); inverts (I + A) in shared memory with the
//     selected method (forward substitution, truncated Neumann with band mask, corrections and the
//     accuracy guard, or the product form); writes W = T (beta e^G K), U = T (beta V), e^(G_C - G) K,
//     scale e^G Q, the scores and e^(G_C).
//  2. State pass, one block per (sequence, value head, BV value columns), the only sequential part (the
//     next chunk's W, Kd and U arrive by cp.async while this one is multiplied):
//     chunk after chunk V' = U - W S and S = e^(G_C) S + (e^(G_C - G) K)^T V', storing V' and the
//     chunk's starting S.
//  3. Output, one block per (chunk, value head, BV value columns): O = (scale e^G Q) S + scores V'.
// Same formulation as the ATen composition in chunk_gated_delta_rule.cc (its comment derives it).
// Products are 16 x 16 tiles per warp on tensor cores (WMMA, TF32 m16n16k8), for float32 inputs in the
// 3xTF32 split (a_hi b_hi + a_hi b_lo + a_lo b_hi): float32 accuracy at tensor-core speed; for bfloat16
// inputs as one TF32 product (FLA's precision class: low-precision operands, float32 accumulation). Forward
// substitution, norms and masks run on CUDA cores. For bfloat16 inputs the workspace between the passes is
// bfloat16 and the state and output passes are gdn_prefill_bf16_passes_cuda.cu's, on bf16 tensor cores;
// float32 inputs keep a float32 workspace and the passes below. Shared-memory matrices have leading dimensions of cols + 4
// floats: 16-byte aligned rows for vector stores and WMMA, rows shifted by four banks.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "../src/chunk_gated_delta_rule_cuda.h"
#include "../src/state_quant.h"
#include "gdn_prefill_common.cuh"
#include "gdn_prefill_prepare.cuh"

namespace deltaserve::kernels::internal {
namespace {

using namespace gdn;  // NOLINT: the prefill kernels' shared pieces

using Acc = AccTf32;

// Rows [0, rows) of x (leading dimension ld, `d` used columns) times scale / ||row|| (eps 1e-6 inside
// the square root, as Qwen3.5), or times scale alone. One warp per row.
__device__ inline void NormalizeRows(float* x, int rows, int d, int ld, bool l2norm, float scale) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = warp; i < rows; i += kWarps) {
    float f = scale;
    if (l2norm) {
      float ss = 0.0f;
      for (int c = lane; c < d; c += 32) ss += x[i * ld + c] * x[i * ld + c];
      for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
      f *= rsqrtf(ss + 1e-6f);
    }
    for (int c = lane; c < d; c += 32) x[i * ld + c] *= f;
  }
}

// Row i of the chunk starting at token tok0 in a [tokens, heads, d] tensor, head `head`; null (zero) at
// or past `valid`, the padding of a sequence's last chunk (no decay, no write).
template <typename In>
__device__ inline auto TokenRows(const In* src, int64_t tok0, int valid, int heads, int head, int d) {
  return [=](int i) -> const In* { return i < valid ? src + ((tok0 + i) * heads + head) * d : nullptr; };
}


// C = A B as WarpMatmul does, written to global memory in T: for a float32 c straight from the
// accumulators, for bfloat16 through a float32 16 x 16 tile per warp in shared `staging` (kStagingFloats),
// each lane converting eight values of one row into one 16-byte store.
constexpr int kStagingLd = 16 + kPad;
constexpr int kStagingFloats = kWarps * 16 * kStagingLd;
template <bool kSplit, typename LA, typename LB, typename T>
__device__ inline void WarpMatmulOut(int m, int n, int k, const float* a, int lda, const float* b, int ldb, T* c,
                                     int ldc, float* staging) {
  if constexpr (std::is_same<T, float>::value) {
    WarpMatmul<kSplit, LA, LB>(m, n, k, a, lda, b, ldb, c, ldc);
  } else {
    const int tiles_n = n / 16, tiles = (m / 16) * tiles_n, lane = threadIdx.x % 32;
    float* st = staging + threadIdx.x / 32 * 16 * kStagingLd;
    for (int tile = threadIdx.x / 32; tile < tiles; tile += kWarps) {
      const int i0 = tile / tiles_n * 16, j0 = tile % tiles_n * 16;
      Acc acc;
      wmma::fill_fragment(acc, 0.0f);
      MmaTile<kSplit, LA, LB>(acc, a, lda, b, ldb, i0, j0, k);
      wmma::store_matrix_sync(st, acc, kStagingLd, wmma::mem_row_major);
      __syncwarp();
      StoreRow8(c + (i0 + lane / 2) * ldc + j0 + lane % 2 * 8, st + (lane / 2) * kStagingLd + lane % 2 * 8);
      __syncwarp();
    }
  }
}


// kSplit: 3xTF32 products (float32 inputs); one TF32 product for bfloat16 inputs.
// The workspace type T: float32 for float32 inputs, bfloat16 for bfloat16 inputs (WsType).
// Blocks are numbered chunk-major, head-minor: the value heads that share a key head (GQA) run side by
// side and find its q and k in L2.
template <typename In>
using WsType = typename std::conditional<std::is_same<In, float>::value, float, __nv_bfloat16>::type;
template <typename In, class D, bool kSplit = std::is_same<In, float>::value, typename T = WsType<In>>
__global__ void __launch_bounds__(kThreads) PrepareKernel(PrepareArgs<T> p) {
  extern __shared__ __align__(128) float smem[];
  const int64_t id = blockIdx.x / p.heads;
  const int h = blockIdx.x % p.heads, hk = h / p.group, c = D::c(p.c), dk = D::dk(p.dk), dv = D::dv(p.dv);
  ChunkTokens chunk;
  if (!FindChunk(p.offsets, p.n, c, id, &chunk)) return;
  const int64_t tok0 = chunk.tok0;
  const int valid = chunk.valid;
  const int ldk = dk + kPad, ldx = max(dk, dv) + kPad, ldc = c + kPad;
  float* sk = smem;          // [c, ldk]: k, later beta e^G k
  float* sx = sk + c * ldk;  // [c, ldx]: q, later beta v
  float* sa = sx + c * ldx;  // [c, ldc]: A
  // [c, ldc] buffers: the scores, then the inverse's scratch (one for forward substitution, three for the
  // matmul-only methods: PrepareSharedFloats sizes them).
  float* b0 = sa + c * ldc;
  float* b1 = b0 + c * ldc;
  float* b2 = b1 + c * ldc;
  float* sg = (p.inverse.method == 0 ? b1 : b2 + c * ldc);  // [c]: cumulative log decay
  float* sb = sg + c;                                       // [c]: beta
  float* scratch = sb + c;                                  // [kWarps]

  const In* q = static_cast<const In*>(p.q);
  const In* k = static_cast<const In*>(p.k);
  const In* v = static_cast<const In*>(p.v);
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    sg[i] = i < valid ? p.g[(tok0 + i) * p.heads + h] : 0.0f;
    sb[i] = i < valid ? p.beta[(tok0 + i) * p.heads + h] : 0.0f;
  }
  LoadTile(sk, ldk, c, dk, TokenRows(k, tok0, valid, p.key_heads, hk, dk));
  LoadTile(sx, ldx, c, dk, TokenRows(q, tok0, valid, p.key_heads, hk, dk));
  __syncthreads();
  if (threadIdx.x < 32) InclusiveScan64(sg, c);
  NormalizeRows(sk, c, dk, ldk, p.l2norm, 1.0f);
  NormalizeRows(sx, c, dk, ldx, p.l2norm, p.scale);
  __syncthreads();
  const int64_t cell = id * p.heads + h;
  const float g_last = sg[c - 1];
  if (threadIdx.x == 0) p.ws.decay[cell] = __expf(g_last);
  // What the state pass and the output pass read: e^(G_C - G) k and scale e^G q.
  // Eight columns a thread: one 16-byte store of bfloat16 (two of float32).
  T* kd = p.ws.kd + cell * c * dk;
  T* qe = p.ws.qe + cell * c * dk;
  for (int idx = threadIdx.x; idx < c * dk / 8; idx += blockDim.x) {
    const int i = idx / (dk / 8), col = idx % (dk / 8) * 8;
    const float fk = __expf(g_last - sg[i]), fq = __expf(sg[i]);
    float xk[8], xq[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      xk[e] = sk[i * ldk + col + e] * fk;
      xq[e] = sx[i * ldx + col + e] * fq;
    }
    StoreRow8(kd + i * dk + col, xk);
    StoreRow8(qe + i * dk + col, xq);
  }
  // Q K^T into b0 and K K^T into sa; then the scores Q K^T e^(G_i - G_j) on and below the diagonal go out,
  // and A = beta_i K K^T e^(G_i - G_j) below it stays.
  WarpMatmul<kSplit, RowMajor, ColMajor>(c, c, dk, sx, ldx, sk, ldk, b0, ldc);
  WarpMatmul<kSplit, RowMajor, ColMajor>(c, c, dk, sk, ldk, sk, ldk, sa, ldc);
  __syncthreads();
  T* scores = p.ws.scores + cell * c * c;
  for (int idx = threadIdx.x; idx < c * c / 8; idx += blockDim.x) {
    const int i = idx / (c / 8), j0 = idx % (c / 8) * 8;
    float x[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int j = j0 + e;
      const float decay = j <= i ? __expf(sg[i] - sg[j]) : 0.0f;
      x[e] = b0[i * ldc + j] * decay;
      sa[i * ldc + j] = j < i ? sa[i * ldc + j] * sb[i] * decay : 0.0f;
    }
    StoreRow8(scores + i * c + j0, x);
  }
  // k -> beta e^G k for W; q's buffer -> beta v for U.
  for (int idx = threadIdx.x; idx < c * dk; idx += blockDim.x) {
    const int i = idx / dk;
    sk[i * ldk + idx % dk] *= sb[i] * __expf(sg[i]);
  }
  __syncthreads();
  LoadTile(sx, ldx, c, dv, TokenRows(v, tok0, valid, p.heads, h, dv));
  __syncthreads();
  for (int idx = threadIdx.x; idx < c * dv; idx += blockDim.x)
    sx[(idx / dv) * ldx + idx % dv] *= sb[idx / dv];
  float* t = InvertChunk<kSplit>(sa, b0, b1, b2, c, ldc, p.inverse, scratch, p.guard_counters);
  __syncthreads();
  // A is free now: a bfloat16 workspace's staging tiles go there, or past the scratch where A is smaller
  // (PrepareSharedFloats adds the room).
  float* staging = c * ldc >= kStagingFloats ? sa : scratch + kWarps;
  WarpMatmulOut<kSplit, RowMajor, RowMajor>(c, dk, c, t, ldc, sk, ldk, p.ws.w + cell * c * dk, dk, staging);
  WarpMatmulOut<kSplit, RowMajor, RowMajor>(c, dv, c, t, ldc, sx, ldx, p.ws.u + cell * c * dv, dv, staging);
}

// The only sequential pass: per (sequence, value head, BV value columns), chunk after chunk,
// V' = U - W S and S = e^(G_C) S + Kd^T V', storing each chunk's V' and its starting S for the output pass.
// W, Kd and U are double-buffered: the next chunk's arrive by cp.async while this chunk is multiplied.
// Blocks are numbered (sequence, head, column block) with the column block fastest: the dv / BV blocks of
// one head read the same W and Kd at about the same time, so all but the first find them in L2.
// Float32 inputs only, as the output pass: 3xTF32 products.
template <int BV, class D>
__global__ void __launch_bounds__(kThreads) StateKernel(PassArgs<float> p) {
  constexpr bool kSplit = true;
  extern __shared__ __align__(128) float smem[];
  const int c = D::c(p.c), dk = D::dk(p.dk), dv = D::dv(p.dv), ldk = dk + kPad, lds = BV + kPad;
  const int col_blocks = dv / BV, j0 = blockIdx.x % col_blocks * BV;
  const int h = blockIdx.x / col_blocks % p.heads, seq = blockIdx.x / col_blocks / p.heads;
  float* ss = smem;               // [dk, lds]: the state slice
  float* stages = ss + dk * lds;  // two stages of: W [c, ldk], e^(G_C - G) k [c, ldk], U then V' [c, lds]
  const int stage_floats = 2 * c * ldk + c * lds;
  LoadInitialSlice(ss, lds, p, seq, h, j0, BV, dk, dv);
  __syncthreads();
  int64_t first, chunks;
  SequenceChunks(p.offsets, seq, c, &first, &chunks);
  auto prefetch = [&](int64_t ci) {
    const int64_t cell = (first + ci) * p.heads + h;
    float* sw = stages + (ci & 1) * stage_floats;
    const float* w = p.ws.w + cell * c * dk;
    const float* kd = p.ws.kd + cell * c * dk;
    const float* u = p.ws.u + cell * c * dv + j0;
    LoadTileAsync(sw, ldk, c, dk, [w, dk](int i) { return w + i * dk; });
    LoadTileAsync(sw + c * ldk, ldk, c, dk, [kd, dk](int i) { return kd + i * dk; });
    LoadTileAsync(sw + 2 * c * ldk, lds, c, BV, [u, dv](int i) { return u + i * dv; });
    AsyncCommit();
  };
  if (chunks > 0) prefetch(0);
  for (int64_t ci = 0; ci < chunks; ++ci) {
    // The next chunk's stage was last read two iterations ago, before the barrier that ended it.
    if (ci + 1 < chunks) {
      prefetch(ci + 1);
      AsyncWait<1>();
    } else {
      AsyncWait<0>();
    }
    __syncthreads();
    const int64_t cell = (first + ci) * p.heads + h;
    float* sw = stages + (ci & 1) * stage_floats;
    float* sk = sw + c * ldk;
    float* sv = sk + c * ldk;
    const float decay = p.ws.decay[cell];
    // This chunk's starting state, for the output pass.
    float* s_out = p.ws.states + cell * dk * dv + j0;
    for (int idx = threadIdx.x; idx < dk * BV; idx += blockDim.x) {
      s_out[(idx / BV) * dv + idx % BV] = ss[(idx / BV) * lds + idx % BV];
    }
    // V' = U - W S, in place of U (each warp owns its tiles), also stored for the output pass.
    WarpMatmul<kSplit, RowMajor, RowMajor>(c, BV, dk, sw, ldk, ss, lds, sv, lds, /*accumulate=*/true, 1.0f,
                                           -1.0f);
    __syncthreads();
    float* vn = p.ws.vn + cell * c * dv + j0;
    for (int idx = threadIdx.x; idx < c * BV; idx += blockDim.x)
      vn[(idx / BV) * dv + idx % BV] = sv[(idx / BV) * lds + idx % BV];
    // S = e^(G_C) S + Kd^T V'.
    WarpMatmul<kSplit, ColMajor, RowMajor>(dk, BV, c, sk, ldk, sv, lds, ss, lds, /*accumulate=*/true, decay);
    __syncthreads();
  }
  for (int idx = threadIdx.x; idx < dk * BV; idx += blockDim.x) {
    StoreFinalState(p, seq, h, idx / BV, j0 + idx % BV, dk, dv, ss[(idx / BV) * lds + idx % BV]);
  }
}

// Output, all chunks at once: per (chunk, value head, BV value columns), O = Qe S + scores V'.
// Blocks are numbered (chunk, head, column block) with the column block fastest, so the blocks of one
// (chunk, head) share its Qe and scores through L2.
// Float32 inputs only (bfloat16 inputs take gdn_prefill_bf16_passes_cuda.cu): 3xTF32 products, float32 output.
template <int BV, class D>
__global__ void __launch_bounds__(kThreads) OutputKernel(PassArgs<float> p) {
  constexpr bool kSplit = true;
  extern __shared__ __align__(128) float smem[];
  const int c = D::c(p.c), dk = D::dk(p.dk), dv = D::dv(p.dv), ldk = dk + kPad, ldc = c + kPad, lds = BV + kPad;
  const int col_blocks = dv / BV, j0 = static_cast<int>(blockIdx.x % col_blocks) * BV;
  const int h = static_cast<int>(blockIdx.x / col_blocks % p.heads);
  const int64_t id = blockIdx.x / col_blocks / p.heads;
  ChunkTokens chunk;
  if (!FindChunk(p.offsets, p.n, c, id, &chunk)) return;
  const int64_t tok0 = chunk.tok0;
  const int valid = chunk.valid;
  float* sq = smem;           // [c, ldk]: Qe
  float* ss = sq + c * ldk;   // [dk, lds]: the chunk's starting state
  float* sp = ss + dk * lds;  // [c, ldc]: scores
  float* sv = sp + c * ldc;   // [c, lds]: V'
  float* so = sv + c * lds;   // [c, lds]: O
  const int64_t cell = id * p.heads + h;
  const float* qe = p.ws.qe + cell * c * dk;
  const float* st = p.ws.states + cell * dk * dv + j0;
  const float* sc = p.ws.scores + cell * c * c;
  const float* vn = p.ws.vn + cell * c * dv + j0;
  LoadTile(sq, ldk, c, dk, [qe, dk](int i) { return qe + i * dk; });
  LoadTile(ss, lds, dk, BV, [st, dv](int i) { return st + i * dv; });
  LoadTile(sp, ldc, c, c, [sc, c](int i) { return sc + i * c; });
  LoadTile(sv, lds, c, BV, [vn, dv](int i) { return vn + i * dv; });
  __syncthreads();
  const int tiles_n = BV / 16, tiles = (c / 16) * tiles_n;
  for (int tile = threadIdx.x / 32; tile < tiles; tile += kWarps) {
    const int i0 = tile / tiles_n * 16, jt = tile % tiles_n * 16;
    Acc acc;
    wmma::fill_fragment(acc, 0.0f);
    MmaTile<kSplit, RowMajor, RowMajor>(acc, sq, ldk, ss, lds, i0, jt, dk);
    MmaTile<kSplit, RowMajor, RowMajor>(acc, sp, ldc, sv, lds, i0, jt, c);
    wmma::store_matrix_sync(so + i0 * lds + jt, acc, lds, wmma::mem_row_major);
  }
  __syncthreads();
  float* o = static_cast<float*>(p.o);
  for (int idx = threadIdx.x; idx < valid * BV; idx += blockDim.x) {
    const int i = idx / BV, j = idx % BV;
    o[((tok0 + i) * p.heads + h) * dv + j0 + j] = so[i * lds + j];
  }
}

InverseParams ToParams(const TriInverseOptions& o, int64_t c) {
  InverseParams p{};
  p.order = o.order;
  p.band = o.band;
  p.residual_steps = o.residual_steps;
  p.guard_tol = static_cast<float>(o.guard_tol);
  switch (o.method) {
    case TriInverseMethod::kNeumann: {
      p.method = 1;
      // As tri_inverse.cc: no guard once the corrections' exact band covers the chunk in full precision.
      const int64_t exact_start = o.band > 0 ? std::min<int64_t>(o.band, o.order + 1) : o.order + 1;
      p.guard = o.guard_tol > 0 && (exact_start << o.residual_steps) < c;
      break;
    }
    case TriInverseMethod::kProductForm:
      p.method = 2;
      break;
    default:
      p.method = 0;
      break;
  }
  return p;
}

// Shared memory of the prepare pass: k, q/v, A and the inverse's buffers (two fewer for forward
// substitution, which lets two blocks share an SM at C = 64, d = 128), G, beta, a reduction scratch.
// A bfloat16 workspace also needs kStagingFloats for WarpMatmulOut's tiles: A's buffer where it is as large
// (C = 64), else room past the scratch.
int64_t PrepareSharedFloats(int64_t c, int64_t dk, int64_t dv, int method, bool bf16_workspace) {
  const int64_t square_buffers = method == 0 ? 2 : 4;
  const int64_t staging = bf16_workspace && c * (c + kPad) < kStagingFloats ? kStagingFloats : 0;
  return c * (dk + kPad) + c * (std::max(dk, dv) + kPad) + square_buffers * c * (c + kPad) + 2 * c + kWarps +
         staging;
}

// The pool as the state passes address it (values in its storage type, scales, the sequences' slots).
PoolRef PoolRefOf(RecurrentStatePool& pool, const at::Tensor& slots) {
  PoolRef r;
  switch (pool.dtype) {
    case StateDtype::kFloat32:
      r.kind = PoolKind::kFloat32;
      break;
    case StateDtype::kBFloat16:
      r.kind = PoolKind::kBFloat16;
      break;
    case StateDtype::kFloat8E4M3:
      r.kind = PoolKind::kFloat8;
      break;
    default:
      r.kind = PoolKind::kInt8;  // every INT8 variant stores int8 values and per-row float32 scales
      break;
  }
  r.values = pool.values.data_ptr();
  r.scales = IsScaled(pool.dtype) ? pool.scales.data_ptr<float>() : nullptr;
  r.slots = slots.data_ptr<int64_t>();
  return r;
}

template <typename Kernel>
void AllowSharedMemory(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <typename In, class D>
GatedDeltaRuleOutput Run(const FusedPrefillArgs& a) {
  using T = WsType<In>;
  constexpr bool kFloat = std::is_same<In, float>::value;
  const int64_t b = a.q.size(0), t = a.q.size(1), hk = a.q.size(2), dk = a.q.size(3);
  const int64_t hv = a.v.size(2), dv = a.v.size(3), c = a.chunk_size;
  const int64_t n = static_cast<int64_t>(a.offsets.size()) - 1;
  int64_t chunks = 0;
  for (int64_t s = 0; s < n; ++s) chunks += (a.offsets[s + 1] - a.offsets[s] + c - 1) / c;
  const at::TensorOptions f32 = a.v.options().dtype(at::kFloat);
  GatedDeltaRuleOutput out;
  out.o = at::empty({b, t, hv, dv}, a.v.options());
  // In the pool, float32 and bf16 states go straight to their slots; scaled ones through a dense copy that
  // one more launch quantizes (a row's scale needs the whole row, which the column blocks split).
  const bool in_pool = a.pool != nullptr, quantize = in_pool && IsScaled(a.pool->dtype);
  if (!in_pool || quantize) out.final_state = at::empty({n, hv, dk, dv}, f32);
  out.inverse_stats.chunks = chunks * hv;
  const int64_t cells = std::max<int64_t>(chunks, 1) * hv;
  // The fused state-and-output pass keeps each chunk's starting state and V' on chip.
  const bool fused_output = !kFloat && D::kStatic && FusedOutputPass();
  const int64_t per_cell = 3 * c * dk + c * dv + c * c + (fused_output ? 0 : dk * dv + c * dv);
  at::Tensor workspace = at::empty({cells * per_cell}, a.v.options().dtype(kFloat ? at::kFloat : at::kBFloat16));
  at::Tensor decay = at::empty({cells}, f32);
  at::Tensor counters = at::zeros({2}, a.v.options().dtype(at::kInt));
  Workspace<T> ws;
  T* next = static_cast<T*>(workspace.data_ptr());
  auto take = [&](int64_t per) {
    T* p = next;
    next += cells * per;
    return p;
  };
  // Each a multiple of 16 elements per cell: every row stays 16-byte aligned.
  ws.states = fused_output ? nullptr : take(dk * dv);
  ws.w = take(c * dk);
  ws.kd = take(c * dk);
  ws.qe = take(c * dk);
  ws.u = take(c * dv);
  ws.vn = fused_output ? nullptr : take(c * dv);
  ws.scores = take(c * c);
  ws.decay = decay.data_ptr<float>();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (chunks > 0) {
    PrepareArgs<T> p{};
    p.q = a.q.data_ptr();
    p.k = a.k.data_ptr();
    p.v = a.v.data_ptr();
    p.g = a.g.data_ptr<float>();
    p.beta = a.beta.data_ptr<float>();
    p.offsets = a.device_offsets.data_ptr<int64_t>();
    p.ws = ws;
    p.guard_counters = counters.data_ptr<int>();
    p.n = static_cast<int>(n);
    p.key_heads = static_cast<int>(hk);
    p.heads = static_cast<int>(hv);
    p.group = static_cast<int>(hv / hk);
    p.dk = static_cast<int>(dk);
    p.dv = static_cast<int>(dv);
    p.c = static_cast<int>(c);
    p.l2norm = a.l2norm_qk;
    p.scale = a.scale;
    p.inverse = ToParams(a.inverse, c);
    if constexpr (!kFloat && D::kStatic) {
      // Qwen3.5's shape with bf16 inputs: the bf16 tensor-core prepare (gdn_prefill_bf16_prepare_cuda.cu).
      LaunchBf16Prepare(p, chunks * hv, stream);
    } else {
      const size_t bytes = sizeof(float) * PrepareSharedFloats(c, dk, dv, p.inverse.method, !kFloat);
      AllowSharedMemory(PrepareKernel<In, D>, bytes);
      PrepareKernel<In, D><<<static_cast<unsigned>(chunks * hv), kThreads, bytes, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (n > 0) {
    PassArgs<T> s{};
    s.offsets = a.device_offsets.data_ptr<int64_t>();
    s.ws = ws;
    s.initial_state = a.initial_state.defined() && !in_pool ? a.initial_state.data_ptr<float>() : nullptr;
    s.final_state = out.final_state.defined() ? out.final_state.data_ptr<float>() : nullptr;
    if (in_pool) s.pool = PoolRefOf(*a.pool, a.slots);
    s.o = out.o.data_ptr();
    s.n = static_cast<int>(n);
    s.heads = static_cast<int>(hv);
    s.dk = static_cast<int>(dk);
    s.dv = static_cast<int>(dv);
    s.c = static_cast<int>(c);
    if constexpr (!kFloat) {
      LaunchBf16Passes(s, chunks, D::kStatic, fused_output, stream);
    } else {
      auto passes = [&](auto state_kernel, auto output_kernel, int64_t bv) {
        const size_t state_bytes =
            sizeof(float) * (dk * (bv + kPad) + 2 * (2 * c * (dk + kPad) + c * (bv + kPad)));
        AllowSharedMemory(state_kernel, state_bytes);
        const int64_t blocks = dv / bv;
        state_kernel<<<static_cast<unsigned>(n * hv * blocks), kThreads, state_bytes, stream>>>(s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (chunks == 0) return;
        const size_t output_bytes =
            sizeof(float) * (c * (dk + kPad) + dk * (bv + kPad) + c * (c + kPad) + 2 * c * (bv + kPad));
        AllowSharedMemory(output_kernel, output_bytes);
        output_kernel<<<static_cast<unsigned>(chunks * hv * blocks), kThreads, output_bytes, stream>>>(s);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if constexpr (D::kStatic) {
        static_assert(D::dv(0) % 32 == 0, "static shapes take 32 value columns a block");
        passes(StateKernel<32, D>, OutputKernel<32, D>, 32);
      } else if (dv % 32 == 0) {
        passes(StateKernel<32, D>, OutputKernel<32, D>, 32);
      } else {
        passes(StateKernel<16, D>, OutputKernel<16, D>, 16);
      }
    }
    if (quantize) {
      LaunchQuantizeIntoPool(s.final_state, s.n, s.heads, s.dk, s.dv, s.pool, IsCoarse(a.pool->dtype),
                             QuantMax(a.pool->dtype), stream);
      out.final_state = at::Tensor();  // the states are in the pool
    }
  }
  if (a.read_inverse_stats) {
    at::Tensor host = counters.cpu();
    const int* v = host.data_ptr<int>();
    out.inverse_stats.fallbacks = v[0];
    float residual;
    std::memcpy(&residual, &v[1], sizeof(residual));
    out.inverse_stats.max_residual = residual;
  }
  return out;
}

}  // namespace

bool FusedPrefillSupports(const at::Tensor& q, const at::Tensor& v, const GatedDeltaRuleOptions& o) {
  if (!q.is_cuda() || (v.scalar_type() != at::kFloat && v.scalar_type() != at::kBFloat16)) return false;
  const int64_t dk = q.size(3), dv = v.size(3), c = o.chunk_size;
  auto dim_ok = [](int64_t d) { return d >= 16 && d <= 128 && d % 16 == 0; };
  if (!dim_ok(dk) || !dim_ok(dv) || (c != 16 && c != 32 && c != 64)) return false;
  if (o.inverse.matmul_bits != 32) return false;
  return o.inverse.method == TriInverseMethod::kForwardSubstitution ||
         o.inverse.method == TriInverseMethod::kNeumann || o.inverse.method == TriInverseMethod::kProductForm;
}

GatedDeltaRuleOutput ChunkGatedDeltaRuleCuda(const FusedPrefillArgs& args) {
  // Launches, the current stream and the SM count on the inputs' GPU, which need not be the current one
  // (--device cuda:1).
  const c10::cuda::CUDAGuard guard(args.q.device());
  const bool qwen = args.chunk_size == 64 && args.q.size(3) == 128 && args.v.size(3) == 128;
  if (args.v.scalar_type() == at::kBFloat16) {
    return qwen ? Run<c10::BFloat16, QwenDims>(args) : Run<c10::BFloat16, RunTimeDims>(args);
  }
  return qwen ? Run<float, QwenDims>(args) : Run<float, RunTimeDims>(args);
}

}  // namespace deltaserve::kernels::internal
