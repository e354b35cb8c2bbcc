// The fused row ops (RmsNorm, AddRmsNorm, GatedRmsNorm, SiluAndMul, QkNormRotary, GatedDeltaGates): the
// CPU path against the model's unfused ATen compositions (re-implemented here as server/models/qwen35
// writes them), bad arguments, and, where a GPU is present, the CUDA kernels against the CPU path.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "deltaserve/kernels/activation.h"
#include "deltaserve/kernels/gdn_gates.h"
#include "deltaserve/kernels/rms_norm.h"
#include "deltaserve/kernels/rotary.h"

#ifdef DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace deltaserve::kernels {
namespace {

using ::testing::HasSubstr;

constexpr double kEps = 1e-6;

// max |x - ref| / max |ref|, in double on the CPU.
double RelErr(const at::Tensor& x, const at::Tensor& ref) {
  at::Tensor r = ref.cpu().to(at::kDouble);
  const double err = (x.cpu().to(at::kDouble) - r).abs().max().item<double>();
  return err / r.abs().max().item<double>();
}

// Random values with a non-zero mean and spread, so neither a missing shift nor a missing scale hides.
at::Tensor Rand(at::IntArrayRef shape, at::ScalarType dtype, double scale = 1.5, double shift = 0.3) {
  return (at::randn(shape, at::kDouble) * scale + shift).to(dtype);
}

// --- The unfused compositions the model used before these kernels, intermediates rounded to
// the activation dtype between ops as the model did.

at::Tensor RefRmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return (y * (weight.to(at::kFloat) + 1.0)).to(x.scalar_type());
}

at::Tensor RefGatedRmsNorm(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight,
                           double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor y = (xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * weight;
  return (y.to(at::kFloat) * at::silu(gate.to(at::kFloat))).to(x.scalar_type());
}

at::Tensor RefSiluAndMul(const at::Tensor& x) {
  const int64_t f = x.size(-1) / 2;
  return at::silu(x.narrow(-1, 0, f)) * x.narrow(-1, f, f);
}

// The model's gates before the fused op: each from its own float32 copy of the projection's columns.
std::pair<at::Tensor, at::Tensor> RefGates(const at::Tensor& ba, const at::Tensor& neg_a_exp,
                                           const at::Tensor& dt_bias) {
  const int64_t h = ba.size(1) / 2;
  at::Tensor beta = at::sigmoid(ba.narrow(1, 0, h).to(at::kFloat));
  at::Tensor g = neg_a_exp * at::softplus(ba.narrow(1, h, h).to(at::kFloat) + dt_bias);
  return {g, beta};
}

at::Tensor RefQkNormRotary(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& positions,
                           const at::Tensor& inv_freq, double eps) {
  at::Tensor q = RefRmsNorm(x, weight, eps);
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq.unsqueeze(0);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos().to(x.scalar_type()), sin = emb.sin().to(x.scalar_type());
  const int64_t rot = cos.size(-1);
  at::Tensor r = q.narrow(-1, 0, rot);
  at::Tensor half1 = r.narrow(-1, 0, rot / 2), half2 = r.narrow(-1, rot / 2, rot / 2);
  at::Tensor rotated = at::cat({-half2, half1}, -1);
  at::Tensor out = r * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
  if (rot == q.size(-1)) return out;
  return at::cat({out, q.narrow(-1, rot, q.size(-1) - rot)}, -1);
}

at::Tensor InvFreq(int64_t rotary_dim) {
  return 1.0 / at::pow(1e7, at::arange(0, rotary_dim, 2, at::kFloat) / static_cast<double>(rotary_dim));
}

at::Tensor Positions(int64_t tokens, int64_t max_position) {
  return at::randint(0, max_position, {tokens}, at::kLong);
}

// CPU path vs the composition: one rounding against several, so bf16 gets bf16-sized slack.
double CompositionBound(at::ScalarType dtype) { return dtype == at::kFloat ? 1e-6 : 2e-2; }
// CUDA vs CPU path: the same fp32 math rounded once; bf16 may differ by one rounding step.
double DeviceBound(at::ScalarType dtype) { return dtype == at::kFloat ? 1e-5 : 1e-2; }

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kBFloat16};

// --- CPU path against the compositions.

TEST(FusedOpsCpu, RmsNormMatchesComposition) {
  at::manual_seed(9101);
  for (at::ScalarType dtype : kDtypes) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{1, 7}, {3, 1024}, {2, 5, 129}, {4096}, {6, 1}}) {
      at::Tensor x = Rand(shape, dtype);
      at::Tensor w = Rand({shape.back()}, dtype, 0.2, 0.1);
      absl::StatusOr<at::Tensor> y = RmsNorm(x, w, kEps);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_EQ(y->scalar_type(), dtype);
      EXPECT_EQ(y->sizes(), x.sizes());
      EXPECT_LT(RelErr(*y, RefRmsNorm(x, w, kEps)), CompositionBound(dtype)) << dtype << " " << x.sizes();
    }
  }
}

TEST(FusedOpsCpu, RmsNormAcceptsFp32WeightWithBf16Input) {
  at::manual_seed(9102);
  at::Tensor x = Rand({4, 96}, at::kBFloat16);
  at::Tensor w = Rand({96}, at::kFloat, 0.2, 0.1);
  absl::StatusOr<at::Tensor> y = RmsNorm(x, w, kEps);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->scalar_type(), at::kBFloat16);
  EXPECT_LT(RelErr(*y, RefRmsNorm(x, w, kEps)), 2e-2);
}

TEST(FusedOpsCpu, AddRmsNormUpdatesResidualInPlace) {
  at::manual_seed(9103);
  for (at::ScalarType dtype : kDtypes) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{1, 33}, {5, 256}, {2, 3, 65}}) {
      at::Tensor x = Rand(shape, dtype);
      at::Tensor residual = Rand(shape, dtype, 3.0, -0.5);
      at::Tensor w = Rand({shape.back()}, dtype, 0.2, 0.1);
      at::Tensor expected_residual = residual + x;  // rounded to dtype, as the model's x = x + mixer(...)
      const void* storage = residual.data_ptr();
      absl::StatusOr<at::Tensor> y = AddRmsNorm(x, residual, w, kEps);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_EQ(residual.data_ptr(), storage);
      EXPECT_TRUE(at::equal(residual, expected_residual)) << dtype;
      EXPECT_LT(RelErr(*y, RefRmsNorm(expected_residual, w, kEps)), CompositionBound(dtype)) << dtype;
    }
  }
}

TEST(FusedOpsCpu, GatedRmsNormMatchesComposition) {
  at::manual_seed(9104);
  for (at::ScalarType dtype : kDtypes) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{1, 1, 7}, {3, 4, 128}, {5, 33}, {64}}) {
      at::Tensor x = Rand(shape, dtype);
      at::Tensor gate = Rand(shape, dtype, 2.0, 0.0);
      at::Tensor w = Rand({shape.back()}, dtype, 0.2, 1.0);
      absl::StatusOr<at::Tensor> y = GatedRmsNorm(x, gate, w, kEps);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_EQ(y->sizes(), x.sizes());
      EXPECT_LT(RelErr(*y, RefGatedRmsNorm(x, gate, w, kEps)), CompositionBound(dtype)) << dtype;
    }
  }
}

TEST(FusedOpsCpu, SiluAndMulMatchesComposition) {
  at::manual_seed(9105);
  for (at::ScalarType dtype : kDtypes) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{1, 14}, {9, 192}, {2, 3, 66}, {2}, {4, 2 * 3584}}) {
      at::Tensor x = Rand(shape, dtype, 3.0, 0.0);
      absl::StatusOr<at::Tensor> y = SiluAndMul(x);
      ASSERT_TRUE(y.ok()) << y.status();
      std::vector<int64_t> out_shape = shape;
      out_shape.back() /= 2;
      EXPECT_EQ(y->sizes(), at::IntArrayRef(out_shape));
      EXPECT_LT(RelErr(*y, RefSiluAndMul(x)), CompositionBound(dtype)) << dtype << " " << x.sizes();
    }
  }
}

// Projections wide enough to hit softplus's linear branch (a + dt_bias > 20) and sigmoid's tails.
TEST(FusedOpsCpu, GatedDeltaGatesMatchComposition) {
  at::manual_seed(9106);
  for (at::ScalarType dtype : kDtypes) {
    for (int64_t heads : {1, 3, 32}) {
      const at::Tensor wide = Rand({7, 2 * heads + 5}, dtype, 12.0, 0.0);
      const at::Tensor ba = wide.narrow(1, 2, 2 * heads);  // strided rows, as a view into the projection
      const at::Tensor neg_a_exp = -at::rand({heads}) * 8.0 - 0.1, dt_bias = at::randn({heads});
      absl::StatusOr<GdnGates> got = GatedDeltaGates(ba, neg_a_exp, dt_bias);
      ASSERT_TRUE(got.ok()) << got.status();
      const auto [g, beta] = RefGates(ba, neg_a_exp, dt_bias);
      EXPECT_EQ(got->g.scalar_type(), at::kFloat);
      EXPECT_TRUE(at::equal(got->g, g)) << dtype << " heads " << heads;
      EXPECT_TRUE(at::equal(got->beta, beta)) << dtype << " heads " << heads;
    }
  }
}

struct RotaryCase {
  int64_t tokens, heads, head_dim, rotary_dim;
};

TEST(FusedOpsCpu, QkNormRotaryMatchesComposition) {
  at::manual_seed(9106);
  for (at::ScalarType dtype : kDtypes) {
    for (const RotaryCase& c : std::vector<RotaryCase>{{1, 8, 256, 64}, {7, 2, 64, 64}, {3, 3, 10, 6}}) {
      // q as the model takes it: the first half of a [T, heads, 2 * head_dim] projection.
      at::Tensor proj = Rand({c.tokens, c.heads, 2 * c.head_dim}, dtype);
      at::Tensor q = proj.narrow(-1, 0, c.head_dim);
      at::Tensor w = Rand({c.head_dim}, dtype, 0.2, 0.1);
      at::Tensor positions = Positions(c.tokens, 100000);
      at::Tensor inv_freq = InvFreq(c.rotary_dim);
      absl::StatusOr<at::Tensor> y = QkNormRotary(q, w, positions, inv_freq, kEps);
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_TRUE(y->is_contiguous());
      EXPECT_EQ(y->sizes(), q.sizes());
      EXPECT_LT(RelErr(*y, RefQkNormRotary(q, w, positions, inv_freq, kEps)), CompositionBound(dtype))
          << dtype << " head_dim " << c.head_dim;
      absl::StatusOr<at::Tensor> contiguous = QkNormRotary(q.contiguous(), w, positions, inv_freq, kEps);
      ASSERT_TRUE(contiguous.ok()) << contiguous.status();
      EXPECT_LT(RelErr(*contiguous, *y), 1e-6);
    }
  }
}

// --- Bad arguments: InvalidArgument naming the field.

void ExpectInvalid(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field));
}

TEST(FusedOpsArgs, Norms) {
  at::Tensor x = Rand({3, 16}, at::kFloat), w = Rand({16}, at::kFloat);
  ExpectInvalid(RmsNorm(at::Tensor(), w, kEps).status(), "x: tensor is undefined");
  ExpectInvalid(RmsNorm(x.to(at::kInt), w, kEps).status(), "x: dtype");
  ExpectInvalid(RmsNorm(at::randn({0, 16}), w, kEps).status(), "x: empty");
  ExpectInvalid(RmsNorm(x, Rand({15}, at::kFloat), kEps).status(), "weight: shape must be [16]");
  ExpectInvalid(RmsNorm(x, w.to(at::kDouble), kEps).status(), "weight: dtype");
  ExpectInvalid(RmsNorm(x.to(at::kBFloat16), w.to(at::kHalf), kEps).status(), "weight: dtype");
  ExpectInvalid(RmsNorm(x, w, -1.0).status(), "eps");
  ExpectInvalid(RmsNorm(x, at::Tensor(), kEps).status(), "weight: tensor is undefined");

  at::Tensor residual = Rand({3, 17}, at::kFloat);
  ExpectInvalid(AddRmsNorm(x, residual, w, kEps).status(), "residual: shape");
  residual = Rand({3, 16}, at::kBFloat16);
  ExpectInvalid(AddRmsNorm(x, residual, w, kEps).status(), "residual: dtype");
  at::Tensor undefined;
  ExpectInvalid(AddRmsNorm(x, undefined, w, kEps).status(), "residual: tensor is undefined");

  ExpectInvalid(GatedRmsNorm(x, Rand({3, 8}, at::kFloat), w, kEps).status(), "gate: shape");
  ExpectInvalid(GatedRmsNorm(x, x.to(at::kBFloat16), w, kEps).status(), "gate: dtype");
  ExpectInvalid(GatedRmsNorm(x, x, Rand({3, 16}, at::kFloat), kEps).status(), "weight: shape");
}

TEST(FusedOpsArgs, SiluAndMul) {
  ExpectInvalid(SiluAndMul(Rand({3, 15}, at::kFloat)).status(), "x: last dimension");
  ExpectInvalid(SiluAndMul(Rand({3, 16}, at::kDouble)).status(), "x: dtype");
  ExpectInvalid(SiluAndMul(at::Tensor()).status(), "x: tensor is undefined");
  ExpectInvalid(SiluAndMul(at::randn({4, 0})).status(), "x: empty");
}

TEST(FusedOpsArgs, GatedDeltaGates) {
  const at::Tensor ba = Rand({3, 8}, at::kFloat), h4 = at::randn({4});
  EXPECT_TRUE(GatedDeltaGates(ba, h4, h4).ok());
  ExpectInvalid(GatedDeltaGates(Rand({3, 7}, at::kFloat), h4, h4).status(), "ba: must be [T, 2H]");
  ExpectInvalid(GatedDeltaGates(Rand({2, 3, 8}, at::kFloat), h4, h4).status(), "ba: must be [T, 2H]");
  ExpectInvalid(GatedDeltaGates(Rand({3, 8}, at::kDouble), h4, h4).status(), "ba: dtype");
  ExpectInvalid(GatedDeltaGates(at::Tensor(), h4, h4).status(), "ba: tensor is undefined");
  ExpectInvalid(GatedDeltaGates(at::randn({0, 8}), h4, h4).status(), "ba: empty");
  ExpectInvalid(GatedDeltaGates(ba, at::randn({3}), h4).status(), "neg_a_exp: shape must be [4]");
  ExpectInvalid(GatedDeltaGates(ba, h4, h4.to(at::kBFloat16)).status(), "dt_bias: dtype");
  ExpectInvalid(GatedDeltaGates(ba, h4, at::Tensor()).status(), "dt_bias: tensor is undefined");
}

TEST(FusedOpsArgs, QkNormRotary) {
  at::Tensor x = Rand({2, 4, 32}, at::kFloat), w = Rand({32}, at::kFloat);
  at::Tensor positions = Positions(2, 100), inv_freq = InvFreq(16);
  ASSERT_TRUE(QkNormRotary(x, w, positions, inv_freq, kEps).ok());
  ExpectInvalid(QkNormRotary(Rand({8, 32}, at::kFloat), w, positions, inv_freq, kEps).status(),
                "x: expected");
  ExpectInvalid(QkNormRotary(Rand({2, 4, 4, 32}, at::kFloat), w, positions, inv_freq, kEps).status(),
                "x: expected [T, heads, head_dim]");
  ExpectInvalid(QkNormRotary(x.to(at::kHalf), w, positions, inv_freq, kEps).status(), "x: dtype");
  ExpectInvalid(QkNormRotary(x, Rand({16}, at::kFloat), positions, inv_freq, kEps).status(),
                "norm_weight: shape must be [32]");
  ExpectInvalid(QkNormRotary(x, w, Positions(3, 100), inv_freq, kEps).status(),
                "positions: shape must be [2]");
  ExpectInvalid(QkNormRotary(x, w, positions.to(at::kInt), inv_freq, kEps).status(), "positions: dtype");
  ExpectInvalid(QkNormRotary(x, w, at::Tensor(), inv_freq, kEps).status(), "positions");
  ExpectInvalid(QkNormRotary(x, w, positions, InvFreq(34), kEps).status(), "inv_freq: shape");
  ExpectInvalid(QkNormRotary(x, w, positions, at::ones({0}), kEps).status(), "inv_freq: shape");
  ExpectInvalid(QkNormRotary(x, w, positions, InvFreq(16).to(at::kDouble), kEps).status(), "inv_freq: dtype");
  ExpectInvalid(QkNormRotary(x, w, positions, inv_freq, std::nan("")).status(), "eps");
}

// --- CUDA kernels against the CPU path (skipped without a GPU).

class FusedOpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

// Weight dtypes to try with x's dtype: its own, and fp32 for bf16 activations.
std::vector<at::ScalarType> WeightDtypes(at::ScalarType dtype) {
  if (dtype == at::kFloat) return {at::kFloat};
  return {at::kBFloat16, at::kFloat};
}

// A [rows, h] input in one of the layouts the kernels must handle: contiguous (vector path when h allows),
// offset by one element (misaligned: scalar path), or the left part of wider rows (strided rows).
enum class Layout { kContiguous, kMisaligned, kStridedRows };

at::Tensor MakeRows(std::vector<int64_t> shape, at::ScalarType dtype, Layout layout, double scale = 1.5,
                    double shift = 0.3) {
  const int64_t h = shape.back();
  switch (layout) {
    case Layout::kContiguous:
      return Rand(shape, dtype, scale, shift).cuda();
    case Layout::kMisaligned:
      shape.back() = h + 1;
      return Rand(shape, dtype, scale, shift).cuda().narrow(-1, 1, h);
    case Layout::kStridedRows:
      shape.back() = h + 8;  // a row stride that keeps 16-byte alignment for bf16
      return Rand(shape, dtype, scale, shift).cuda().narrow(-1, 0, h);
  }
  return {};
}

const std::vector<Layout> kLayouts = {Layout::kContiguous, Layout::kMisaligned, Layout::kStridedRows};

// Shapes covering warp-per-row (H <= 1024) and block-per-row launches, one row, odd H, many rows.
const std::vector<std::vector<int64_t>> kNormShapes = {{1, 1024},  {3, 5},    {2, 3, 127}, {1000, 64},
                                                       {1, 16384}, {4, 5120}, {2, 1027},   {9, 4096}};

TEST_F(FusedOpsCuda, RmsNormMatchesCpu) {
  at::manual_seed(7201);
  for (at::ScalarType dtype : kDtypes) {
    for (at::ScalarType wdtype : WeightDtypes(dtype)) {
      for (const auto& shape : kNormShapes) {
        for (Layout layout : kLayouts) {
          at::Tensor x = MakeRows(shape, dtype, layout);
          at::Tensor w = Rand({shape.back()}, wdtype, 0.2, 0.1);
          absl::StatusOr<at::Tensor> got = RmsNorm(x, w.cuda(), kEps);
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_TRUE(got->is_cuda());
          EXPECT_TRUE(got->is_contiguous());
          EXPECT_EQ(got->scalar_type(), dtype);
          absl::StatusOr<at::Tensor> want = RmsNorm(x.cpu(), w, kEps);
          ASSERT_TRUE(want.ok()) << want.status();
          EXPECT_LT(RelErr(*got, *want), DeviceBound(dtype))
              << dtype << " w " << wdtype << " " << x.sizes() << " layout " << static_cast<int>(layout);
        }
      }
    }
  }
}

TEST_F(FusedOpsCuda, AddRmsNormMatchesCpuAndUpdatesResidual) {
  at::manual_seed(7202);
  for (at::ScalarType dtype : kDtypes) {
    for (at::ScalarType wdtype : WeightDtypes(dtype)) {
      for (const auto& shape : kNormShapes) {
        for (Layout layout : kLayouts) {
          at::Tensor x = MakeRows(shape, dtype, layout);
          // The residual in another layout than x, so the two strides and alignments differ.
          at::Tensor residual =
              MakeRows(shape, dtype, kLayouts[(static_cast<int>(layout) + 1) % 3], 3.0, -0.5);
          at::Tensor w = Rand({shape.back()}, wdtype, 0.2, 0.1);
          at::Tensor residual_cpu = residual.cpu();
          const void* storage = residual.data_ptr();
          absl::StatusOr<at::Tensor> got = AddRmsNorm(x, residual, w.cuda(), kEps);
          ASSERT_TRUE(got.ok()) << got.status();
          absl::StatusOr<at::Tensor> want = AddRmsNorm(x.cpu(), residual_cpu, w, kEps);
          ASSERT_TRUE(want.ok()) << want.status();
          EXPECT_EQ(residual.data_ptr(), storage);
          // The sum is rounded once to the residual's dtype on both sides: bit for bit the same.
          EXPECT_TRUE(at::equal(residual.cpu(), residual_cpu)) << dtype << " " << x.sizes();
          EXPECT_LT(RelErr(*got, *want), DeviceBound(dtype)) << dtype << " w " << wdtype << " " << x.sizes();
        }
      }
    }
  }
}

TEST_F(FusedOpsCuda, AddRmsNormResidualWithoutRowStride) {
  at::manual_seed(7203);
  for (at::ScalarType dtype : kDtypes) {
    at::Tensor x = Rand({6, 96}, dtype).cuda();
    // A transposed residual: its rows are not one stride apart, so the op goes through a copy.
    at::Tensor residual = Rand({96, 6}, dtype, 3.0, -0.5).cuda().t();
    at::Tensor w = Rand({96}, dtype, 0.2, 0.1);
    at::Tensor residual_cpu = residual.cpu().contiguous();
    absl::StatusOr<at::Tensor> got = AddRmsNorm(x, residual, w.cuda(), kEps);
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<at::Tensor> want = AddRmsNorm(x.cpu(), residual_cpu, w, kEps);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_TRUE(at::equal(residual.cpu(), residual_cpu)) << dtype;
    EXPECT_LT(RelErr(*got, *want), DeviceBound(dtype)) << dtype;
  }
}

TEST_F(FusedOpsCuda, GatedRmsNormMatchesCpu) {
  at::manual_seed(7204);
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 16, 128}, {300, 32, 128}, {3, 5}, {2, 127}, {1, 2048}};
  for (at::ScalarType dtype : kDtypes) {
    for (at::ScalarType wdtype : WeightDtypes(dtype)) {
      for (const auto& shape : shapes) {
        for (Layout layout : kLayouts) {
          at::Tensor x = MakeRows(shape, dtype, layout);
          at::Tensor gate = MakeRows(shape, dtype, kLayouts[(static_cast<int>(layout) + 2) % 3], 2.0, 0.0);
          at::Tensor w = Rand({shape.back()}, wdtype, 0.2, 1.0);
          absl::StatusOr<at::Tensor> got = GatedRmsNorm(x, gate, w.cuda(), kEps);
          ASSERT_TRUE(got.ok()) << got.status();
          absl::StatusOr<at::Tensor> want = GatedRmsNorm(x.cpu(), gate.cpu(), w, kEps);
          ASSERT_TRUE(want.ok()) << want.status();
          EXPECT_LT(RelErr(*got, *want), DeviceBound(dtype)) << dtype << " w " << wdtype << " " << x.sizes();
        }
      }
    }
  }
}

TEST_F(FusedOpsCuda, SiluAndMulMatchesCpu) {
  at::manual_seed(7205);
  const std::vector<std::vector<int64_t>> shapes = {
      {1, 2 * 12288}, {37, 2 * 3584}, {5, 14}, {2, 3, 2 * 33}, {4096, 2 * 64}};
  for (at::ScalarType dtype : kDtypes) {
    for (const auto& shape : shapes) {
      for (Layout layout : kLayouts) {
        at::Tensor x = MakeRows(shape, dtype, layout, 3.0, 0.0);
        absl::StatusOr<at::Tensor> got = SiluAndMul(x);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_TRUE(got->is_cuda());
        absl::StatusOr<at::Tensor> want = SiluAndMul(x.cpu());
        ASSERT_TRUE(want.ok()) << want.status();
        EXPECT_EQ(got->sizes(), want->sizes());
        EXPECT_LT(RelErr(*got, *want), DeviceBound(dtype)) << dtype << " " << x.sizes();
      }
    }
  }
}

TEST_F(FusedOpsCuda, QkNormRotaryMatchesCpu) {
  at::manual_seed(7206);
  const std::vector<RotaryCase> cases = {{1, 16, 256, 64}, {300, 8, 256, 64}, {5, 2, 128, 128},
                                         {3, 3, 10, 6},    {2, 4, 24, 8},     {1, 1, 2, 2}};
  for (at::ScalarType dtype : kDtypes) {
    for (at::ScalarType wdtype : WeightDtypes(dtype)) {
      for (const RotaryCase& c : cases) {
        at::Tensor w = Rand({c.head_dim}, wdtype, 0.2, 0.1);
        at::Tensor positions = Positions(c.tokens, 262144);
        at::Tensor inv_freq = InvFreq(c.rotary_dim);
        // q from the [q | gate] projection ([T, heads, 2 * head_dim], as the model views it), k from a
        // [q | k] projection ([T, (heads + heads) * head_dim]), a contiguous k, and a misaligned view.
        at::Tensor qg = Rand({c.tokens, c.heads, 2 * c.head_dim}, dtype).cuda();
        at::Tensor qk = Rand({c.tokens, 2 * c.heads * c.head_dim}, dtype).cuda();
        at::Tensor odd = Rand({c.tokens, c.heads * c.head_dim + 1}, dtype).cuda();
        const std::vector<at::Tensor> inputs = {
            qg.narrow(-1, 0, c.head_dim),
            qk.narrow(1, c.heads * c.head_dim, c.heads * c.head_dim).view({c.tokens, c.heads, c.head_dim}),
            Rand({c.tokens, c.heads, c.head_dim}, dtype).cuda(),
            odd.narrow(1, 1, c.heads * c.head_dim).view({c.tokens, c.heads, c.head_dim})};
        for (size_t i = 0; i < inputs.size(); ++i) {
          const at::Tensor& x = inputs[i];
          absl::StatusOr<at::Tensor> got = QkNormRotary(x, w.cuda(), positions.cuda(), inv_freq.cuda(), kEps);
          ASSERT_TRUE(got.ok()) << got.status();
          EXPECT_TRUE(got->is_contiguous());
          EXPECT_EQ(got->sizes(), x.sizes());
          absl::StatusOr<at::Tensor> want = QkNormRotary(x.cpu(), w, positions, inv_freq, kEps);
          ASSERT_TRUE(want.ok()) << want.status();
          EXPECT_LT(RelErr(*got, *want), DeviceBound(dtype))
              << dtype << " w " << wdtype << " head_dim " << c.head_dim << " tokens " << c.tokens << " input "
              << i;
        }
      }
    }
  }
}

TEST_F(FusedOpsCuda, GatedDeltaGatesMatchCpu) {
  at::manual_seed(7208);
  for (at::ScalarType dtype : kDtypes) {
    for (int64_t rows : {1, 5, 4096}) {
      for (int64_t heads : {1, 16, 48}) {
        const at::Tensor wide = Rand({rows, 2 * heads + 3}, dtype, 12.0, 0.0).cuda();
        for (const at::Tensor& ba : {wide.narrow(1, 1, 2 * heads), wide.narrow(1, 1, 2 * heads).contiguous()}) {
          const at::Tensor neg_a_exp = -at::rand({heads}) * 8.0 - 0.1, dt_bias = at::randn({heads});
          absl::StatusOr<GdnGates> got = GatedDeltaGates(ba, neg_a_exp.cuda(), dt_bias.cuda());
          ASSERT_TRUE(got.ok()) << got.status();
          absl::StatusOr<GdnGates> want = GatedDeltaGates(ba.cpu(), neg_a_exp, dt_bias);
          ASSERT_TRUE(want.ok()) << want.status();
          // float32 on both sides; expf/log1pf against the CPU's vectorised versions: a few ulps.
          EXPECT_LT(RelErr(got->g, want->g), 1e-6) << dtype << " rows " << rows << " heads " << heads;
          EXPECT_LT(RelErr(got->beta, want->beta), 1e-6) << dtype << " rows " << rows << " heads " << heads;
        }
      }
    }
  }
}

#ifdef DELTASERVE_WITH_CUDA
// Restores the sync debug mode however the test leaves.
class SyncDebugScope {
 public:
  SyncDebugScope() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); }
  ~SyncDebugScope() { c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); }
};

TEST_F(FusedOpsCuda, NoHostSynchronisation) {
  at::manual_seed(7207);
  for (at::ScalarType dtype : kDtypes) {
    at::Tensor x = Rand({4, 1024}, dtype).cuda(), residual = Rand({4, 1024}, dtype).cuda();
    at::Tensor w = Rand({1024}, dtype).cuda(), heads_x = Rand({4, 8, 128}, dtype).cuda();
    at::Tensor heads_gate = Rand({4, 8, 128}, dtype).cuda(), head_w = Rand({128}, dtype).cuda();
    at::Tensor qg = Rand({4, 8, 512}, dtype).cuda(), qw = Rand({256}, dtype).cuda();
    at::Tensor positions = Positions(4, 1000).cuda(), inv_freq = InvFreq(64).cuda();
    at::Tensor mlp = Rand({4, 2 * 3584}, dtype).cuda();
    std::vector<absl::Status> statuses;
    {
      SyncDebugScope scope;
      statuses.push_back(RmsNorm(x, w, kEps).status());
      statuses.push_back(AddRmsNorm(x, residual, w, kEps).status());
      statuses.push_back(GatedRmsNorm(heads_x, heads_gate, head_w, kEps).status());
      statuses.push_back(SiluAndMul(mlp).status());
      statuses.push_back(QkNormRotary(qg.narrow(-1, 0, 256), qw, positions, inv_freq, kEps).status());
      statuses.push_back(GatedDeltaGates(mlp.narrow(1, 0, 64), w.narrow(0, 0, 32).to(at::kFloat),
                                         w.narrow(0, 32, 32).to(at::kFloat))
                             .status());
    }
    for (const absl::Status& s : statuses) EXPECT_TRUE(s.ok()) << s;
  }
}
#endif

}  // namespace
}  // namespace deltaserve::kernels
