// What the two prepare passes of the fused chunked prefill share (the general one in
// chunk_gated_delta_rule_cuda.cu, the bf16 one at Qwen3.5's shape in gdn_prefill_bf16_prepare_cuda.cu):
// TF32 tile products, the in-kernel chunk inverse with its accuracy guard, and the prepare's arguments.
#ifndef DELTASERVE_KERNELS_CUDA_GDN_PREFILL_PREPARE_CUH_
#define DELTASERVE_KERNELS_CUDA_GDN_PREFILL_PREPARE_CUH_

#include <mma.h>

#include <type_traits>

#include "gdn_prefill_common.cuh"

namespace deltaserve::kernels::internal::gdn {

using AccTf32 = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

template <typename Frag>
__device__ inline void SplitTf32(Frag& hi, Frag& lo, float sign) {
#pragma unroll
  for (int t = 0; t < hi.num_elements; ++t) {
    const float x = sign * hi.x[t];
    hi.x[t] = wmma::__float_to_tf32(x);
    lo.x[t] = wmma::__float_to_tf32(x - hi.x[t]);
  }
}

// acc += sign * A[i0:i0+16, 0:k] B[0:k, j0:j0+16]: in 3xTF32 with kSplit (float32 accuracy), else one
// TF32 product (10-bit operands, float32 accumulation: for bfloat16 inputs, whose 8-bit mantissas it
// holds exactly). RowMajor A: element (i, kk) at a[i * lda + kk]; ColMajor A: at a[kk * lda + i] (A is
// the transpose of what is stored). Same for B with (kk, j).
template <bool kSplit, typename LA, typename LB>
__device__ inline void MmaTile(AccTf32& acc, const float* a, int lda, const float* b, int ldb, int i0, int j0,
                               int k, float sign = 1.0f) {
  constexpr bool a_row = std::is_same<LA, RowMajor>::value;
  constexpr bool b_row = std::is_same<LB, RowMajor>::value;
  for (int kk = 0; kk < k; kk += 8) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> ah, al;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> bh, bl;
    wmma::load_matrix_sync(ah, a_row ? a + i0 * lda + kk : a + kk * lda + i0, lda);
    wmma::load_matrix_sync(bh, b_row ? b + kk * ldb + j0 : b + j0 * ldb + kk, ldb);
    if constexpr (kSplit) {
      SplitTf32(ah, al, sign);
      SplitTf32(bh, bl, 1.0f);
      wmma::mma_sync(acc, al, bh, acc);
      wmma::mma_sync(acc, ah, bl, acc);
    } else {
#pragma unroll
      for (int t = 0; t < ah.num_elements; ++t) ah.x[t] = wmma::__float_to_tf32(sign * ah.x[t]);
#pragma unroll
      for (int t = 0; t < bh.num_elements; ++t) bh.x[t] = wmma::__float_to_tf32(bh.x[t]);
    }
    wmma::mma_sync(acc, ah, bh, acc);
  }
}

// C = A B (m x n, k inner; all multiples of 16, k of 8) into c (leading dimension ldc, shared or global),
// each warp taking whole 16 x 16 tiles. With `accumulate`, C += A B reading c first, each product scaled
// by `scale_c` before the sum: C = scale_c C + A B. No barrier inside.
template <bool kSplit, typename LA, typename LB>
__device__ inline void WarpMatmul(int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                                  float* c, int ldc, bool accumulate = false, float scale_c = 1.0f,
                                  float sign = 1.0f) {
  const int tiles_n = n / 16, tiles = (m / 16) * tiles_n;
  for (int tile = threadIdx.x / 32; tile < tiles; tile += kWarps) {
    const int i0 = tile / tiles_n * 16, j0 = tile % tiles_n * 16;
    AccTf32 acc;
    if (accumulate) {
      wmma::load_matrix_sync(acc, c + i0 * ldc + j0, ldc, wmma::mem_row_major);
#pragma unroll
      for (int t = 0; t < acc.num_elements; ++t) acc.x[t] *= scale_c;
    } else {
      wmma::fill_fragment(acc, 0.0f);
    }
    MmaTile<kSplit, LA, LB>(acc, a, lda, b, ldb, i0, j0, k, sign);
    wmma::store_matrix_sync(c + i0 * ldc + j0, acc, ldc, wmma::mem_row_major);
  }
}

// Tile t (0-based) of the lower triangle of an nb x nb tile grid, longest first: band d = nb - 1 (one
// tile), then band nb - 2, ... the diagonal last. Tile (i, j) of a product of lower-triangular matrices
// sums over k in [j, i]: i - j + 1 tile steps, so this order lists the work longest first.
__device__ __forceinline__ void LowerTile(int t, int nb, int* i, int* j) {
  int d = nb - 1;
  while (t >= nb - d) {
    t -= nb - d;
    --d;
  }
  *j = t;
  *i = t + d;
}

// The warp that takes lower tile t: the first round of kWarps tiles goes to warps 0, 1, ..., the next
// round back from the last warp, so the warps that took the longest tiles take the shortest next.
__device__ __forceinline__ bool WarpTakesTile(int t, int warp) {
  const int round = t / kWarps, pos = t % kWarps;
  return (round % 2 == 0 ? pos : kWarps - 1 - pos) == warp;
}

// C = A B for lower-triangular c x c matrices A and B (zero above the diagonal), into the lower tiles of
// c only: tile (i, j) sums over k in [j, i], the products of zero tiles skipped (exact zeros: the sums are
// the same as the full product's). At C = 64 that is 20 tile steps where the full product takes 64. The
// tiles above the diagonal are not written. No barrier inside.
template <bool kSplit>
__device__ inline void WarpMatmulLower(int c, const float* a, int lda, const float* b, int ldb, float* out, int ldc) {
  const int nb = c / 16, tiles = nb * (nb + 1) / 2, warp = threadIdx.x / 32;
  for (int t = 0; t < tiles; ++t) {
    if (!WarpTakesTile(t, warp)) continue;
    int i, j;
    LowerTile(t, nb, &i, &j);
    AccTf32 acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = j; k <= i; ++k)
      MmaTile<kSplit, RowMajor, RowMajor>(acc, a + i * 16 * lda + k * 16, lda, b + k * 16 * ldb + j * 16, ldb, 0, 0, 16);
    wmma::store_matrix_sync(out + i * 16 * ldc + j * 16, acc, ldc, wmma::mem_row_major);
  }
}

// Scratch of the 8-bit products (ChunkInverter<.., true>): both operands quantized, tile by tile, each
// 16 x 16 tile stored contiguously (256 bytes: WMMA's int8 loads need 32-byte aligned tiles), a float
// scale per tile, and a 16 x 16 int32 tile per warp for the tile steps' sums.
struct LowBitScratch {
  int8_t *qx, *qy;  // [nb * nb][16 * 16]
  float *sx, *sy;   // [nb * nb]
  int* tile_sums;   // [kWarps][16 * 16]
};

// Symmetric INT8 quantization of the lower tiles of a c x c float matrix, one scale per 16 x 16 tile (its
// max |x| / 127, at least 1e-30 / 127), rounding to nearest even: tri_inverse.cc's Quantize, tile by
// tile. One warp per tile; lane l takes row l / 2, columns 8 (l % 2) .. + 8. No barrier inside.
__device__ inline void QuantizeLowerTiles(const float* x, int ld, int c, int8_t* q, float* scales) {
  const int nb = c / 16, tiles = nb * (nb + 1) / 2, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = lane / 2, cb = lane % 2 * 8;
  for (int t = warp; t < tiles; t += kWarps) {
    int i, j;
    LowerTile(t, nb, &i, &j);
    const float* row = x + (i * 16 + r) * ld + j * 16 + cb;
    float v[8], m = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] = row[e];
      m = fmaxf(m, fabsf(v[e]));
    }
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float scale = fmaxf(m, 1e-30f) / 127.0f;
    uint32_t packed[2] = {0u, 0u};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float qv = fminf(fmaxf(rintf(__fdiv_rn(v[e], scale)), -127.0f), 127.0f);
      packed[e / 4] |= (static_cast<uint32_t>(static_cast<int>(qv)) & 0xffu) << (8 * (e % 4));
    }
    *reinterpret_cast<uint2*>(q + (i * nb + j) * 256 + r * 16 + cb) = make_uint2(packed[0], packed[1]);
    if (lane == 0) scales[i * nb + j] = scale;
  }
}

// C = X Y for lower-triangular X and Y quantized by QuantizeLowerTiles: each tile step an INT8 tensor-core
// product (WMMA m16n16k16, exact int32 sums), scaled by the two tiles' scales and summed in float32 over k
// in [j, i], the order tri_inverse.cc's emulation sums them in. Lower tiles of out only; no barrier inside.
__device__ inline void WarpMatmulInt8Lower(int c, const LowBitScratch& s, float* out, int ldc) {
  const int nb = c / 16, tiles = nb * (nb + 1) / 2, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = lane / 2, cb = lane % 2 * 8;
  int* sums = s.tile_sums + warp * 256;
  for (int t = 0; t < tiles; ++t) {
    if (!WarpTakesTile(t, warp)) continue;
    int i, j;
    LowerTile(t, nb, &i, &j);
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = j; k <= i; ++k) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::row_major> fb;
      wmma::fragment<wmma::accumulator, 16, 16, 16, int> fc;
      wmma::load_matrix_sync(fa, reinterpret_cast<const signed char*>(s.qx + (i * nb + k) * 256), 16);
      wmma::load_matrix_sync(fb, reinterpret_cast<const signed char*>(s.qy + (k * nb + j) * 256), 16);
      wmma::fill_fragment(fc, 0);
      wmma::mma_sync(fc, fa, fb, fc);
      wmma::store_matrix_sync(sums, fc, 16, wmma::mem_row_major);
      __syncwarp();
      const float scale = s.sx[i * nb + k] * s.sy[k * nb + j];
      // Product rounded, then the sum rounded, as the emulation does: never contracted into one FMA.
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = __fadd_rn(acc[e], __fmul_rn(static_cast<float>(sums[r * 16 + cb + e]), scale));
      __syncwarp();  // the next step's store overwrites the sums
    }
    float* dst = out + (i * 16 + r) * ldc + j * 16 + cb;
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[e] = acc[e];
  }
}

// Max over the block of x >= 0 (NaN propagates as +inf); every thread gets it. Contains barriers.
__device__ inline float BlockMax(float x, float* scratch) {
  if (isnan(x)) x = INFINITY;
  for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, scratch[w]);
  __syncthreads();
  return m;
}

// x[0, n) becomes its inclusive prefix sum, n <= 64, computed by one warp (two values a lane, shuffles):
// the chunk's cumulative log decay without 64 dependent shared-memory round trips on one thread.
__device__ inline void InclusiveScan64(float* x, int n) {
  const int lane = threadIdx.x % 32;
  float lo = lane < n ? x[lane] : 0.0f, hi = lane + 32 < n ? x[lane + 32] : 0.0f;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float a = __shfl_up_sync(0xffffffffu, lo, off), b = __shfl_up_sync(0xffffffffu, hi, off);
    if (lane >= off) {
      lo += a;
      hi += b;
    }
  }
  hi += __shfl_sync(0xffffffffu, lo, 31);
  if (lane < n) x[lane] = lo;
  if (lane + 32 < n) x[lane + 32] = hi;
}

struct InverseParams {
  int method;  // 0 forward substitution, 1 Neumann, 2 product form
  int order, band, residual_steps;
  bool guard;  // run the residual check and the exact fallback
  float guard_tol;
  bool refine;  // 8-bit products (kLowBit): the residuals E in full precision, only the series and X E in 8 bits
};

// X = (I + A)^-1 by blocked forward substitution (exact), for c of 16, 32 or 64 and A strictly lower
// triangular. The c / 16 diagonal blocks are inverted first, each by 16 lanes of a warp that keep one
// column of the block in registers (X[i, col] = e_i[col] - sum_{j < i} A[i, j] X[j, col] reads only the
// lane's own column, so no lane waits on another); then the blocks below the diagonal, one band at a time,
// each by one warp on tensor cores: X_ij = -X_ii (sum_{j <= k < i} A_ik X_kj). Three barriers at C = 64
// where row-by-row substitution needed 63. The block products run in 3xTF32 whatever the input dtype, so
// the inverse stays float32-accurate like the row-by-row form it replaces.
__device__ __forceinline__ void ForwardSubstitution(const float* a, float* x, int c, int ld) {
  const int nb = c / 16, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
    const int i = idx / c, j = idx % c;
    if (j / 16 > i / 16) x[i * ld + j] = 0.0f;
  }
  const int blk = warp * 2 + lane / 16, col = lane % 16;
  if (blk < nb) {
    const float* ab = a + blk * 16 * ld + blk * 16;
    float v[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      float sum = i == col ? 1.0f : 0.0f;
#pragma unroll
      for (int j = 0; j < i; ++j) sum = fmaf(-ab[i * ld + j], v[j], sum);
      v[i] = sum;
    }
    float* xb = x + blk * 16 * ld + blk * 16 + col;
#pragma unroll
    for (int i = 0; i < 16; ++i) xb[i * ld] = v[i];
  }
  __syncthreads();
  for (int d = 1; d < nb; ++d) {  // the band of blocks d below the diagonal
    for (int j = warp; j < nb - d; j += kWarps) {
      const int i = j + d;
      float* xij = x + i * 16 * ld + j * 16;
      AccTf32 acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int k = j; k < i; ++k)
        MmaTile<true, RowMajor, RowMajor>(acc, a + i * 16 * ld + k * 16, ld, x + k * 16 * ld + j * 16, ld, 0, 0,
                                          16);
      wmma::store_matrix_sync(xij, acc, ld, wmma::mem_row_major);  // the sum, as the next product's B
      __syncwarp();
      wmma::fill_fragment(acc, 0.0f);
      MmaTile<true, RowMajor, RowMajor>(acc, x + i * 16 * ld + i * 16, ld, xij, ld, 0, 0, 16, -1.0f);
      __syncwarp();
      wmma::store_matrix_sync(xij, acc, ld, wmma::mem_row_major);
    }
    __syncthreads();
  }
}

// The matmul-only methods on c x c shared-memory matrices (leading dimension ld), products on tensor
// cores. bufs are scratch; the result's buffer ends up in bufs[0]. Mirrors tri_inverse.cc. Every matrix
// of these methods is lower triangular, so the products compute the lower tiles only. kLowBit: the
// series' products in INT8 with tile scales (low_bit's scratch), as TriInverseOptions::block_scales.
template <bool kSplit, bool kLowBit = false>
struct ChunkInverter {
  const float* a;
  float* bufs[3];
  int c, ld;
  LowBitScratch low_bit{};

  // out = x y (in INT8 where `low` and kLowBit), then out = f(i, j, out) element-wise below the diagonal
  // and zero above it; ends with a barrier.
  template <class F>
  __device__ void Product(const float* x, const float* y, float* out, F f, bool low = kLowBit) const {
    if (kLowBit && low) {
      QuantizeLowerTiles(x, ld, c, low_bit.qx, low_bit.sx);
      QuantizeLowerTiles(y, ld, c, low_bit.qy, low_bit.sy);
      __syncthreads();
      WarpMatmulInt8Lower(c, low_bit, out, ld);
    } else {
      WarpMatmulLower<kSplit>(c, x, ld, y, ld, out, ld);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
      const int i = idx / c, j = idx % c;
      out[i * ld + j] = j > i ? 0.0f : f(i, j, out[i * ld + j]);
    }
    __syncthreads();
  }
  // (I - A)(I + A^2)...(I + A^(2^(factors - 1))): the series up to order 2^factors - 1.
  __device__ void PartialProduct(int factors) {
    float *x = bufs[0], *p = bufs[1], *t = bufs[2];
    const int l = ld;
    for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
      const int i = idx / c, j = idx % c;
      p[i * l + j] = a[i * l + j];
      x[i * l + j] = (i == j) - a[i * l + j];
    }
    __syncthreads();
    for (int m = 1; m < factors; ++m) {
      Product(p, p, t, [](int, int, float s) { return s; });  // A^(2^m)
      float* tmp = p;
      p = t;
      t = tmp;
      Product(x, p, t, [x, l](int i, int j, float s) { return x[i * l + j] + s; });  // x (I + A^(2^m))
      tmp = x;
      x = t;
      t = tmp;
    }
    bufs[0] = x;
    bufs[1] = p;
    bufs[2] = t;
  }
  // Truncated series sum_{n <= order} (-A)^n.
  __device__ void Truncated(int order) {
    const int l = ld;
    if (order <= 0) {
      for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x)
        bufs[0][(idx / c) * l + idx % c] = idx / c == idx % c;
      __syncthreads();
      return;
    }
    int log2 = 0;
    while ((1 << log2) < order + 1) ++log2;
    if ((1 << log2) == order + 1) {
      PartialProduct(log2);
      return;
    }
    float *x = bufs[0], *t = bufs[1];
    for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
      const int i = idx / c, j = idx % c;
      x[i * l + j] = (i == j) - a[i * l + j];
    }
    __syncthreads();
    for (int n = 2; n <= order; ++n) {  // Horner: X = I - A X
      Product(a, x, t, [](int i, int j, float s) { return (i == j) - s; });
      float* tmp = x;
      x = t;
      t = tmp;
    }
    bufs[0] = x;
    bufs[1] = t;
  }
};

// Inverts (I + A) for one chunk; returns the buffer holding T. With the guard, a chunk whose residual
// bound exceeds the tolerance (or is NaN) is recomputed by forward substitution and counted.
template <bool kSplit, bool kLowBit = false>
__device__ __forceinline__ float* InvertChunk(const float* a, float* b0, float* b1, float* b2, int c, int ld,
                              const InverseParams& ip, float* scratch, int* guard_counters,
                              const LowBitScratch& low_bit = LowBitScratch{}) {
  if (ip.method == 0) {
    ForwardSubstitution(a, b0, c, ld);
    return b0;
  }
  ChunkInverter<kSplit, kLowBit> inv{a, {b0, b1, b2}, c, ld, low_bit};
  if (ip.method == 2) {
    int log2 = 0;
    while ((1 << log2) < c) ++log2;
    inv.PartialProduct(log2);
    return inv.bufs[0];
  }
  inv.Truncated(ip.order);
  float *x = inv.bufs[0], *e = inv.bufs[1], *t = inv.bufs[2];
  const int l = ld;
  if (ip.band > 0) {
    for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
      const int i = idx / c, j = idx % c;
      if (j > i || i - j >= ip.band) x[i * l + j] = 0.0f;
    }
    __syncthreads();
  }
  float emax = -1.0f;  // max |E| of the last correction step, when the guard wants it
  for (int s = 0; s < ip.residual_steps; ++s) {
    inv.Product(
        a, x, e, [x, l](int i, int j, float ax) { return (i == j) - x[i * l + j] - ax; },
        kLowBit && !ip.refine);  // E = I - (I + A) X
    if (!kLowBit && s + 1 == ip.residual_steps && ip.guard) {
      float m = 0.0f;
      for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x)
        m = fmaxf(m, fabsf(e[(idx / c) * l + idx % c]));
      emax = BlockMax(m, scratch);
    }
    inv.Product(x, e, t, [x, l](int i, int j, float xe) { return x[i * l + j] + xe; });  // X + X E
    float* tmp = x;
    x = t;
    t = tmp;
  }
  if (!ip.guard) return x;
  float bound;
  if (kLowBit) {
    // 8-bit corrections are not exact on their band, so E^2 does not bound the result: measure the
    // residual directly, one full-precision product on tensor cores into the free buffer.
    inv.Product(a, x, t, [x, l](int i, int j, float ax) { return (i == j) - x[i * l + j] - ax; }, false);
    float m = 0.0f;
    for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) m = fmaxf(m, fabsf(t[(idx / c) * l + idx % c]));
    bound = BlockMax(m, scratch);
  } else if (emax >= 0.0f) {
    bound = emax * emax * static_cast<float>(c);  // the next residual is E^2: |E^2| <= c |E|^2
  } else {  // no correction step: measure the residual directly, on CUDA cores in float32
    float m = 0.0f;
    for (int idx = threadIdx.x; idx < c * c; idx += blockDim.x) {
      const int i = idx / c, j = idx % c;
      float ax = 0.0f;
      for (int kk = 0; kk < c; ++kk) ax = fmaf(a[i * l + kk], x[kk * l + j], ax);
      m = fmaxf(m, fabsf((i == j) - x[i * l + j] - ax));
    }
    bound = BlockMax(m, scratch);
  }
  if (threadIdx.x == 0) {
    atomicMax(guard_counters + 1,
              __float_as_int(isnan(bound) ? INFINITY : bound));  // >= 0: int order = float order
  }
  if (!(bound <= ip.guard_tol)) {  // NaN included
    if (threadIdx.x == 0) atomicAdd(guard_counters, 1);
    ForwardSubstitution(a, t, c, ld);
    return t;
  }
  return x;
}

template <typename T>
struct PrepareArgs {
  const void *q, *k, *v;
  const float *g, *beta;
  const int64_t* offsets;  // [n + 1], device
  Workspace<T> ws;
  int* guard_counters;  // [2]: fallbacks, max residual (float bits)
  int n, key_heads, heads, group, dk, dv, c;
  bool l2norm;
  float scale;
  InverseParams inverse;
};

// The bf16 prepare pass (gdn_prefill_bf16_prepare_cuda.cu), for C = 64 and dk = dv = 128 only (QwenDims),
// over `blocks` (chunks x value heads) blocks.
void LaunchBf16Prepare(const PrepareArgs<__nv_bfloat16>& args, int64_t blocks, cudaStream_t stream);

}  // namespace deltaserve::kernels::internal::gdn

#endif  // DELTASERVE_KERNELS_CUDA_GDN_PREFILL_PREPARE_CUH_
