// Random PADRe mixer weights at the scale the trained detector has, shared by the CPU definition test and
// the CUDA kernel test.
#ifndef DELTASERVE_TESTS_SUPPORT_PADRE_INPUTS_H_
#define DELTASERVE_TESTS_SUPPORT_PADRE_INPUTS_H_

#include <ATen/ATen.h>

#include <cstdint>

#include "deltaserve/kernels/padre_mixer.h"

namespace deltaserve::testing {

// Weights of one mixer of model dimension `dim`, polynomial degree `degree` and mixing kernel `kernel`
// (odd), drawn from the current ATen generator (at::manual_seed), on the CPU in `dtype`.
kernels::PadreMixerWeights RandomPadreWeights(int64_t dim, int64_t degree, int64_t kernel, at::ScalarType dtype);

}  // namespace deltaserve::testing

#endif  // DELTASERVE_TESTS_SUPPORT_PADRE_INPUTS_H_
