#include "support/padre_inputs.h"

#include <cmath>

namespace deltaserve::testing {

kernels::PadreMixerWeights RandomPadreWeights(int64_t dim, int64_t degree, int64_t kernel, at::ScalarType dtype) {
  kernels::PadreMixerWeights w;
  const auto o = at::TensorOptions().dtype(dtype);
  const double s = 1.0 / std::sqrt(static_cast<double>(dim));
  w.proj_weight = at::randn({degree * dim, dim}, o) * s;
  w.proj_bias = at::randn({degree * dim}, o) * 0.1;
  w.mix_weight = at::randn({degree * dim, 1, kernel, kernel}, o) * (1.0 / kernel);
  w.mix_global = at::randn({degree * dim}, o) * 0.5;
  w.norm_weight = 1 + at::randn({degree, dim}, o) * 0.1;
  w.out_weight = at::randn({dim, dim}, o) * s;
  w.out_bias = at::randn({dim}, o) * 0.1;
  return w;
}

}  // namespace deltaserve::testing
