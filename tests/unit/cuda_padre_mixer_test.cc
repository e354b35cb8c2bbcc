// The fused CUDA PADRe mixer (kernels/cuda/padre_mix_cuda.cu) against the ATen composition on the CPU in
// float64, which padre_mixer_test.cc checks against the definition term by term: every grid, degree and
// kernel size the CPU tests use, model dimensions on both sides of each lane count the kernel compiles
// (8, 40, 96 as the shipped detector, 200), a one-token grid and a one-row grid, float32 and bfloat16, and
// a dimension past the kernel's limit that takes the composition on the GPU. Skipped without a GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <tuple>

#include "deltaserve/kernels/padre_mixer.h"
#include "support/gdn_inputs.h"
#include "support/padre_inputs.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::RandomPadreWeights;
using deltaserve::testing::RelMaxError;

class CudaPadreMixer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

PadreMixerWeights To(const PadreMixerWeights& w, const at::TensorOptions& o) {
  PadreMixerWeights r = w;
  for (at::Tensor* t : {&r.proj_weight, &r.proj_bias, &r.mix_weight, &r.mix_global, &r.norm_weight, &r.out_weight,
                        &r.out_bias}) {
    *t = t->to(o);
  }
  return r;
}

struct Shape {
  int64_t batch, gh, gw, dim, degree, kernel;
  std::string Name() const {
    return std::to_string(batch) + "x" + std::to_string(gh) + "x" + std::to_string(gw) + " D=" +
           std::to_string(dim) + " d=" + std::to_string(degree) + " K=" + std::to_string(kernel);
  }
};

// Runs `shape` in `dtype` on CUDA and returns the error relative to the largest reference value; the
// reference is the composition in float64 on the CPU from the same (rounded) inputs and weights.
double CudaError(const Shape& s, at::ScalarType dtype, uint64_t seed) {
  at::manual_seed(seed);
  const PadreMixerWeights w = To(RandomPadreWeights(s.dim, s.degree, s.kernel, at::kFloat), at::dtype(dtype));
  const at::Tensor x = at::randn({s.batch, s.gh * s.gw, s.dim}).to(dtype);
  const absl::StatusOr<at::Tensor> ref = PadreMixer(x.to(at::kDouble), s.gh, s.gw, To(w, at::dtype(at::kDouble)));
  EXPECT_TRUE(ref.ok()) << ref.status();
  const absl::StatusOr<at::Tensor> got = PadreMixer(x.cuda(), s.gh, s.gw, To(w, at::device(at::kCUDA)));
  EXPECT_TRUE(got.ok()) << got.status();
  if (!ref.ok() || !got.ok()) return 1.0;
  EXPECT_EQ(got->scalar_type(), dtype);
  EXPECT_EQ(got->sizes(), x.sizes());
  EXPECT_GT(ref->abs().max().item<double>(), 0.1) << s.Name();  // not a vacuous comparison
  return RelMaxError(got->cpu().to(at::kDouble), *ref);
}

const Shape kShapes[] = {
    // The CPU definition test's grids, degrees and kernels (D = 8: one channel a lane, most lanes idle).
    {2, 4, 6, 8, 3, 3},
    {2, 5, 5, 8, 2, 5},
    {2, 3, 7, 8, 4, 3},
    {2, 6, 4, 8, 1, 7},
    // Two channels a lane, the second partly past D; a one-token grid; a one-row grid.
    {3, 9, 5, 40, 3, 5},
    {2, 1, 1, 40, 2, 3},
    {1, 1, 13, 64, 2, 7},
    // The shipped detector's mixer (D = 96, d = 3, K = 7) at its 16 x 16 patch grid, and eight lanes of 25.
    {3, 16, 16, 96, 3, 7},
    {2, 7, 11, 200, 2, 3},
};

// The loader's tap-major copy (PadreMixWeightTapMajor, set once) gives the bytes the per-call copy gives.
TEST_F(CudaPadreMixer, LoadersTapMajorWeightsGiveTheSameOutput) {
  at::manual_seed(5151);
  PadreMixerWeights w = To(RandomPadreWeights(96, 3, 7, at::kFloat), at::device(at::kCUDA));
  const at::Tensor x = at::randn({3, 256, 96}).cuda();
  const absl::StatusOr<at::Tensor> per_call = PadreMixer(x, 16, 16, w);
  ASSERT_TRUE(per_call.ok()) << per_call.status();
  w.mix_weight_taps = *PadreMixWeightTapMajor(w.mix_weight);
  const absl::StatusOr<at::Tensor> loaded = PadreMixer(x, 16, 16, w);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(at::equal(*loaded, *per_call));
}

TEST_F(CudaPadreMixer, Float32MatchesTheComposition) {
  uint64_t seed = 90;
  for (const Shape& s : kShapes) {
    const double err = CudaError(s, at::kFloat, ++seed);
    std::printf("float32 %s: rel err %.2e\n", s.Name().c_str(), err);
    // float32 sums in another order than the composition's: a few ulps of the largest value.
    EXPECT_LT(err, 1e-4) << s.Name();
  }
}

TEST_F(CudaPadreMixer, BFloat16MatchesTheComposition) {
  uint64_t seed = 190;
  for (const Shape& s : kShapes) {
    const double err = CudaError(s, at::kBFloat16, ++seed);
    std::printf("bfloat16 %s: rel err %.2e\n", s.Name().c_str(), err);
    // bf16 operands and stores (2^-9 each): the projections' outputs, the mixed terms and the output are
    // each rounded once; a wrong window, term, norm or channel is off by far more than 5e-2.
    EXPECT_LT(err, 5e-2) << s.Name();
  }
}

// fused_cuda = false runs the composition on the GPU (bench_vision --padre-composition's baseline): it agrees
// with the fused kernel on the shipped shape, so the benchmark compares two paths that compute the same.
TEST_F(CudaPadreMixer, CompositionOnTheGpuAgreesWithTheKernel) {
  at::manual_seed(11);
  const PadreMixerWeights w = To(RandomPadreWeights(96, 3, 7, at::kFloat), at::device(at::kCUDA));
  const at::Tensor x = at::randn({2, 256, 96}, at::device(at::kCUDA));
  PadreMixerOptions composition;
  composition.fused_cuda = false;
  const absl::StatusOr<at::Tensor> fused = PadreMixer(x, 16, 16, w);
  const absl::StatusOr<at::Tensor> aten = PadreMixer(x, 16, 16, w, composition);
  ASSERT_TRUE(fused.ok()) << fused.status();
  ASSERT_TRUE(aten.ok()) << aten.status();
  EXPECT_LT(RelMaxError(fused->cpu().to(at::kDouble), aten->cpu().to(at::kDouble)), 1e-4);
}

TEST_F(CudaPadreMixer, WideModelsTakeTheCompositionOnTheGpu) {
  const double err = CudaError({1, 4, 5, 264, 2, 3}, at::kFloat, 7);
  EXPECT_LT(err, 1e-4);
}

}  // namespace
}  // namespace deltaserve::kernels
