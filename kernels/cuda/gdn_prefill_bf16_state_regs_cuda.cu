// The state pass of the fused chunked prefill for bf16 inputs at Qwen3.5's shape (C = 64, dk = dv = 128)
// with the running state in registers: the only sequential pass, so its time per chunk is the prefill's
// critical path on long sequences.
//
// One block of four warps per (sequence, value head, 64 value columns); each warp owns 16 value columns
// and holds its slice of the state transposed, S^T [16, dk], as float32 mma accumulators (64 registers a
// lane) from the first chunk to the last. Per chunk, on bf16 tensor cores (mma.sync m16n8k16):
//   X = S^T W^T       (A: S^T rounded to bf16 straight from the accumulators; B: W from shared memory)
//   V'^T = U^T - X    (rounded to bf16: the next product's A operand, again without leaving registers)
//   S^T = e^(G_C) S^T + V'^T Kd
// so no step writes the state to shared memory and reads it back, and a chunk needs one barrier (the one
// that hands a stage of W, Kd and U back to cp.async, which brings chunks ahead while this one computes).
// The workspace gets each chunk's starting state and V' transposed ([dv, dk] and [dv, c]), the layouts
// these fragments store whole 4-byte pairs of; the output pass reads them as column-major operands.
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
constexpr int kBlockV = 64;                   // value columns a block
constexpr int kRegsWarps = kBlockV / 16;
constexpr int kRegsThreads = 32 * kRegsWarps;
constexpr int kLdK = kDk + kPadBf16;      // W and Kd rows in shared memory (272 bytes: ldmatrix without conflicts)
constexpr int kLdU = kBlockV + kPadBf16;  // U rows
constexpr int kStageElems = 2 * kC * kLdK + kC * kLdU;

constexpr int64_t StateRegsSharedBytes(int stages) { return static_cast<int64_t>(stages) * kStageElems * 2; }

__device__ __forceinline__ void StorePair(bf16* p, uint32_t v) { *reinterpret_cast<uint32_t*>(p) = v; }

template <int kStages>
__global__ void __launch_bounds__(kRegsThreads, 1) StateKernelRegs(PassArgs<bf16> p) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* stages = reinterpret_cast<bf16*>(smem);
  constexpr int kColBlocks = kDv / kBlockV;
  const int j0 = static_cast<int>(blockIdx.x % kColBlocks) * kBlockV;
  const int h = static_cast<int>(blockIdx.x / kColBlocks % p.heads);
  const int seq = static_cast<int>(blockIdx.x / kColBlocks / p.heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int jw = j0 + warp * 16;  // this warp's first value column
  const int64_t state_off = (static_cast<int64_t>(seq) * p.heads + h) * kDk * kDv;

  // S^T [16, dk] as 16 C tiles of 8 key columns: tile n holds (jw + g (+8), 8n + 2t (+1)).
  Acc s[kDk / 8];
#pragma unroll
  for (int n = 0; n < kDk / 8; ++n) {
    const int d = 8 * n + 2 * t;
    if (p.initial_state != nullptr) {
      const float* init = p.initial_state + state_off;
      s[n].c[0] = init[d * kDv + jw + g];
      s[n].c[1] = init[(d + 1) * kDv + jw + g];
      s[n].c[2] = init[d * kDv + jw + g + 8];
      s[n].c[3] = init[(d + 1) * kDv + jw + g + 8];
    } else {
      s[n] = {{0.0f, 0.0f, 0.0f, 0.0f}};
    }
  }

  int64_t first, chunks;
  SequenceChunks(p.offsets, seq, kC, &first, &chunks);
  auto prefetch = [&](int64_t ci) {
    const int64_t cell = (first + ci) * p.heads + h;
    bf16* st = stages + (ci % kStages) * kStageElems;
    const bf16* w = p.ws.w + cell * kC * kDk;
    const bf16* kd = p.ws.kd + cell * kC * kDk;
    const bf16* u = p.ws.u + cell * kC * kDv + j0;
    LoadTileAsync(st, kLdK, kC, kDk, [w](int i) { return w + i * kDk; });
    LoadTileAsync(st + kC * kLdK, kLdK, kC, kDk, [kd](int i) { return kd + i * kDk; });
    LoadTileAsync(st + 2 * kC * kLdK, kLdU, kC, kBlockV, [u](int i) { return u + i * kDv; });
  };
#pragma unroll
  for (int ci = 0; ci < kStages - 1; ++ci) {
    if (ci < chunks) prefetch(ci);
    AsyncCommit();  // empty groups too: every iteration below waits for the same count
  }
  for (int64_t ci = 0; ci < chunks; ++ci) {
    AsyncWait<kStages - 2>();  // this thread's copies of chunk ci have landed
    __syncthreads();           // everyone's have, and chunk ci - 1's stage is free for chunk ci + kStages - 1
    if (ci + kStages - 1 < chunks) prefetch(ci + kStages - 1);
    AsyncCommit();
    const int64_t cell = (first + ci) * p.heads + h;
    const float decay = p.ws.decay[cell];  // used after the first product: its latency hides behind it
    const bf16* sw = stages + (ci % kStages) * kStageElems;
    const bf16* sk = sw + kC * kLdK;
    const bf16* su = sk + kC * kLdK;

    // X = S^T W^T over dk in 8 k steps; S^T in bf16 is also the chunk's starting state for the output pass.
    bf16* s_out = p.ws.states + cell * kDk * kDv + static_cast<int64_t>(jw) * kDk;
    Acc x[kC / 8];
#pragma unroll
    for (int n = 0; n < kC / 8; ++n) x[n] = {{0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int ks = 0; ks < kDk / 16; ++ks) {
      const FragA a = mma::PackA(s[2 * ks], s[2 * ks + 1]);
      const int d = 16 * ks + 2 * t;
      StorePair(s_out + g * kDk + d, a.r[0]);
      StorePair(s_out + (g + 8) * kDk + d, a.r[1]);
      StorePair(s_out + g * kDk + d + 8, a.r[2]);
      StorePair(s_out + (g + 8) * kDk + d + 8, a.r[3]);
#pragma unroll
      for (int np = 0; np < kC / 16; ++np) {
        FragB b0, b1;
        mma::LoadBPairFromRowsOfN(b0, b1, sw, kLdK, 16 * np, 16 * ks);  // W [c, dk]: rows of n
        mma::Mma(x[2 * np], a, b0);
        mma::Mma(x[2 * np + 1], a, b1);
      }
    }
    // V'^T = U^T - X, rounded to bf16, as the A fragments of the update's 4 k steps over the chunk.
    FragA va[kC / 16];
    bf16* vn_out = p.ws.vn + cell * kC * kDv + static_cast<int64_t>(jw) * kC;
#pragma unroll
    for (int n = 0; n < kC / 8; ++n) {
      const int i = 8 * n + 2 * t, j = warp * 16 + g;
      x[n].c[0] = __bfloat162float(su[i * kLdU + j]) - x[n].c[0];
      x[n].c[1] = __bfloat162float(su[(i + 1) * kLdU + j]) - x[n].c[1];
      x[n].c[2] = __bfloat162float(su[i * kLdU + j + 8]) - x[n].c[2];
      x[n].c[3] = __bfloat162float(su[(i + 1) * kLdU + j + 8]) - x[n].c[3];
    }
#pragma unroll
    for (int ks = 0; ks < kC / 16; ++ks) {
      va[ks] = mma::PackA(x[2 * ks], x[2 * ks + 1]);
      const int i = 16 * ks + 2 * t;
      StorePair(vn_out + g * kC + i, va[ks].r[0]);
      StorePair(vn_out + (g + 8) * kC + i, va[ks].r[1]);
      StorePair(vn_out + g * kC + i + 8, va[ks].r[2]);
      StorePair(vn_out + (g + 8) * kC + i + 8, va[ks].r[3]);
    }
    // S^T = e^(G_C) S^T + V'^T Kd over the chunk in 4 k steps.
#pragma unroll
    for (int n = 0; n < kDk / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n].c[e] *= decay;
    }
#pragma unroll
    for (int ks = 0; ks < kC / 16; ++ks) {
#pragma unroll
      for (int np = 0; np < kDk / 16; ++np) {
        FragB b0, b1;
        mma::LoadBPairFromRowsOfK(b0, b1, sk, kLdK, 16 * np, 16 * ks);  // Kd [c, dk]: rows of k
        mma::Mma(s[2 * np], va[ks], b0);
        mma::Mma(s[2 * np + 1], va[ks], b1);
      }
    }
  }
  AsyncWait<0>();  // no copy may outlive the block
  float* fin = p.final_state + state_off;
#pragma unroll
  for (int n = 0; n < kDk / 8; ++n) {
    const int d = 8 * n + 2 * t;
    fin[d * kDv + jw + g] = s[n].c[0];
    fin[(d + 1) * kDv + jw + g] = s[n].c[1];
    fin[d * kDv + jw + g + 8] = s[n].c[2];
    fin[(d + 1) * kDv + jw + g + 8] = s[n].c[3];
  }
}

template <int kStages>
void Launch(const PassArgs<bf16>& args, int64_t blocks, cudaStream_t stream) {
  const int64_t bytes = StateRegsSharedBytes(kStages);
  C10_CUDA_CHECK(cudaFuncSetAttribute(StateKernelRegs<kStages>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  StateKernelRegs<kStages><<<static_cast<unsigned>(blocks), kRegsThreads, static_cast<size_t>(bytes), stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void LaunchBf16StateRegs(const PassArgs<bf16>& args, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(args.n) * args.heads * (kDv / kBlockV);
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  // Few blocks (long sequences, one an SM): three stages, two chunks in flight to hide the load latency
  // that nothing else on the SM hides. Many blocks: two stages, so that two blocks share an SM.
  if (blocks <= sms) {
    Launch<3>(args, blocks, stream);
  } else {
    Launch<2>(args, blocks, stream);
  }
}

}  // namespace deltaserve::kernels::internal::gdn
