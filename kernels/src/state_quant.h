// Quantization rules of the recurrent state pool, shared by the fused CPU step, the ATen (any device)
// step and the CUDA kernel's host side: value ranges, scale granularity, and the rounding stream.
#ifndef DELTASERVE_KERNELS_SRC_STATE_QUANT_H_
#define DELTASERVE_KERNELS_SRC_STATE_QUANT_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "absl/types/span.h"
#include "deltaserve/kernels/recurrent_state.h"

namespace deltaserve::kernels::internal {

inline bool IsScaled(StateDtype d) {
  return d == StateDtype::kInt8Stochastic || d == StateDtype::kInt8 || d == StateDtype::kInt8Coarse ||
         d == StateDtype::kFloat8E4M3;
}
inline bool IsStochastic(StateDtype d) { return d == StateDtype::kInt8Stochastic; }
inline bool IsCoarse(StateDtype d) { return d == StateDtype::kInt8Coarse; }
// Largest magnitude a stored value may take: the scale maps a row's max |x| onto it.
inline float QuantMax(StateDtype d) { return d == StateDtype::kFloat8E4M3 ? 448.0f : 127.0f; }
at::ScalarType StorageType(StateDtype d);

// Counter-based random bits for stochastic rounding: a pure function of (seed, step, slot, head,
// index), so a step is reproducible and needs no generator state on the device.
C10_HOST_DEVICE inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Uniform in [0, 1) for element j of a row, from the row's key: a 32-bit integer hash (lowbias32 by
// Chris Wellons' constants) that vectorises on CPUs and is cheap on GPUs; 24 bits of resolution.
C10_HOST_DEVICE inline float RowUniform(uint32_t row_key, uint32_t j) {
  uint32_t x = row_key ^ (j * 0x9E3779B9u);
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

// How one step stores a pool's states: scaled or not, one scale per head or per row, the largest stored
// magnitude, stochastic rounding, and the seed of this step's rounding stream (every device draws the
// same bits from it).
struct StepQuantization {
  bool scaled = false, coarse = false, stochastic = false;
  float qmax = 0;
  uint64_t base = 0;
};
inline StepQuantization QuantizationOf(const RecurrentStatePool& pool) {
  return {IsScaled(pool.dtype), IsCoarse(pool.dtype), IsStochastic(pool.dtype), QuantMax(pool.dtype),
          Mix64(pool.seed + pool.step * 0x9E3779B97F4A7C15ULL)};
}

// Dequantized fp32 states of `slots` (any device). With `host_slots` (the same values, distinct), rows
// move as plain copies of runs of consecutive slots instead of index_select.
at::Tensor GatherDequantized(const RecurrentStatePool& pool, const at::Tensor& slots,
                             absl::Span<const int64_t> host_slots = {});
// Quantizes fp32 states and stores them at `slots` (copies of runs with `host_slots`, as above);
// stochastic rounding draws from at::rand_like.
void ScatterQuantized(RecurrentStatePool& pool, const at::Tensor& slots, const at::Tensor& states,
                      bool stochastic, absl::Span<const int64_t> host_slots = {});

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_STATE_QUANT_H_
