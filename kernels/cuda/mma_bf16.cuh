// Warp-level bf16 tensor-core products by PTX (mma.sync m16n8k16, float32 accumulation) and the ldmatrix
// loads that feed them, for kernels that keep their accumulators in registers across steps.
#ifndef DELTASERVE_KERNELS_CUDA_MMA_BF16_CUH_
#define DELTASERVE_KERNELS_CUDA_MMA_BF16_CUH_

#include <cuda_bf16.h>

#include <cstdint>

#include "tma_bulk.cuh"  // SharedAddress

namespace deltaserve::kernels::internal::mma {

// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4):
//  A (16 x 16, row-major): a[0] = (g, 2t..2t+1), a[1] = (g + 8, 2t..), a[2] = (g, 2t + 8..), a[3] = (g + 8, 2t + 8..)
//  B (16 x 8, "col"):      b[0] = (rows 2t..2t+1, column g), b[1] = (rows 2t + 8.., column g)
//  C (16 x 8, float):      c[0..1] = (g, 2t..2t+1), c[2..3] = (g + 8, 2t..2t+1)
// so the C tiles of two neighbouring 8-column blocks, rounded to bf16, are the A fragment of one 16-wide
// k step (PackA): a product's result feeds the next product without leaving registers.
struct FragA {
  uint32_t r[4];
};
struct FragB {
  uint32_t r[2];
};
struct Acc {
  float c[4];
};

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The A fragment of k step [16 s, 16 s + 16) from the C tiles of columns [16 s, 16 s + 8) and [16 s + 8, 16 s + 16).
__device__ __forceinline__ FragA PackA(const Acc& left, const Acc& right) {
  return {{PackBf16(left.c[0], left.c[1]), PackBf16(left.c[2], left.c[3]), PackBf16(right.c[0], right.c[1]),
           PackBf16(right.c[2], right.c[3])}};
}

// d += a b.
__device__ __forceinline__ void Mma(Acc& d, const FragA& a, const FragB& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d.c[0]), "+f"(d.c[1]), "+f"(d.c[2]), "+f"(d.c[3])
      : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]));
}

// Four 8 x 8 bf16 matrices from shared memory: lanes 8m .. 8m + 7 give the 16-byte rows of matrix m, and
// each lane receives (row g, columns 2t..2t+1) of every matrix (.trans: (rows 2t..2t+1, column g)).
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const __nv_bfloat16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const __nv_bfloat16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row)));
}

// B fragments of two neighbouring 8-column blocks [n0, n0 + 8) and [n0 + 8, n0 + 16) for the k step
// [k0, k0 + 16), where B's element (k, n) is stored at m[n * ld + k] (B^T row-major: rows of n).
__device__ __forceinline__ void LoadBPairFromRowsOfN(FragB& b0, FragB& b1, const __nv_bfloat16* m, int ld, int n0,
                                                     int k0) {
  const int lane = threadIdx.x % 32, mat = lane / 8, row = lane % 8;
  // Matrices: (n0.., k0..), (n0.., k0 + 8..), (n0 + 8.., k0..), (n0 + 8.., k0 + 8..).
  uint32_t r[4];
  LdMatrixX4(r, m + (n0 + (mat / 2) * 8 + row) * ld + k0 + (mat % 2) * 8);
  b0 = {{r[0], r[1]}};
  b1 = {{r[2], r[3]}};
}

// The same where B's element (k, n) is stored at m[k * ld + n] (B row-major: rows of k).
__device__ __forceinline__ void LoadBPairFromRowsOfK(FragB& b0, FragB& b1, const __nv_bfloat16* m, int ld, int n0,
                                                     int k0) {
  const int lane = threadIdx.x % 32, mat = lane / 8, row = lane % 8;
  // Matrices (transposed on load): (k0.., n0..), (k0 + 8.., n0..), (k0.., n0 + 8..), (k0 + 8.., n0 + 8..).
  uint32_t r[4];
  LdMatrixX4Trans(r, m + (k0 + (mat % 2) * 8 + row) * ld + n0 + (mat / 2) * 8);
  b0 = {{r[0], r[1]}};
  b1 = {{r[2], r[3]}};
}

}  // namespace deltaserve::kernels::internal::mma

#endif  // DELTASERVE_KERNELS_CUDA_MMA_BF16_CUH_
