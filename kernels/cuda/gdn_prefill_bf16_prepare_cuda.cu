// The prepare pass of the fused chunked prefill for bfloat16 inputs at Qwen3.5's shape (C = 64,
// dk = dv = 128), on bf16 tensor cores (WMMA m16n16k16, float32 accumulation). One block per (chunk, value
// head), as the general prepare pass in chunk_gated_delta_rule_cuda.cu, with the same inverse in float32,
// but q, k and v stay bf16 in shared memory as they arrive (cp.async, no conversion) and l2 normalisation
// is folded into the products instead of applied to the rows: with n_i = 1 / ||k_i|| and m_i = scale /
// ||q_i||,
//   scores_ij = m_i n_j (q_i . k_j) e^(G_i - G_j),   A_ij = beta_i n_i n_j (k_i . k_j) e^(G_i - G_j),
//   W = T diag(beta e^G n) K,   U = T diag(beta) V,   Kd_i = e^(G_C - G_i) n_i k_i,   Qe_i = e^(G_i) m_i q_i,
// where q_i . k_j of bf16 rows is exact in float32 sums; T and the scaled rows of K and V are rounded to
// bf16 once for W and U (FLA's precision class). Products skip the zero upper triangle of the scores, A and
// T. At about 69 KB of shared memory for forward substitution three blocks share an SM (the general kernel
// fits two).
#include <c10/cuda/CUDAException.h>

#include "gdn_prefill_common.cuh"
#include "gdn_prefill_prepare.cuh"

namespace deltaserve::kernels::internal::gdn {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kC = 64, kD = 128;       // chunk and head dimensions (dk = dv)
constexpr int kLdIn = kD + kPadBf16;   // q/v and k rows in shared memory, bf16
constexpr int kLdSq = kC + kPad;       // float32 C x C matrices
constexpr int kLdT = kC + kPadBf16;    // T in bf16
constexpr int kStageLd = 16 + kPad;    // a warp's float32 staging tile

// rows x kD bf16 from row_ptr(i) (16-byte aligned) into dst; rows at or past `valid` are zero-filled
// (cp.async with source size 0 reads nothing; row 0's address stands in, valid >= 1).
template <class RowPtr>
__device__ inline void LoadRowsZeroFill(bf16* dst, int rows, int valid, RowPtr row_ptr) {
  constexpr int kPerRow = kD / 8;
  for (int idx = threadIdx.x; idx < rows * kPerRow; idx += blockDim.x) {
    const int r = idx / kPerRow, q = idx % kPerRow;
    const bool ok = r < valid;
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst + r * kLdIn + q * 8));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(row_ptr(ok ? r : 0) + q * 8),
                 "r"(ok ? 16 : 0));
  }
}

// Eight bf16 at p (16-byte aligned) as floats.
__device__ inline void Load8(const bf16* p, float* x) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}

// Row and column tile of the t-th of the 10 lower-triangular 16 x 16 tiles of a 64 x 64 matrix.
__device__ inline void LowerTile(int t, int* ti, int* tj) {
  const int i = t < 1 ? 0 : t < 3 ? 1 : t < 6 ? 2 : 3;
  *ti = i;
  *tj = t - i * (i + 1) / 2;
}

// out = T B for lower-triangular T [kC, kC] (bf16, kLdT) and B [kC, kD] (bf16, kLdIn), to global bf16
// rows of kD through each warp's float32 staging tile. Warp w takes tiles w, w + 8, ...: one of each row
// block, so the triangle's work is even across warps.
__device__ inline void LowerTimesRowsOut(const bf16* t, const bf16* b, bf16* out, float* staging) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* st = staging + warp * 16 * kStageLd;
  constexpr int kTilesN = kD / 16;
  for (int tile = warp; tile < (kC / 16) * kTilesN; tile += kWarps) {
    const int i0 = tile / kTilesN * 16, j0 = tile % kTilesN * 16;
    AccBf16 acc;
    wmma::fill_fragment(acc, 0.0f);
    MmaBf16<RowMajor, RowMajor>(acc, t, kLdT, b, kLdIn, i0, j0, 0, i0 + 16);
    wmma::store_matrix_sync(st, acc, kStageLd, wmma::mem_row_major);
    __syncwarp();
    StoreRow8(out + (i0 + lane / 2) * kD + j0 + lane % 2 * 8, st + (lane / 2) * kStageLd + lane % 2 * 8);
    __syncwarp();
  }
}

__global__ void __launch_bounds__(kThreads, 3) PrepareKernelBf16(PrepareArgs<bf16> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int64_t id = blockIdx.x / p.heads;
  const int h = blockIdx.x % p.heads, hk = h / p.group, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  ChunkTokens chunk;
  if (!FindChunk(p.offsets, p.n, kC, id, &chunk)) return;
  const int64_t tok0 = chunk.tok0;
  const int valid = chunk.valid;
  bf16* sk = reinterpret_cast<bf16*>(smem);        // [kC, kLdIn]: k, later beta e^G n k
  bf16* sx = sk + kC * kLdIn;                      // [kC, kLdIn]: q, later beta v
  float* sa = reinterpret_cast<float*>(sx + kC * kLdIn);  // [kC, kLdSq]: A, then T in bf16
  // [kC, kLdSq] buffers: Q K^T, then the inverse's scratch (one for forward substitution, three for the
  // matmul-only methods), then the staging tiles of W and U.
  float* b0 = sa + kC * kLdSq;
  float* b1 = b0 + kC * kLdSq;
  float* b2 = b1 + kC * kLdSq;
  float* sg = p.inverse.method == 0 ? b1 : b2 + kC * kLdSq;  // [kC]: cumulative log decay
  float* sbeta = sg + kC;                                    // [kC]: beta
  float* kn = sbeta + kC;                                    // [kC]: 1 / ||k_i|| (1 without l2norm)
  float* qn = kn + kC;                                       // [kC]: scale / ||q_i||
  float* scratch = qn + kC;                                  // [kWarps]

  const bf16* q = static_cast<const bf16*>(p.q);
  const bf16* k = static_cast<const bf16*>(p.k);
  const bf16* v = static_cast<const bf16*>(p.v);
  const int key_heads = p.key_heads, heads = p.heads;
  LoadRowsZeroFill(sk, kC, valid, [=](int i) { return k + ((tok0 + i) * key_heads + hk) * kD; });
  LoadRowsZeroFill(sx, kC, valid, [=](int i) { return q + ((tok0 + i) * key_heads + hk) * kD; });
  AsyncCommit();
  for (int i = threadIdx.x; i < kC; i += blockDim.x) {
    sg[i] = i < valid ? p.g[(tok0 + i) * heads + h] : 0.0f;
    sbeta[i] = i < valid ? p.beta[(tok0 + i) * heads + h] : 0.0f;
  }
  AsyncWait<0>();
  __syncthreads();
  if (warp == 0) InclusiveScan64(sg, kC);
  // The rows' norms, one warp a row (k rows, then q rows), four values a lane.
  for (int r = warp; r < 2 * kC; r += kWarps) {
    const bf16* row = (r < kC ? sk + r * kLdIn : sx + (r - kC) * kLdIn) + lane * 4;
    const uint2 u = *reinterpret_cast<const uint2*>(row);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
    float ss = a.x * a.x + a.y * a.y + b.x * b.x + b.y * b.y;
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float f = p.l2norm ? rsqrtf(ss + 1e-6f) : 1.0f;
    if (lane == 0) {
      if (r < kC) {
        kn[r] = f;
      } else {
        qn[r - kC] = f * p.scale;
      }
    }
  }
  __syncthreads();
  const int64_t cell = id * heads + h;
  const float g_last = sg[kC - 1];
  if (threadIdx.x == 0) p.ws.decay[cell] = __expf(g_last);
  // Q K^T into b0 and K K^T into A's buffer, the 10 lower tiles of each (the rest is never read).
  for (int task = warp; task < 20; task += kWarps) {
    int ti, tj;
    LowerTile(task % 10, &ti, &tj);
    const bf16* a = task < 10 ? sx : sk;
    float* out = task < 10 ? b0 : sa;
    AccBf16 acc;
    wmma::fill_fragment(acc, 0.0f);
    MmaBf16<RowMajor, ColMajor>(acc, a, kLdIn, sk, kLdIn, ti * 16, tj * 16, 0, kD);
    wmma::store_matrix_sync(out + ti * 16 * kLdSq + tj * 16, acc, kLdSq, wmma::mem_row_major);
  }
  // Meanwhile what the state and output passes read: e^(G_C - G) n k and e^G m q, eight columns a thread.
  bf16* kd = p.ws.kd + cell * kC * kD;
  bf16* qe = p.ws.qe + cell * kC * kD;
  for (int idx = threadIdx.x; idx < kC * kD / 8; idx += blockDim.x) {
    const int i = idx / (kD / 8), col = idx % (kD / 8) * 8;
    const float fk = kn[i] * __expf(g_last - sg[i]), fq = qn[i] * __expf(sg[i]);
    float xk[8], xq[8];
    Load8(sk + i * kLdIn + col, xk);
    Load8(sx + i * kLdIn + col, xq);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      xk[e] *= fk;
      xq[e] *= fq;
    }
    StoreRow8(kd + i * kD + col, xk);
    StoreRow8(qe + i * kD + col, xq);
  }
  __syncthreads();
  // q's last read is done: v's rows arrive in its place while the scores, A and the inverse are made.
  LoadRowsZeroFill(sx, kC, valid, [=](int i) { return v + ((tok0 + i) * heads + h) * kD; });
  AsyncCommit();
  // The scores on and below the diagonal go out; A below it stays (selects, not products: the upper
  // tiles were never written).
  bf16* scores = p.ws.scores + cell * kC * kC;
  for (int idx = threadIdx.x; idx < kC * kC / 8; idx += blockDim.x) {
    const int i = idx / (kC / 8), j0 = idx % (kC / 8) * 8;
    float x[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int j = j0 + e;
      const float decay = __expf(sg[i] - sg[j]);
      x[e] = j <= i ? b0[i * kLdSq + j] * qn[i] * kn[j] * decay : 0.0f;
      sa[i * kLdSq + j] = j < i ? sa[i * kLdSq + j] * sbeta[i] * kn[i] * kn[j] * decay : 0.0f;
    }
    StoreRow8(scores + i * kC + j0, x);
  }
  // k's rows become W's operand: beta e^G n k, in place.
  for (int idx = threadIdx.x; idx < kC * kD / 8; idx += blockDim.x) {
    const int i = idx / (kD / 8), col = idx % (kD / 8) * 8;
    const float f = sbeta[i] * __expf(sg[i]) * kn[i];
    float x[8];
    Load8(sk + i * kLdIn + col, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] *= f;
    StoreRow8(sk + i * kLdIn + col, x);
  }
  __syncthreads();
  const float* t = InvertChunk<false>(sa, b0, b1, b2, kC, kLdSq, p.inverse, scratch, p.guard_counters);
  AsyncWait<0>();
  __syncthreads();
  // T in bf16 into A's buffer (free now); v's rows become U's operand: beta v, in place.
  bf16* tb = reinterpret_cast<bf16*>(sa);
  for (int idx = threadIdx.x; idx < kC * kC / 8; idx += blockDim.x) {
    const int i = idx / (kC / 8), j0 = idx % (kC / 8) * 8;
    StoreRow8(tb + i * kLdT + j0, t + i * kLdSq + j0);
  }
  for (int idx = threadIdx.x; idx < kC * kD / 8; idx += blockDim.x) {
    const int i = idx / (kD / 8), col = idx % (kD / 8) * 8;
    float x[8];
    Load8(sx + i * kLdIn + col, x);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] *= sbeta[i];
    StoreRow8(sx + i * kLdIn + col, x);
  }
  __syncthreads();
  // T's float32 buffer is free: it takes the staging tiles.
  LowerTimesRowsOut(tb, sk, p.ws.w + cell * kC * kD, b0);
  LowerTimesRowsOut(tb, sx, p.ws.u + cell * kC * kD, b0);
}

}  // namespace

void LaunchBf16Prepare(const PrepareArgs<bf16>& args, int64_t blocks, cudaStream_t stream) {
  const int64_t squares = args.inverse.method == 0 ? 2 : 4;
  const int64_t bytes = 2 * kC * kLdIn * 2 + squares * kC * kLdSq * 4 + (4 * kC + kWarps) * 4;
  C10_CUDA_CHECK(cudaFuncSetAttribute(PrepareKernelBf16, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  PrepareKernelBf16<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes), stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace deltaserve::kernels::internal::gdn
