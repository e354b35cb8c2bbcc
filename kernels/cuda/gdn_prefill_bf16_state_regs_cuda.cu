// The state pass of the fused chunked prefill for bf16 inputs at Qwen3.5's shape (C = 64, dk = dv = 128)
// with the running state in registers: the only sequential pass, so its time per chunk is the prefill's
// critical path on long sequences.
//
// One block per (sequence, value head, 32 value columns): two column groups of 16, each split over kSplit
// warps by key rows (dk / kSplit each). A warp holds its part of the state transposed, S^T [16, dk / kSplit],
// as float32 mma accumulators from the first chunk to the last. Per chunk, on bf16 tensor cores (mma.sync
// m16n8k16):
//   X = S^T W^T       (A: S^T rounded to bf16 straight from the accumulators; B: W from shared memory),
//                     each warp over its key rows, the kSplit partial sums added through shared memory
//   V'^T = U^T - X    (rounded to bf16: the next product's A operand, again without leaving registers)
//   S^T = e^(G_C) S^T + V'^T Kd   (each warp its key rows)
// so the state never goes to shared memory and back, and a chunk needs one block barrier (the one that hands
// a stage of W, Kd and U back to cp.async, which brings chunks ahead while this one computes) and one
// barrier of each column group's warps. Splitting the key rows spreads one sequence's chain of chunks over
// more of the SM's tensor cores: on a long sequence the pass is a chain of dependent products, and one warp
// per 16 columns (the first version) left it at half the SMs and one tensor core per chain.
// The workspace gets each chunk's starting state and V' transposed ([dv, dk] and [dv, c]), the layouts
// these fragments store whole 4-byte pairs of; the output pass reads them as column-major operands.
//
// With the output in the same loop (kOutput, the fused state-and-output pass), nothing goes to the
// workspace: the chunk's output O^T = S^T Qe^T + V'^T scores^T is formed from the same bf16 operands the
// output pass would read back (S^T rounded once, V'), where they already are. S^T Qe^T takes the A fragments
// of X = S^T W^T and is summed over the key-row split in the same exchange; each warp of a group then owns
// 64 / kSplit of the chunk's tokens for the scores' product and the sum. O goes through shared memory to
// leave as whole 16-byte rows one chunk later, behind the next chunk's block barrier. It spares the
// per-chunk states and V' (40% of the workspace, about 400 MB at 16k tokens and 32 heads), their writes and
// re-reads and the output pass's launch, and costs Qe and the scores in every stage (two stages, not three).
#include <c10/cuda/CUDAException.h>

#include "gdn_prefill_common.cuh"
#include "mma_bf16.cuh"

namespace deltaserve::kernels::internal::gdn {
namespace {

using bf16 = __nv_bfloat16;
using mma::Acc;
using mma::FragA;
using mma::FragB;

constexpr int kC = 64, kDk = 128, kDv = 128;  // QwenDims
constexpr int kBlockV = 32;                   // value columns a block: two groups of 16
constexpr int kGroups = kBlockV / 16;
constexpr int kLdK = kDk + kPadBf16;      // W and Kd rows in shared memory (272 bytes: ldmatrix without conflicts)
constexpr int kLdU = kBlockV + kPadBf16;  // U rows, and rows of the staged output
constexpr int kLdP = kC + kPadBf16;       // score rows
constexpr int kXTiles = kC / 8;           // C tiles of X = S^T W^T (and of O^T) per warp
// A stage: W, Kd [c, kLdK] and U [c, kLdU]; with the output also Qe [c, kLdK] and the scores [c, kLdP].
constexpr int StageElems(bool output) { return 2 * kC * kLdK + kC * kLdU + (output ? kC * kLdK + kC * kLdP : 0); }
constexpr int kOutputStages = 2;  // 3 stages of 5 tiles do not fit beside the exchange

// The stages, then each warp's partial X (and O^T: kXTiles float4 per lane each) for its group's other
// warps, then two chunks' staged output [c, kLdU] in bf16, then V'^T's A fragments (a uint4 per lane and
// k step) that each warp of a group passes to the others.
template <int kSplit, bool kOutput>
constexpr int64_t StateRegsSharedBytes(int stages) {
  const int64_t exchange = kSplit > 1 ? (kOutput ? 2 : 1) * kGroups * kSplit * kXTiles * 32 * 16 : 0;
  const int64_t output = kOutput ? 2 * kC * kLdU * 2 + (kSplit > 1 ? kGroups * (kC / 16) * 32 * 16 : 0) : 0;
  return static_cast<int64_t>(stages) * StageElems(kOutput) * 2 + exchange + output;
}

__device__ __forceinline__ void StorePair(bf16* p, uint32_t v) { *reinterpret_cast<uint32_t*>(p) = v; }

// Waits for the kSplit warps of column group `group` (barrier 0 is __syncthreads').
template <int kSplit>
__device__ __forceinline__ void GroupBarrier(int group) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(group + 1), "n"(32 * kSplit) : "memory");
}

// The block's 32 columns of the chunk's output, staged as [c, kLdU] bf16, to o as whole 16-byte rows: one
// row segment a thread (64 rows of 4 segments: the block's 256 threads at kSplit = 4), rows past the
// sequence's end left alone.
__device__ __forceinline__ void StoreStagedOutput(const PassArgs<bf16>& p, const bf16* staged, int64_t tok0,
                                                  int64_t valid, int h, int j0) {
  bf16* o = static_cast<bf16*>(p.o);
  for (int idx = threadIdx.x; idx < kC * kBlockV / 8; idx += blockDim.x) {
    const int r = idx / (kBlockV / 8), q = idx % (kBlockV / 8);
    if (r < valid) {
      *reinterpret_cast<uint4*>(o + ((tok0 + r) * p.heads + h) * kDv + j0 + 8 * q) =
          *reinterpret_cast<const uint4*>(staged + r * kLdU + 8 * q);
    }
  }
}

// Tile n of a group's sum over its kSplit partials, given this warp's own `mine`: paired as (p + p^1) +
// (p^2 + p^3), so that every warp of the group gets the same bits whichever it is (float addition is
// commutative, not associative). Their V' must agree bit for bit: each warp updates its key rows with it,
// and with the output one warp's V' serves them all.
template <int kSplit>
__device__ __forceinline__ Acc SumOverSplit(const Acc& mine, const float4* buf, int group, int part, int n, int lane) {
  auto at = [&](int q) { return buf[((group * kSplit + q) * kXTiles + n) * 32 + lane]; };
  auto add = [](float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); };
  float4 sum = add(make_float4(mine.c[0], mine.c[1], mine.c[2], mine.c[3]), at(part ^ 1));
  if constexpr (kSplit == 4) sum = add(sum, add(at(part ^ 2), at(part ^ 3)));
  static_assert(kSplit == 2 || kSplit == 4, "a split of 2 or 4 warps");
  return {{sum.x, sum.y, sum.z, sum.w}};
}

template <int kStages, int kSplit, bool kOutput>
__global__ void __launch_bounds__(32 * kGroups * kSplit, 1) StateKernelRegs(PassArgs<bf16> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kDkW = kDk / kSplit;  // key rows a warp
  constexpr int kNt = kDkW / 8;       // its C tiles of S^T
  constexpr int kStageElems = StageElems(kOutput);
  constexpr int kExchange = kSplit > 1 ? kGroups * kSplit * kXTiles * 32 : 0;  // float4 of X partials
  constexpr int kOTiles = kXTiles / kSplit;  // O^T tiles (8 tokens each) a warp owns
  bf16* stages = reinterpret_cast<bf16*>(smem);
  float4* xbuf = reinterpret_cast<float4*>(smem + static_cast<int64_t>(kStages) * kStageElems * 2);
  float4* obuf = xbuf + kExchange;                                              // O^T partials (kOutput)
  bf16* staged_o = reinterpret_cast<bf16*>(obuf + (kOutput ? kExchange : 0));  // 2 x [c, kLdU] (kOutput)
  uint4* vbuf = reinterpret_cast<uint4*>(staged_o + 2 * kC * kLdU);             // V'^T fragments (kOutput)
  constexpr int kColBlocks = kDv / kBlockV;
  const int j0 = static_cast<int>(blockIdx.x % kColBlocks) * kBlockV;
  const int h = static_cast<int>(blockIdx.x / kColBlocks % p.heads);
  const int seq = static_cast<int>(blockIdx.x / kColBlocks / p.heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int group = warp / kSplit, part = warp % kSplit;
  const int jl = group * 16;          // the group's first column within the block
  const int jw = j0 + jl;             // and within the head
  const int d0 = part * kDkW;         // this warp's first key row

  // S^T [16, kDkW] as kNt C tiles of 8 key rows: tile n holds (jw + g (+8), d0 + 8n + 2t (+1)).
  Acc s[kNt];
#pragma unroll
  for (int n = 0; n < kNt; ++n) {
    const int d = d0 + 8 * n + 2 * t;
    s[n].c[0] = InitialStateAt(p, seq, h, d, jw + g, kDk, kDv);
    s[n].c[1] = InitialStateAt(p, seq, h, d + 1, jw + g, kDk, kDv);
    s[n].c[2] = InitialStateAt(p, seq, h, d, jw + g + 8, kDk, kDv);
    s[n].c[3] = InitialStateAt(p, seq, h, d + 1, jw + g + 8, kDk, kDv);
  }

  int64_t first, chunks;
  SequenceChunks(p.offsets, seq, kC, &first, &chunks);
  const int64_t seq_tok0 = p.offsets[seq], seq_end = p.offsets[seq + 1];
  auto prefetch = [&](int64_t ci) {
    const int64_t cell = (first + ci) * p.heads + h;
    bf16* st = stages + (ci % kStages) * kStageElems;
    const bf16* w = p.ws.w + cell * kC * kDk;
    const bf16* kd = p.ws.kd + cell * kC * kDk;
    const bf16* u = p.ws.u + cell * kC * kDv + j0;
    LoadTileAsync(st, kLdK, kC, kDk, [w](int i) { return w + i * kDk; });
    LoadTileAsync(st + kC * kLdK, kLdK, kC, kDk, [kd](int i) { return kd + i * kDk; });
    LoadTileAsync(st + 2 * kC * kLdK, kLdU, kC, kBlockV, [u](int i) { return u + i * kDv; });
    if constexpr (kOutput) {
      const bf16* qe = p.ws.qe + cell * kC * kDk;
      const bf16* sc = p.ws.scores + cell * kC * kC;
      bf16* sq = st + 2 * kC * kLdK + kC * kLdU;
      LoadTileAsync(sq, kLdK, kC, kDk, [qe](int i) { return qe + i * kDk; });
      LoadTileAsync(sq + kC * kLdK, kLdP, kC, kC, [sc](int i) { return sc + i * kC; });
    }
  };
  // Chunk ci's output, staged by every warp in its iteration; stored after the next block barrier.
  auto store_output = [&](int64_t ci) {
    const int64_t tok0 = seq_tok0 + ci * kC;
    StoreStagedOutput(p, staged_o + (ci % 2) * kC * kLdU, tok0, seq_end - tok0, h, j0);
  };
#pragma unroll
  for (int ci = 0; ci < kStages - 1; ++ci) {
    if (ci < chunks) prefetch(ci);
    AsyncCommit();  // empty groups too: every iteration below waits for the same count
  }
  for (int64_t ci = 0; ci < chunks; ++ci) {
    AsyncWait<kStages - 2>();  // this thread's copies of chunk ci have landed
    __syncthreads();           // everyone's have; chunk ci - 1's stage and partial sums are free again
    if (ci + kStages - 1 < chunks) prefetch(ci + kStages - 1);
    AsyncCommit();
    if constexpr (kOutput) {
      if (ci > 0) store_output(ci - 1);
    }
    const int64_t cell = (first + ci) * p.heads + h;
    const float decay = p.ws.decay[cell];  // used after the first product: its latency hides behind it
    const bf16* sw = stages + (ci % kStages) * kStageElems;
    const bf16* sk = sw + kC * kLdK;
    const bf16* su = sk + kC * kLdK;
    const bf16* sq = su + kC * kLdU;  // Qe, then the scores (kOutput)
    const bf16* sp = sq + kC * kLdK;

    // X = S^T W^T over this warp's key rows (with the output, also S^T Qe^T: the same A fragments); S^T in
    // bf16 is also the chunk's starting state for the output pass.
    bf16* s_out = kOutput ? nullptr : p.ws.states + cell * kDk * kDv + static_cast<int64_t>(jw) * kDk + d0;
    Acc x[kXTiles], o[kOutput ? kXTiles : 1];
#pragma unroll
    for (int n = 0; n < kXTiles; ++n) x[n] = {{0.0f, 0.0f, 0.0f, 0.0f}};
    if constexpr (kOutput) {
#pragma unroll
      for (int n = 0; n < kXTiles; ++n) o[n] = {{0.0f, 0.0f, 0.0f, 0.0f}};
    }
#pragma unroll
    for (int ks = 0; ks < kDkW / 16; ++ks) {
      const FragA a = mma::PackA(s[2 * ks], s[2 * ks + 1]);
      if constexpr (!kOutput) {
        const int d = 16 * ks + 2 * t;
        StorePair(s_out + g * kDk + d, a.r[0]);
        StorePair(s_out + (g + 8) * kDk + d, a.r[1]);
        StorePair(s_out + g * kDk + d + 8, a.r[2]);
        StorePair(s_out + (g + 8) * kDk + d + 8, a.r[3]);
      }
#pragma unroll
      for (int np = 0; np < kXTiles / 2; ++np) {
        FragB b0, b1;
        mma::LoadBPairFromRowsOfN(b0, b1, sw, kLdK, 16 * np, d0 + 16 * ks);  // W [c, dk]: rows of n
        mma::Mma(x[2 * np], a, b0);
        mma::Mma(x[2 * np + 1], a, b1);
        if constexpr (kOutput) {
          mma::LoadBPairFromRowsOfN(b0, b1, sq, kLdK, 16 * np, d0 + 16 * ks);  // Qe [c, dk]: rows of n
          mma::Mma(o[2 * np], a, b0);
          mma::Mma(o[2 * np + 1], a, b1);
        }
      }
    }
    if constexpr (kSplit > 1) {
      // The group's partial sums: each warp leaves its own and adds the others'. With the output each warp
      // adds only the tiles of the tokens it owns (of X and O^T: a reduce-scatter, a quarter of the reads at
      // split 4) and passes its part of V' on in bf16 below; without, all of X.
      const int slot = (group * kSplit + part) * kXTiles * 32;
#pragma unroll
      for (int n = 0; n < kXTiles; ++n) {
        xbuf[slot + n * 32 + lane] = make_float4(x[n].c[0], x[n].c[1], x[n].c[2], x[n].c[3]);
        if constexpr (kOutput) obuf[slot + n * 32 + lane] = make_float4(o[n].c[0], o[n].c[1], o[n].c[2], o[n].c[3]);
      }
      GroupBarrier<kSplit>(group);
#pragma unroll
      for (int n = 0; n < kXTiles; ++n) {
        if (!kOutput || n / kOTiles == part) x[n] = SumOverSplit<kSplit>(x[n], xbuf, group, part, n, lane);
        if constexpr (kOutput) {
          if (n / kOTiles == part) o[n] = SumOverSplit<kSplit>(o[n], obuf, group, part, n, lane);
        }
      }
    }
    // V'^T = U^T - X, rounded to bf16, as the A fragments of the update's 4 k steps over the chunk (with
    // the output: this warp's tokens here, the others' from the warps that own them).
    FragA va[kC / 16];
#pragma unroll
    for (int n = 0; n < kXTiles; ++n) {
      if (kOutput && n / kOTiles != part) continue;
      const int i = 8 * n + 2 * t, j = jl + g;
      x[n].c[0] = __bfloat162float(su[i * kLdU + j]) - x[n].c[0];
      x[n].c[1] = __bfloat162float(su[(i + 1) * kLdU + j]) - x[n].c[1];
      x[n].c[2] = __bfloat162float(su[i * kLdU + j + 8]) - x[n].c[2];
      x[n].c[3] = __bfloat162float(su[(i + 1) * kLdU + j + 8]) - x[n].c[3];
    }
    bf16* vn_out = kOutput ? nullptr : p.ws.vn + cell * kC * kDv + static_cast<int64_t>(jw) * kC;
#pragma unroll
    for (int ks = 0; ks < kC / 16; ++ks) {
      if constexpr (kOutput) {
        if (2 * ks / kOTiles != part) continue;
        va[ks] = mma::PackA(x[2 * ks], x[2 * ks + 1]);
        // Lane l's fragment holds the same (column, token) positions in every warp of the group.
        if constexpr (kSplit > 1) {
          vbuf[(group * (kC / 16) + ks) * 32 + lane] = make_uint4(va[ks].r[0], va[ks].r[1], va[ks].r[2], va[ks].r[3]);
        }
        continue;
      }
      va[ks] = mma::PackA(x[2 * ks], x[2 * ks + 1]);
      if (part == 0) {  // every warp of the group has the same V'
        const int i = 16 * ks + 2 * t;
        StorePair(vn_out + g * kC + i, va[ks].r[0]);
        StorePair(vn_out + (g + 8) * kC + i, va[ks].r[1]);
        StorePair(vn_out + g * kC + i + 8, va[ks].r[2]);
        StorePair(vn_out + (g + 8) * kC + i + 8, va[ks].r[3]);
      }
    }
    if constexpr (kOutput && kSplit > 1) {
      GroupBarrier<kSplit>(group);
#pragma unroll
      for (int ks = 0; ks < kC / 16; ++ks) {
        if (2 * ks / kOTiles == part) continue;
        const uint4 v = vbuf[(group * (kC / 16) + ks) * 32 + lane];
        va[ks] = {{v.x, v.y, v.z, v.w}};
      }
    }
    if constexpr (kOutput) {
      // O^T += V'^T scores^T for this warp's tokens (pairs of 8-token tiles), the scores' zero upper
      // triangle skipped: token pair tp needs the k steps up to its own. Then staged for the store.
      static_assert(kOTiles % 2 == 0, "a warp owns whole pairs of token tiles");
      bf16* staged = staged_o + (ci % 2) * kC * kLdU;
#pragma unroll
      for (int tp = 0; tp < kXTiles / 2; ++tp) {
        if (2 * tp / kOTiles != part) continue;  // another warp's tokens
        const int n = 2 * tp;
#pragma unroll
        for (int ks = 0; ks < kC / 16; ++ks) {
          if (ks <= tp) {
            FragB b0, b1;
            mma::LoadBPairFromRowsOfN(b0, b1, sp, kLdP, 16 * tp, 16 * ks);  // scores [c, c]: rows of n
            mma::Mma(o[n], va[ks], b0);
            mma::Mma(o[n + 1], va[ks], b1);
          }
        }
#pragma unroll
        for (int m = n; m < n + 2; ++m) {
          const int i = 8 * m + 2 * t, j = jl + g;
          staged[i * kLdU + j] = __float2bfloat16_rn(o[m].c[0]);
          staged[(i + 1) * kLdU + j] = __float2bfloat16_rn(o[m].c[1]);
          staged[i * kLdU + j + 8] = __float2bfloat16_rn(o[m].c[2]);
          staged[(i + 1) * kLdU + j + 8] = __float2bfloat16_rn(o[m].c[3]);
        }
      }
    }
    // S^T = e^(G_C) S^T + V'^T Kd over the chunk in 4 k steps, this warp's key rows.
#pragma unroll
    for (int n = 0; n < kNt; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n].c[e] *= decay;
    }
#pragma unroll
    for (int ks = 0; ks < kC / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kNt / 2; ++np) {
        FragB b0, b1;
        mma::LoadBPairFromRowsOfK(b0, b1, sk, kLdK, d0 + 16 * np, 16 * ks);  // Kd [c, dk]: rows of k
        mma::Mma(s[2 * np], va[ks], b0);
        mma::Mma(s[2 * np + 1], va[ks], b1);
      }
    }
  }
  AsyncWait<0>();  // no copy may outlive the block
  if constexpr (kOutput) {
    if (chunks > 0) {
      __syncthreads();  // every warp's part of the last chunk's output is staged
      store_output(chunks - 1);
    }
  }
#pragma unroll
  for (int n = 0; n < kNt; ++n) {
    const int d = d0 + 8 * n + 2 * t;
    StoreFinalState(p, seq, h, d, jw + g, kDk, kDv, s[n].c[0]);
    StoreFinalState(p, seq, h, d + 1, jw + g, kDk, kDv, s[n].c[1]);
    StoreFinalState(p, seq, h, d, jw + g + 8, kDk, kDv, s[n].c[2]);
    StoreFinalState(p, seq, h, d + 1, jw + g + 8, kDk, kDv, s[n].c[3]);
  }
}

template <int kStages, int kSplit, bool kOutput>
void Launch(const PassArgs<bf16>& args, int64_t blocks, cudaStream_t stream) {
  const int64_t bytes = StateRegsSharedBytes<kSplit, kOutput>(kStages);
  static_assert(StateRegsSharedBytes<kSplit, kOutput>(kStages) <= 227 * 1024, "more shared memory than a block has");
  auto kernel = StateKernelRegs<kStages, kSplit, kOutput>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(blocks), 32 * kGroups * kSplit, static_cast<size_t>(bytes), stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int kSplit>
void LaunchSplit(const PassArgs<bf16>& args, int64_t blocks, int sms, bool output, cudaStream_t stream) {
  if (output) {
    Launch<kOutputStages, kSplit, true>(args, blocks, stream);
    return;
  }
  // Few blocks (long sequences, one an SM): three stages, two chunks in flight to hide the load latency
  // that nothing else on the SM hides. Many blocks: two stages, so that two blocks share an SM.
  if (blocks <= sms) {
    Launch<3, kSplit, false>(args, blocks, stream);
  } else {
    Launch<2, kSplit, false>(args, blocks, stream);
  }
}

}  // namespace

void LaunchBf16StateRegs(const PassArgs<bf16>& args, int split, bool output, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(args.n) * args.heads * (kDv / kBlockV);
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  switch (split) {
    case 1:
      LaunchSplit<1>(args, blocks, sms, output, stream);
      break;
    case 2:
      LaunchSplit<2>(args, blocks, sms, output, stream);
      break;
    default:
      LaunchSplit<4>(args, blocks, sms, output, stream);
      break;
  }
}

}  // namespace deltaserve::kernels::internal::gdn
