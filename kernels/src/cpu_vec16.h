// Sixteen float lanes as GCC vector types for the CPU kernels' inner loops: one AVX-512 register in an
// avx512f target clone, two AVX2 or four SSE ones in the others, so one body serves every instruction set.
#ifndef DELTASERVE_KERNELS_SRC_CPU_VEC16_H_
#define DELTASERVE_KERNELS_SRC_CPU_VEC16_H_

#include <cstdint>
#include <cstring>

namespace deltaserve::kernels::internal {

using F16 = float __attribute__((vector_size(64)));
using U32x16 = uint32_t __attribute__((vector_size(64)));
using U16x16 = uint16_t __attribute__((vector_size(32)));

inline F16 LoadF16(const float* p) {
  F16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Sixteen bf16 values (their bits) as float32: the bits shifted into the high half.
inline F16 LoadF16(const uint16_t* p) {
  U16x16 h;
  std::memcpy(&h, p, sizeof(h));
  const U32x16 bits = __builtin_convertvector(h, U32x16) << 16;
  F16 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

inline float Sum(F16 v) {
  float s = 0;
  for (int j = 0; j < 16; ++j) s += v[j];
  return s;
}

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_CPU_VEC16_H_
