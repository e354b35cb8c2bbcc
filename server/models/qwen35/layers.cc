// Qwen3.5's norms and rotary embedding (see layers.h).
#include "models/qwen35/layers.h"

#include <ATen/ATen.h>

namespace deltaserve::models::qwen35 {

at::Tensor RmsNormZeroCentred(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (y * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

at::Tensor GatedRmsNorm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y = (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * weight;
  return (y.to(at::kFloat) * at::silu(gate.to(at::kFloat))).to(x.scalar_type());
}

void RotaryCosSin(const at::Tensor& positions, const at::Tensor& inv_freq, at::ScalarType dtype,
                  at::Tensor* cos, at::Tensor* sin) {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq.unsqueeze(0);  // [T, rot / 2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  *cos = emb.cos().to(dtype);
  *sin = emb.sin().to(dtype);
}

at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rot = cos.size(-1);
  at::Tensor r = x.narrow(-1, 0, rot);
  at::Tensor half1 = r.narrow(-1, 0, rot / 2), half2 = r.narrow(-1, rot / 2, rot / 2);
  at::Tensor rotated = at::cat({-half2, half1}, -1);
  at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);  // broadcast over heads
  at::Tensor out = r * c + rotated * s;
  if (rot == x.size(-1)) return out;
  return at::cat({out, x.narrow(-1, rot, x.size(-1) - rot)}, -1);
}

}  // namespace deltaserve::models::qwen35
