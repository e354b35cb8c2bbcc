// The state pass and the output pass of the fused chunked prefill for bfloat16 inputs, over a bfloat16
// workspace on bf16 tensor cores (WMMA m16n16k16, float32 accumulation): the precision class of FLA's
// chunk_gated_delta_rule (bf16 operands, float32 sums, the running state kept in float32), at half the
// bytes of the float32 workspace and twice the tensor-core rate of the TF32 products the float32 inputs use.
//  State pass, one block per (sequence, value head, BV value columns): the state slice stays in shared
//  memory in float32 from the first chunk to the last; per chunk it is rounded to bf16 once (the operand of
//  V' = U - W S, and the chunk's starting state for the output pass), and S = e^(G_C) S + Kd^T V' adds to
//  the float32 copy. The next chunk's W, Kd and U arrive by cp.async while this one is multiplied.
//  Output pass, one block per (chunk, value head, BV value columns): O = Qe S + scores V', the scores'
//  zero upper triangle skipped.
// At Qwen3.5's shape the state pass is the register-resident one (gdn_prefill_bf16_state_regs_cuda.cu),
// which leaves the starting states and V' transposed; the output pass reads them so (kTransposed).
#include <c10/cuda/CUDAException.h>

#include <cstdlib>
#include <type_traits>

#include "gdn_prefill_common.cuh"

namespace deltaserve::kernels::internal::gdn {
namespace {

using bf16 = __nv_bfloat16;

__host__ __device__ constexpr int64_t RoundUp128(int64_t bytes) { return (bytes + 127) / 128 * 128; }
__host__ __device__ constexpr int64_t Max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Shared memory of the state pass: the float32 state slice, then one region that holds the bf16 state
// (read by W S) and afterwards W S in float32, then two stages of W, Kd (bf16 [c, dk]) and U / V' (bf16
// [c, BV]). About 106 KB at C = 64, dk = 128, BV = 32: two blocks an SM.
struct StateLayout {
  int64_t state_bytes, union_bytes, stage_elems, total;
  __host__ __device__ StateLayout(int64_t c, int64_t dk, int64_t bv) {
    state_bytes = RoundUp128(dk * (bv + kPad) * 4);
    union_bytes = RoundUp128(Max64(dk * (bv + kPadBf16) * 2, c * (bv + kPad) * 4));
    stage_elems = 2 * c * (dk + kPadBf16) + c * (bv + kPadBf16);
    total = state_bytes + union_bytes + 2 * stage_elems * 2;
  }
};

// One warp's 16 x 16 float tile at `tile` (leading dimension ld) as eight bf16-bound floats for lane l:
// row l / 2, columns 8 (l % 2) .. + 8.
struct LaneRow {
  int row, col;
};
__device__ inline LaneRow LaneSlice() {
  const int lane = threadIdx.x % 32;
  return {lane / 2, lane % 2 * 8};
}

template <int BV, class D>
__global__ void __launch_bounds__(kThreads, 2) StateKernelBf16(PassArgs<bf16> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int c = D::c(p.c), dk = D::dk(p.dk), dv = D::dv(p.dv);
  const int ldk = dk + kPadBf16, lds = BV + kPad, ldb = BV + kPadBf16;
  const int col_blocks = dv / BV, j0 = blockIdx.x % col_blocks * BV;
  const int h = blockIdx.x / col_blocks % p.heads, seq = blockIdx.x / col_blocks / p.heads;
  const int warp = threadIdx.x / 32;
  const StateLayout layout(c, dk, BV);
  float* ss = reinterpret_cast<float*>(smem);                         // [dk, lds]: the state slice
  bf16* sb = reinterpret_cast<bf16*>(smem + layout.state_bytes);      // [dk, ldb]: it in bf16
  float* sws = reinterpret_cast<float*>(smem + layout.state_bytes);   // [c, lds]: W S, after sb's last read
  bf16* stages = reinterpret_cast<bf16*>(smem + layout.state_bytes + layout.union_bytes);
  const int64_t stage_elems = layout.stage_elems;

  LoadInitialSlice(ss, lds, p, seq, h, j0, BV, dk, dv);
  int64_t first, chunks;
  SequenceChunks(p.offsets, seq, c, &first, &chunks);
  auto prefetch = [&](int64_t ci) {
    const int64_t cell = (first + ci) * p.heads + h;
    bf16* st = stages + (ci & 1) * stage_elems;
    const bf16* w = p.ws.w + cell * c * dk;
    const bf16* kd = p.ws.kd + cell * c * dk;
    const bf16* u = p.ws.u + cell * c * dv + j0;
    LoadTileAsync(st, ldk, c, dk, [w, dk](int i) { return w + i * dk; });
    LoadTileAsync(st + c * ldk, ldk, c, dk, [kd, dk](int i) { return kd + i * dk; });
    LoadTileAsync(st + 2 * c * ldk, ldb, c, BV, [u, dv](int i) { return u + i * dv; });
    AsyncCommit();
  };
  if (chunks > 0) prefetch(0);
  const int tiles_n = BV / 16;
  // V' has (c / 16) (BV / 16) <= 8 tiles (c <= 64, BV <= 32): at most one a warp, kept in registers
  // across the barrier that frees sb.
  const bool has_tile = warp < (c / 16) * tiles_n;
  const int vi = warp / tiles_n * 16, vj = warp % tiles_n * 16;
  for (int64_t ci = 0; ci < chunks; ++ci) {
    // The next chunk's stage was last read in the iteration before, before the barrier that ended it.
    if (ci + 1 < chunks) {
      prefetch(ci + 1);
      AsyncWait<1>();
    } else {
      AsyncWait<0>();
    }
    __syncthreads();
    const int64_t cell = (first + ci) * p.heads + h;
    bf16* sw = stages + (ci & 1) * stage_elems;
    bf16* sk = sw + c * ldk;
    bf16* su = sk + c * ldk;
    // The chunk's starting state in bf16: W S's operand here, and the output pass's.
    bf16* s_out = p.ws.states + cell * dk * dv + j0;
    for (int idx = threadIdx.x; idx < dk * BV / 8; idx += blockDim.x) {
      const int i = idx / (BV / 8), j = idx % (BV / 8) * 8;
      const float4 lo = *reinterpret_cast<const float4*>(ss + i * lds + j);
      const float4 hi = *reinterpret_cast<const float4*>(ss + i * lds + j + 4);
      const float x[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      StoreRow8(sb + i * ldb + j, x);
      StoreRow8(s_out + static_cast<int64_t>(i) * dv + j, x);
    }
    __syncthreads();
    AccBf16 acc;
    if (has_tile) {
      wmma::fill_fragment(acc, 0.0f);
      MmaBf16<RowMajor, RowMajor>(acc, sw, ldk, sb, ldb, vi, vj, 0, dk);
    }
    __syncthreads();  // sb's last read: its region takes W S
    if (has_tile) {
      wmma::store_matrix_sync(sws + vi * lds + vj, acc, lds, wmma::mem_row_major);
      __syncwarp();
      // V' = U - W S in bf16, in place of U (the next product's operand) and out for the output pass.
      const LaneRow lr = LaneSlice();
      const int r = vi + lr.row, col = vj + lr.col;
      bf16* urow = su + r * ldb + col;
      float x[8];
#pragma unroll
      for (int t = 0; t < 8; ++t) x[t] = __bfloat162float(urow[t]) - sws[r * lds + col + t];
      StoreRow8(urow, x);
      StoreRow8(p.ws.vn + cell * c * dv + static_cast<int64_t>(r) * dv + j0 + col, x);
    }
    __syncthreads();
    // S = e^(G_C) S + Kd^T V', each warp on its own tiles of the float32 state.
    const float decay = p.ws.decay[cell];
    const int s_tiles = (dk / 16) * tiles_n;
    for (int tile = warp; tile < s_tiles; tile += kWarps) {
      const int si = tile / tiles_n * 16, sj = tile % tiles_n * 16;
      AccBf16 s;
      wmma::load_matrix_sync(s, ss + si * lds + sj, lds, wmma::mem_row_major);
#pragma unroll
      for (int t = 0; t < s.num_elements; ++t) s.x[t] *= decay;
      MmaBf16<ColMajor, RowMajor>(s, sk, ldk, su, ldb, si, sj, 0, c);
      wmma::store_matrix_sync(ss + si * lds + sj, s, lds, wmma::mem_row_major);
    }
    __syncthreads();  // the stage's last read before the next prefetch refills it
  }
  __syncthreads();  // without chunks, the initial state's tile load is still in flight
  for (int idx = threadIdx.x; idx < dk * BV; idx += blockDim.x) {
    StoreFinalState(p, seq, h, idx / BV, j0 + idx % BV, dk, dv, ss[(idx / BV) * lds + idx % BV]);
  }
}

// Shared memory of the output pass: Qe [c, dk] and the starting state [dk, BV] (transposed: [BV, dk]) in
// bf16 (later O in float32 over them), then the scores [c, c] and V' [c, BV] (transposed: [BV, c]) in
// bf16. About 54 KB at C = 64, dk = 128, BV = 64.
struct OutputLayout {
  int64_t union_bytes, total;
  __host__ __device__ OutputLayout(int64_t c, int64_t dk, int64_t bv, bool transposed) {
    const int64_t state = transposed ? bv * (dk + kPadBf16) : dk * (bv + kPadBf16);
    const int64_t vn = transposed ? bv * (c + kPadBf16) : c * (bv + kPadBf16);
    union_bytes = RoundUp128(Max64((c * (dk + kPadBf16) + state) * 2, c * (bv + kPad) * 4));
    total = union_bytes + (c * (c + kPadBf16) + vn) * 2;
  }
};

template <int BV, class D, bool kTransposed>
__global__ void __launch_bounds__(kThreads) OutputKernelBf16(PassArgs<bf16> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int c = D::c(p.c), dk = D::dk(p.dk), dv = D::dv(p.dv);
  const int ldk = dk + kPadBf16, ldc = c + kPadBf16, lds = BV + kPad;
  // Leading dimensions of the state and V' tiles: rows of BV value columns, or of dk keys and c tokens.
  const int ld_state = kTransposed ? ldk : BV + kPadBf16, ld_vn = kTransposed ? ldc : BV + kPadBf16;
  const int col_blocks = dv / BV, j0 = static_cast<int>(blockIdx.x % col_blocks) * BV;
  const int h = static_cast<int>(blockIdx.x / col_blocks % p.heads);
  const int64_t id = blockIdx.x / col_blocks / p.heads;
  ChunkTokens chunk;
  if (!FindChunk(p.offsets, p.n, c, id, &chunk)) return;
  const OutputLayout layout(c, dk, BV, kTransposed);
  bf16* sq = reinterpret_cast<bf16*>(smem);    // [c, ldk]: Qe
  bf16* ss = sq + c * ldk;                     // [dk, BV] or [BV, dk]: the chunk's starting state
  float* so = reinterpret_cast<float*>(smem);  // [c, lds]: O, after sq's and ss's last read
  bf16* sp = reinterpret_cast<bf16*>(smem + layout.union_bytes);  // [c, ldc]: scores
  bf16* sv = sp + c * ldc;                                         // [c, BV] or [BV, c]: V'
  const int64_t cell = id * p.heads + h;
  const bf16* qe = p.ws.qe + cell * c * dk;
  const bf16* sc = p.ws.scores + cell * c * c;
  LoadTileAsync(sq, ldk, c, dk, [qe, dk](int i) { return qe + i * dk; });
  LoadTileAsync(sp, ldc, c, c, [sc, c](int i) { return sc + i * c; });
  if constexpr (kTransposed) {
    const bf16* st = p.ws.states + cell * dk * dv + static_cast<int64_t>(j0) * dk;
    const bf16* vn = p.ws.vn + cell * c * dv + static_cast<int64_t>(j0) * c;
    LoadTileAsync(ss, ld_state, BV, dk, [st, dk](int i) { return st + static_cast<int64_t>(i) * dk; });
    LoadTileAsync(sv, ld_vn, BV, c, [vn, c](int i) { return vn + static_cast<int64_t>(i) * c; });
  } else {
    const bf16* st = p.ws.states + cell * dk * dv + j0;
    const bf16* vn = p.ws.vn + cell * c * dv + j0;
    LoadTileAsync(ss, ld_state, dk, BV, [st, dv](int i) { return st + static_cast<int64_t>(i) * dv; });
    LoadTileAsync(sv, ld_vn, c, BV, [vn, dv](int i) { return vn + static_cast<int64_t>(i) * dv; });
  }
  AsyncCommit();
  AsyncWait<0>();
  __syncthreads();
  // (c / 16) (BV / 16) <= 16 tiles (c, BV <= 64): at most two a warp.
  constexpr int kMaxTiles = 2;
  const int warp = threadIdx.x / 32, tiles_n = BV / 16, tiles = (c / 16) * tiles_n;
  AccBf16 acc[kMaxTiles];
#pragma unroll
  for (int t = 0; t < kMaxTiles; ++t) {
    const int tile = warp + t * kWarps;
    if (tile < tiles) {
      const int i0 = tile / tiles_n * 16, jt = tile % tiles_n * 16;
      using LB = std::conditional_t<kTransposed, ColMajor, RowMajor>;
      wmma::fill_fragment(acc[t], 0.0f);
      MmaBf16<RowMajor, LB>(acc[t], sq, ldk, ss, ld_state, i0, jt, 0, dk);
      MmaBf16<RowMajor, LB>(acc[t], sp, ldc, sv, ld_vn, i0, jt, 0, i0 + 16);  // zero above the diagonal
    }
  }
  __syncthreads();  // sq's and ss's last read: their region takes O
  bf16* o = static_cast<bf16*>(p.o);
  const LaneRow lr = LaneSlice();
#pragma unroll
  for (int t = 0; t < kMaxTiles; ++t) {
    const int tile = warp + t * kWarps;
    if (tile < tiles) {
      const int i0 = tile / tiles_n * 16, jt = tile % tiles_n * 16;
      wmma::store_matrix_sync(so + i0 * lds + jt, acc[t], lds, wmma::mem_row_major);
      __syncwarp();
      const int r = i0 + lr.row, col = jt + lr.col;
      if (r < chunk.valid) {
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = so[r * lds + col + e];
        StoreRow8(o + ((chunk.tok0 + r) * p.heads + h) * dv + j0 + col, x);
      }
    }
  }
}

template <typename Kernel>
void Launch(Kernel kernel, int64_t blocks, int64_t bytes, const PassArgs<bf16>& args, cudaStream_t stream) {
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes), stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Warps per 16 value columns in the register state pass (4; DELTASERVE_GDN_STATE_SPLIT = 1 or 2 selects the
// others, for benchmarks that compare them in one process environment each).
int StateSplit() {
  static const int split = [] {
    const char* env = std::getenv("DELTASERVE_GDN_STATE_SPLIT");
    const int v = env != nullptr ? std::atoi(env) : 4;
    return v == 1 || v == 2 ? v : 4;
  }();
  return split;
}

}  // namespace

// Off until measured against the two passes on the GPU (docs/kernels.md); tests and benchmarks set it.
// Read at every call (a lookup per layer's prefill, beside milliseconds of kernels), so that one test
// process compares both paths.
bool FusedOutputPass() {
  const char* env = std::getenv("DELTASERVE_GDN_FUSED_OUTPUT");
  return env != nullptr && std::atoi(env) == 1;
}

namespace {

// State blocks of 32 value columns (16 where dv is not a multiple of 32); output blocks of 64 (32, 16):
// the output pass reads Qe and the scores once per column block, so wider blocks read them fewer times.
template <class D>
void LaunchPasses(const PassArgs<bf16>& a, int64_t chunks, bool fused, cudaStream_t stream) {
  const int64_t c = a.c, dk = a.dk, dv = a.dv, cells = static_cast<int64_t>(a.n) * a.heads;
  auto state = [&](auto kernel, int64_t bv) {
    Launch(kernel, cells * (dv / bv), StateLayout(c, dk, bv).total, a, stream);
  };
  auto output = [&](auto kernel, int64_t bv, bool transposed) {
    Launch(kernel, chunks * a.heads * (dv / bv), OutputLayout(c, dk, bv, transposed).total, a, stream);
  };
  if constexpr (D::kStatic) {
    static_assert(std::is_same<D, QwenDims>::value, "the register state pass is built for Qwen3.5's shape");
    LaunchBf16StateRegs(a, StateSplit(), fused, stream);
    if (chunks > 0 && !fused) output(OutputKernelBf16<64, D, true>, 64, true);
  } else {
    if (dv % 32 == 0) {
      state(StateKernelBf16<32, D>, 32);
    } else {
      state(StateKernelBf16<16, D>, 16);
    }
    if (chunks == 0) return;
    if (dv % 64 == 0) {
      output(OutputKernelBf16<64, D, false>, 64, false);
    } else if (dv % 32 == 0) {
      output(OutputKernelBf16<32, D, false>, 32, false);
    } else {
      output(OutputKernelBf16<16, D, false>, 16, false);
    }
  }
}

}  // namespace

void LaunchBf16Passes(const PassArgs<bf16>& args, int64_t chunks, bool qwen_dims, bool fused_output,
                      cudaStream_t stream) {
  if (args.n == 0) return;
  if (qwen_dims) {
    LaunchPasses<QwenDims>(args, chunks, fused_output, stream);
  } else {
    LaunchPasses<RunTimeDims>(args, chunks, false, stream);
  }
}

}  // namespace deltaserve::kernels::internal::gdn
