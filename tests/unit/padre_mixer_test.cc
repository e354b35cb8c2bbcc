// Checks PadreMixer against the definition written out term by term with explicit loops in double
// precision (each degree's projection, the depthwise convolution as a sum over the K x K window with
// zero padding, the token mean, the Hadamard products and the per-token RMS norm), on fresh random
// inputs and grids that are not square; its gradient against finite differences; that its cost is
// linear in the number of tokens where softmax attention's is quadratic; and argument validation.
#include "deltaserve/kernels/padre_mixer.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "support/padre_inputs.h"

namespace deltaserve::kernels {
namespace {

using ::testing::HasSubstr;
using deltaserve::testing::RandomPadreWeights;

// The definition, one token and one channel at a time.
at::Tensor Reference(const at::Tensor& x, int64_t gh, int64_t gw, const PadreMixerWeights& w) {
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const int64_t b = xd.size(0), n = xd.size(1), dim = xd.size(2);
  const int64_t degree = w.proj_weight.size(0) / dim, k = w.mix_weight.size(2);
  const at::Tensor pw = w.proj_weight.to(at::kDouble), pb = w.proj_bias.to(at::kDouble);
  const at::Tensor mw = w.mix_weight.to(at::kDouble), mg = w.mix_global.to(at::kDouble);
  const at::Tensor nw = w.norm_weight.to(at::kDouble);
  at::Tensor out = at::zeros({b, n, dim}, at::kDouble);
  auto xa = xd.accessor<double, 3>();
  for (int64_t bi = 0; bi < b; ++bi) {
    at::Tensor h, acc = at::zeros({n, dim}, at::kDouble);
    for (int64_t t = 0; t < degree; ++t) {
      // Y = x W^T + b for this term.
      at::Tensor y = at::zeros({n, dim}, at::kDouble);
      auto ya = y.accessor<double, 2>();
      auto pwa = pw.accessor<double, 2>();
      auto pba = pb.accessor<double, 1>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < dim; ++c) {
          double s = pba[t * dim + c];
          for (int64_t e = 0; e < dim; ++e) s += pwa[t * dim + c][e] * xa[bi][i][e];
          ya[i][c] = s;
        }
      // Z = depthwise conv (zero padding K/2) + g * mean over tokens.
      at::Tensor z = at::zeros({n, dim}, at::kDouble);
      auto za = z.accessor<double, 2>();
      auto mwa = mw.accessor<double, 4>();
      auto mga = mg.accessor<double, 1>();
      for (int64_t c = 0; c < dim; ++c) {
        double mean = 0;
        for (int64_t i = 0; i < n; ++i) mean += ya[i][c];
        mean /= static_cast<double>(n);
        for (int64_t r = 0; r < gh; ++r)
          for (int64_t q = 0; q < gw; ++q) {
            double s = 0;
            for (int64_t dr = 0; dr < k; ++dr)
              for (int64_t dq = 0; dq < k; ++dq) {
                const int64_t rr = r + dr - k / 2, qq = q + dq - k / 2;
                if (rr < 0 || rr >= gh || qq < 0 || qq >= gw) continue;
                s += mwa[t * dim + c][0][dr][dq] * ya[rr * gw + qq][c];
              }
            za[r * gw + q][c] = s + mga[t * dim + c] * mean;
          }
      }
      h = t == 0 ? z : h * z;
      const at::Tensor rms = at::sqrt(h.square().mean(-1, true) + w.eps);
      acc = acc + h / rms * nw[t];
    }
    out[bi] = at::linear(acc, w.out_weight.to(at::kDouble), w.out_bias.to(at::kDouble));
  }
  return out;
}

TEST(PadreMixer, MatchesTheDefinitionOnRandomInputs) {
  for (const auto& [gh, gw, degree, kernel] : {std::tuple{4, 6, 3, 3}, {5, 5, 2, 5}, {3, 7, 4, 3}, {6, 4, 1, 7}}) {
    at::manual_seed(1000 + gh * 31 + gw * 7 + degree);
    const int64_t dim = 8;
    const PadreMixerWeights w = RandomPadreWeights(dim, degree, kernel, at::kFloat);
    const at::Tensor x = at::randn({2, gh * gw, dim});
    absl::StatusOr<at::Tensor> y = PadreMixer(x, gh, gw, w);
    ASSERT_TRUE(y.ok()) << y.status();
    const at::Tensor ref = Reference(x, gh, gw, w);
    const double err = (y->to(at::kDouble) - ref).abs().max().item<double>();
    EXPECT_LT(err, 2e-5) << gh << "x" << gw << " degree " << degree << " K " << kernel;
    EXPECT_GT(ref.abs().max().item<double>(), 0.1);  // not a vacuous comparison
  }
}

TEST(PadreMixer, GradientMatchesFiniteDifferences) {
  at::manual_seed(7);
  const int64_t gh = 3, gw = 4, dim = 4;
  const PadreMixerWeights w = RandomPadreWeights(dim, 3, 3, at::kDouble);
  const at::Tensor x = at::randn({1, gh * gw, dim}, at::kDouble);
  const at::Tensor r = at::randn({1, gh * gw, dim}, at::kDouble);  // loss = sum(out * r)
  at::Tensor xg = x.clone();
  xg.set_requires_grad(true);
  absl::StatusOr<at::Tensor> y = PadreMixer(xg, gh, gw, w);
  ASSERT_TRUE(y.ok()) << y.status();
  (*y * r).sum().backward();
  const at::Tensor grad = xg.grad();
  ASSERT_TRUE(grad.defined());
  const double step = 1e-6;
  auto loss = [&](const at::Tensor& in) { return (*PadreMixer(in, gh, gw, w) * r).sum().item<double>(); };
  for (int64_t i = 0; i < x.numel(); ++i) {
    at::Tensor plus = x.clone(), minus = x.clone();
    plus.view(-1)[i] += step;
    minus.view(-1)[i] -= step;
    const double numeric = (loss(plus) - loss(minus)) / (2 * step);
    EXPECT_NEAR(grad.view(-1)[i].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << i;
  }
}

TEST(PadreMixer, CostIsLinearInTokensWhereSoftmaxIsQuadratic) {
  const int64_t dim = 96;
  for (const int64_t n : {256, 1024, 4096}) {
    EXPECT_EQ(PadreMixerMacs(1, 4 * n, dim, 3, 7), 4 * PadreMixerMacs(1, n, dim, 3, 7));
    // Softmax attention grows faster than linearly: 4x tokens cost more than 4x.
    EXPECT_GT(SoftmaxAttentionMacs(1, 4 * n, dim), 4 * SoftmaxAttentionMacs(1, n, dim));
  }
  // At 4096 tokens (a 512x512 image in 8-pixel patches) PADRe needs far fewer multiply-adds.
  EXPECT_LT(PadreMixerMacs(1, 4096, dim, 3, 7) * 10, SoftmaxAttentionMacs(1, 4096, dim));
}

TEST(PadreMixer, BadArgumentsNameTheArgument) {
  const PadreMixerWeights w = RandomPadreWeights(8, 3, 3, at::kFloat);
  const at::Tensor x = at::randn({1, 12, 8});
  auto expect = [](const absl::StatusOr<at::Tensor>& r, const char* what) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  expect(PadreMixer(x, 3, 5, w), "grid");
  expect(PadreMixer(at::randn({12, 8}), 3, 4, w), "x");
  expect(PadreMixer(at::randn({1, 12, 6}), 3, 4, w), "proj_weight");
  PadreMixerWeights even = w;
  even.mix_weight = at::randn({24, 1, 4, 4});
  expect(PadreMixer(x, 3, 4, even), "mix_weight");
  PadreMixerWeights bad_norm = w;
  bad_norm.norm_weight = at::randn({2, 8});
  expect(PadreMixer(x, 3, 4, bad_norm), "norm_weight");
  PadreMixerWeights bad_dtype = w;
  bad_dtype.out_bias = at::randn({8}, at::kDouble);
  expect(PadreMixer(x, 3, 4, bad_dtype), "out_bias");
  PadreMixerWeights bad_taps = w;
  bad_taps.mix_weight_taps = at::randn({24, 9});  // [d*D, K*K]: the checkpoint's order, not tap-major
  expect(PadreMixer(x, 3, 4, bad_taps), "mix_weight_taps");
  expect(PadreMixWeightTapMajor(at::randn({24, 9})), "mix_weight");
}

// The tap-major copy the CUDA kernel reads: tap t = row * K + column of channel ch's K x K filter at
// [t, ch]; the CPU path validates and ignores it.
TEST(PadreMixer, TapMajorWeightsHoldEachFilterByTap) {
  at::manual_seed(4040);
  PadreMixerWeights w = RandomPadreWeights(8, 3, 5, at::kFloat);
  const absl::StatusOr<at::Tensor> taps = PadreMixWeightTapMajor(w.mix_weight);
  ASSERT_TRUE(taps.ok()) << taps.status();
  ASSERT_EQ(taps->sizes(), (std::vector<int64_t>{25, 24}));
  for (int64_t ch : {0, 7, 23}) {
    for (int64_t t : {0, 6, 12, 24}) {
      EXPECT_EQ(taps->index({t, ch}).item<float>(), w.mix_weight.index({ch, 0, t / 5, t % 5}).item<float>());
    }
  }
  const at::Tensor x = at::randn({2, 12, 8});
  const at::Tensor plain = *PadreMixer(x, 3, 4, w);
  w.mix_weight_taps = *taps;
  EXPECT_TRUE(at::equal(*PadreMixer(x, 3, 4, w), plain));
}

}  // namespace
}  // namespace deltaserve::kernels
