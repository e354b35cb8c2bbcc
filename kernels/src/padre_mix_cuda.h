// The fused CUDA body of the PADRe mixer, between its two projections (padre_mix_cuda.cu): the depthwise
// K x K mixing plus token mean, the Hadamard products, the per-term RMS norms and their sum, in one launch.
#ifndef DELTASERVE_KERNELS_SRC_PADRE_MIX_CUDA_H_
#define DELTASERVE_KERNELS_SRC_PADRE_MIX_CUDA_H_

#include <cstdint>

namespace deltaserve::kernels::internal {

// Raw pointers to contiguous CUDA tensors (PadreMixer has validated shapes, dtypes and the device), all of
// one element type (float32 or bfloat16) but `mean`:
//   y [batch, grid_h * grid_w, degree * dim]: the stacked projections; mean [batch, degree * dim] float32:
//   their token means; mix_weight [K * K, degree * dim], tap-major (tap = row * K + column, so one tap's
//   channels are contiguous); mix_global [degree * dim]; norm_weight [degree, dim];
//   out [batch, grid_h * grid_w, dim]: sum_k H_k / sqrt(mean_D(H_k^2) + eps) * norm_weight[k], before the
//   output projection. float32 arithmetic throughout, one rounding at the store.
struct PadreMixArgs {
  const void* y;
  const float* mean;
  const void* mix_weight;
  const void* mix_global;
  const void* norm_weight;
  void* out;
  int64_t batch;
  int grid_h, grid_w, dim, degree, kernel;
  float eps;
  bool bf16;
  int device;
};

// The largest model dimension the kernel holds in registers (one warp per token); PadreMixer keeps the
// ATen composition beyond it.
constexpr int kPadreMixMaxDim = 256;

// One launch on the device's current stream; no synchronisation, no allocation.
void PadreMixCuda(const PadreMixArgs& args);

}  // namespace deltaserve::kernels::internal

#endif  // DELTASERVE_KERNELS_SRC_PADRE_MIX_CUDA_H_
