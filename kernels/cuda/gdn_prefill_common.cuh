// What the fused chunked-prefill kernels share: block shape, compile-time dims, the per-(chunk, head)
// workspace, tile copies into shared memory and the chunk lookup. Included by the prefill .cu files only.
#ifndef DELTASERVE_KERNELS_CUDA_GDN_PREFILL_COMMON_CUH_
#define DELTASERVE_KERNELS_CUDA_GDN_PREFILL_COMMON_CUH_

#include <c10/util/BFloat16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

namespace deltaserve::kernels::internal::gdn {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPad = 4;      // floats of padding per float32 shared-memory row
constexpr int kPadBf16 = 8;  // bfloat16 elements of padding per bfloat16 row: 16 bytes, rows stay aligned

// Chunk size and head dimensions known at compile time (0: read from the arguments at run time).
// Qwen3.5's C = 64, dk = dv = 128 get their own instantiation: with constant sizes every tile loop has a
// known trip count and every index division becomes a shift, which the run-time shapes left to the
// integer units of a latency-bound kernel. Any other shape takes the run-time instantiation.
template <int C, int DK, int DV>
struct Dims {
  static constexpr bool kStatic = C > 0 && DK > 0 && DV > 0;
  __host__ __device__ static constexpr int c(int run_time) { return C > 0 ? C : run_time; }
  __host__ __device__ static constexpr int dk(int run_time) { return DK > 0 ? DK : run_time; }
  __host__ __device__ static constexpr int dv(int run_time) { return DV > 0 ? DV : run_time; }
};
using QwenDims = Dims<64, 128, 128>;
using RunTimeDims = Dims<0, 0, 0>;

namespace wmma = nvcuda::wmma;
using RowMajor = wmma::row_major;
using ColMajor = wmma::col_major;
using AccBf16 = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// acc += A[i0:i0+16, k0:k1] B[k0:k1, j0:j0+16] in bf16 (k0, k1 multiples of 16). RowMajor A: element
// (i, kk) at a[i * lda + kk]; ColMajor A: at a[kk * lda + i] (A is the transpose of what is stored).
// Same for B with (kk, j).
template <typename LA, typename LB>
__device__ inline void MmaBf16(AccBf16& acc, const __nv_bfloat16* a, int lda, const __nv_bfloat16* b, int ldb, int i0, int j0, int k0,
                               int k1) {
  constexpr bool a_row = std::is_same<LA, RowMajor>::value;
  constexpr bool b_row = std::is_same<LB, RowMajor>::value;
  for (int kk = k0; kk < k1; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
    wmma::load_matrix_sync(fa, a_row ? a + i0 * lda + kk : a + kk * lda + i0, lda);
    wmma::load_matrix_sync(fb, b_row ? b + kk * ldb + j0 : b + j0 * ldb + kk, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}


// Eight consecutive floats x[0..8) to dst (16-byte aligned) in one (bfloat16) or two (float) vector stores.
__device__ inline void StoreRow8(float* dst, const float* x) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(x[0], x[1], x[2], x[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(x[4], x[5], x[6], x[7]);
}
__device__ inline void StoreRow8(__nv_bfloat16* dst, const float* x) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
  *reinterpret_cast<uint4*>(dst) = u;
}

// Four consecutive values as floats, in one 16-byte (float) or 8-byte (bfloat16) read-only load.
__device__ inline float4 Load4(const float* p) { return __ldg(reinterpret_cast<const float4*>(p)); }
__device__ inline float4 Load4(const c10::BFloat16* p) {
  const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                     __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

// rows x cols values (cols a multiple of 4) into shared dst (leading dimension ld, a multiple of 4) as
// float; row i comes from row_ptr(i), a 16-byte aligned pointer, or is zero where row_ptr returns null.
// Each thread keeps kBatch vector loads in flight before storing any: one block per SM must not wait
// out each load's latency.
template <class RowPtr>
__device__ inline void LoadTile(float* dst, int ld, int rows, int cols, RowPtr row_ptr) {
  constexpr int kBatch = 8;
  const int per_row = cols / 4, total = rows * per_row;
  for (int base = threadIdx.x; base < total; base += kBatch * blockDim.x) {
    float4 r[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int idx = base + b * blockDim.x;
      r[b] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (idx < total) {
        const auto* row = row_ptr(idx / per_row);
        if (row != nullptr) r[b] = Load4(row + (idx % per_row) * 4);
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int idx = base + b * blockDim.x;
      if (idx < total) {
        *reinterpret_cast<float4*>(dst + (idx / per_row) * ld + (idx % per_row) * 4) = r[b];
      }
    }
  }
}

// The same copy, element type kept, without registers or waiting: cp.async moves 16 bytes per thread and
// step from global into shared memory while the block computes (rows from row_ptr, never null, 16-byte
// aligned; cols a multiple of 16 bytes). The caller commits the group and waits on it before anyone
// reads dst.
template <typename T, class RowPtr>
__device__ inline void LoadTileAsync(T* dst, int ld, int rows, int cols, RowPtr row_ptr) {
  constexpr int kVec = 16 / sizeof(T);
  const int per_row = cols / kVec, total = rows * per_row;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int r = idx / per_row, q = idx % per_row;
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst + r * ld + q * kVec));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(row_ptr(r) + q * kVec));
  }
}
__device__ inline void AsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `pending` committed groups of this thread are still in flight.
template <int pending>
__device__ inline void AsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Per (chunk, value head) cells written by the prepare pass and the state pass, in T: float32 for float32
// inputs, bfloat16 for bfloat16 inputs (the operands of the passes' tensor-core products, as FLA keeps
// them; every sum stays float32). The decay is float32 either way.
template <typename T>
struct Workspace {
  T *w, *kd, *qe;  // [c, dk]: T beta e^G k, e^(G_C - G) k, scale e^G q
  T *u, *vn;       // [c, dv]: T beta v, and V' = U - W S from the state pass ([dv, c] at Qwen3.5's shape)
  T* scores;       // [c, c]: Q K^T e^(G_i - G_j), lower triangle with the diagonal
  T* states;       // [dk, dv]: the state at the chunk's start, from the state pass ([dv, dk] at Qwen3.5's shape)
  float* decay;    // [1]: e^(G_C)
};

// A recurrent-state pool's slots as the state pass reads each sequence's initial state from them and
// writes its final state back, in the pool's storage type (the prefill in the pool). Scaled pools (INT8,
// FP8) are read here and written by LaunchQuantizeIntoPool after the pass: a row's scale needs the whole
// row, which the pass's column blocks split.
enum class PoolKind : int { kNone, kFloat32, kBFloat16, kInt8, kFloat8 };
struct PoolRef {
  PoolKind kind = PoolKind::kNone;
  void* values = nullptr;          // [slots, heads, dk, dv]
  float* scales = nullptr;         // [slots, heads, dk]: kInt8, kFloat8
  const int64_t* slots = nullptr;  // [n] on the device: sequence i's slot
};

template <typename T>
struct PassArgs {
  const int64_t* offsets;
  Workspace<T> ws;
  const float* initial_state;  // [n, heads, dk, dv], or null: the pool's slots, or zeros without a pool
  float* final_state;          // [n, heads, dk, dv], or null: the pool's slots (float32 and bf16 pools)
  PoolRef pool;
  void* o;                     // [tokens, heads, dv] in the inputs' dtype
  int n, heads, dk, dv, c;
};

// Element (d, j) of sequence seq's initial state for value head h, as float32: dequantized from the pool as
// ReadStates does (value times its row's scale).
template <typename T>
__device__ inline float InitialStateAt(const PassArgs<T>& p, int seq, int h, int d, int j, int dk, int dv) {
  if (p.initial_state != nullptr) return p.initial_state[((static_cast<int64_t>(seq) * p.heads + h) * dk + d) * dv + j];
  if (p.pool.kind == PoolKind::kNone) return 0.0f;
  const int64_t row = (p.pool.slots[seq] * p.heads + h) * dk + d, idx = row * dv + j;
  switch (p.pool.kind) {
    case PoolKind::kFloat32:
      return static_cast<const float*>(p.pool.values)[idx];
    case PoolKind::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p.pool.values)[idx]);
    case PoolKind::kInt8:
      return static_cast<float>(static_cast<const int8_t*>(p.pool.values)[idx]) * p.pool.scales[row];
    default:
      return static_cast<float>(static_cast<const __nv_fp8_e4m3*>(p.pool.values)[idx]) * p.pool.scales[row];
  }
}

// Element (d, j) of the final state: to final_state when there is one, else to the pool's slot (float32,
// or bfloat16 rounded to nearest even as WriteStates' cast does).
template <typename T>
__device__ inline void StoreFinalState(const PassArgs<T>& p, int seq, int h, int d, int j, int dk, int dv, float x) {
  if (p.final_state != nullptr) {
    p.final_state[((static_cast<int64_t>(seq) * p.heads + h) * dk + d) * dv + j] = x;
    return;
  }
  const int64_t idx = ((p.pool.slots[seq] * p.heads + h) * dk + d) * dv + j;
  if (p.pool.kind == PoolKind::kFloat32) {
    static_cast<float*>(p.pool.values)[idx] = x;
  } else {
    static_cast<__nv_bfloat16*>(p.pool.values)[idx] = __float2bfloat16_rn(x);
  }
}

// The initial state's [dk, bv] slice from column j0 into shared ss (leading dimension lds) as float32:
// vector loads of dense rows, element by element from a pool.
template <typename T>
__device__ inline void LoadInitialSlice(float* ss, int lds, const PassArgs<T>& p, int seq, int h, int j0, int bv, int dk,
                                        int dv) {
  if (p.initial_state != nullptr || p.pool.kind == PoolKind::kNone) {
    const float* init =
        p.initial_state ? p.initial_state + (static_cast<int64_t>(seq) * p.heads + h) * dk * dv + j0 : nullptr;
    LoadTile(ss, lds, dk, bv, [init, dv](int i) { return init ? init + static_cast<int64_t>(i) * dv : nullptr; });
    return;
  }
  for (int idx = threadIdx.x; idx < dk * bv; idx += blockDim.x) {
    ss[(idx / bv) * lds + idx % bv] = InitialStateAt(p, seq, h, idx / bv, j0 + idx % bv, dk, dv);
  }
}

// Sequence and chunk-in-sequence of global chunk `id` (chunks numbered sequence by sequence).
__device__ inline void LocateChunk(const int64_t* offsets, int n, int c, int64_t id, int* seq,
                                   int64_t* local) {
  int64_t first = 0;
  for (int s = 0; s < n; ++s) {
    const int64_t chunks = (offsets[s + 1] - offsets[s] + c - 1) / c;
    if (id < first + chunks) {
      *seq = s;
      *local = id - first;
      return;
    }
    first += chunks;
  }
  *seq = n;
  *local = 0;
}

// The tokens of global chunk `id`: its first token and how many of its c rows hold tokens (fewer in a
// sequence's last chunk). False for an id past the last chunk.
struct ChunkTokens {
  int64_t tok0;
  int valid;
};
__device__ inline bool FindChunk(const int64_t* offsets, int n, int c, int64_t id, ChunkTokens* out) {
  int seq;
  int64_t local;
  LocateChunk(offsets, n, c, id, &seq, &local);
  if (seq >= n) return false;
  out->tok0 = offsets[seq] + local * c;
  const int64_t left = offsets[seq + 1] - out->tok0;
  out->valid = static_cast<int>(left < c ? left : c);
  return true;
}

// The first global chunk of sequence `seq` and how many chunks it has.
__device__ inline void SequenceChunks(const int64_t* offsets, int seq, int c, int64_t* first, int64_t* chunks) {
  int64_t f = 0;
  for (int s = 0; s < seq; ++s) f += (offsets[s + 1] - offsets[s] + c - 1) / c;
  *first = f;
  *chunks = (offsets[seq + 1] - offsets[seq] + c - 1) / c;
}

// Launches the state pass and the output pass over a bfloat16 workspace (gdn_prefill_bf16_passes_cuda.cu);
// the output o is bfloat16. `chunks` is the number of global chunks (0: the state pass only). `fused_output`
// (Qwen3.5's shape only): the state pass forms the output too, and the workspace has no states or V'.
void LaunchBf16Passes(const PassArgs<__nv_bfloat16>& args, int64_t chunks, bool qwen_dims, bool fused_output,
                      cudaStream_t stream);

// The state pass with the state in registers at Qwen3.5's shape (C = 64, dk = dv = 128;
// gdn_prefill_bf16_state_regs_cuda.cu): writes the starting states and V' transposed ([dv, dk], [dv, c]),
// or with `output` forms O itself from Qe and the scores and writes neither (no output pass follows).
// `split`: warps per 16 value columns (1, 2 or 4), each over dk / split key rows.
void LaunchBf16StateRegs(const PassArgs<__nv_bfloat16>& args, int split, bool output, cudaStream_t stream);

// Quantizes float32 final states [n, heads, dk, dv] into a scaled pool's slots (gdn_prefill_pool_cuda.cu),
// rounding to nearest as WriteStates does: per-row scales, or one per head when `coarse`.
void LaunchQuantizeIntoPool(const float* states, int n, int heads, int dk, int dv, const PoolRef& pool, bool coarse,
                            float qmax, cudaStream_t stream);

// Whether bf16 inputs at Qwen3.5's shape take the fused state-and-output pass (DELTASERVE_GDN_FUSED_OUTPUT=1
// at the call): read once per prefill, which sizes its workspace and picks its passes by the answer.
bool FusedOutputPass();

}  // namespace deltaserve::kernels::internal::gdn

#endif  // DELTASERVE_KERNELS_CUDA_GDN_PREFILL_COMMON_CUH_
