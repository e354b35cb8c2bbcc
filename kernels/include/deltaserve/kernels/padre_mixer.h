// The PADRe token mixer (polynomial attention drop-in replacement): projections, linear-cost token
// mixing (depthwise 2-D conv + token mean), Hadamard products up to degree d, per-token RMS norm, output.
#ifndef DELTASERVE_KERNELS_PADRE_MIXER_H_
#define DELTASERVE_KERNELS_PADRE_MIXER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace deltaserve::kernels {

// The d projections and mixings stacked along channels (term k owns channels [k*D, (k+1)*D)), so one
// matmul and one grouped convolution serve every term.
struct PadreMixerWeights {
  at::Tensor proj_weight;  // [d*D, D]
  at::Tensor proj_bias;    // [d*D]
  at::Tensor mix_weight;   // [d*D, 1, K, K], K odd
  // Optional: mix_weight tap-major, [K*K, d*D] (PadreMixWeightTapMajor), the layout the CUDA kernel reads.
  // A loader that sets it once spares every CUDA call a transposing copy; undefined, each call makes one.
  at::Tensor mix_weight_taps;
  at::Tensor mix_global;   // [d*D]: scale of each channel's token mean
  at::Tensor norm_weight;  // [d, D]
  at::Tensor out_weight;   // [D, D]
  at::Tensor out_bias;     // [D]
  double eps = 1e-6;
};

struct PadreMixerOptions {
  // On CUDA (float32 or bfloat16, D <= 256) the body between the projections is one fused kernel; false
  // runs the ATen composition there too (the fused kernel's baseline in benchmarks and tests).
  bool fused_cuda = true;
};

// x [B, N, D], N = grid_h * grid_w tokens in row-major grid order; returns [B, N, D]:
//   Y_k = x W_k^T + b_k;  Z_k = dwconv_K(Y_k) + g_k * mean_N(Y_k);  H_0 = Z_0, H_k = H_{k-1} * Z_k;
//   out = (sum_k H_k / sqrt(mean_D(H_k^2) + eps) * w_k) W_o^T + b_o.
// Cost O(B * N * D * (d*D + d*K^2 + D)): linear in N. Bad shapes give InvalidArgument naming the argument.
// mix_weight [d*D, 1, K, K] as [K*K, d*D]: tap t = row * K + column, then channels, so that a warp's 32
// channels of one tap are one coalesced read. For PadreMixerWeights::mix_weight_taps.
absl::StatusOr<at::Tensor> PadreMixWeightTapMajor(const at::Tensor& mix_weight);

absl::StatusOr<at::Tensor> PadreMixer(const at::Tensor& x, int64_t grid_h, int64_t grid_w,
                                      const PadreMixerWeights& w, const PadreMixerOptions& options = {});

// Multiply-adds of one PadreMixer call and of softmax self-attention (projections included) on the same
// tokens: what "linear vs quadratic in N" means, in numbers.
int64_t PadreMixerMacs(int64_t batch, int64_t tokens, int64_t dim, int64_t degree, int64_t kernel);
int64_t SoftmaxAttentionMacs(int64_t batch, int64_t tokens, int64_t dim);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_PADRE_MIXER_H_
