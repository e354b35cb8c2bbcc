// kernels::Linear, RmsNormLinear and LinearAccumulate: float64 references (and at::linear) on the CPU,
// the CPU GEMV for decode's few rows against float64 (fp32 and bf16, every row count it takes, K off the
// vector width, strided rows, the residual add and silu-and-mul folded in), bad arguments named, and,
// where a GPU is present, the small-batch CUDA kernel with and without the
// folded norm and residual add against float64 for every row count it takes, odd shapes and strided
// rows, plus the hand-over to cuBLAS beyond its row limit.
#include "deltaserve/kernels/linear.h"

#include "cpu_gemv.h"
#include "cpu_gemv_int8_dot.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <string>
#include <vector>

#ifdef DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace deltaserve::kernels {
namespace {

using ::testing::HasSubstr;

// More rows than the CPU GEMV takes (21 > 16) go to at::linear exactly.
TEST(Linear, EqualsAtLinearOnTheCpu) {
  at::manual_seed(9101);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::Tensor x = at::randn({3, 7, 24}).to(dtype);
    at::Tensor w = at::randn({17, 24}).to(dtype);
    absl::StatusOr<at::Tensor> got = Linear(x, w);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(at::equal(*got, at::linear(x, w)));
    EXPECT_FALSE(UsesSmallBatchLinear(x, w));
  }
  // An empty batch gives an empty result, as at::linear does.
  absl::StatusOr<at::Tensor> empty = Linear(at::zeros({0, 24}), at::randn({17, 24}));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->sizes(), (std::vector<int64_t>{0, 17}));
}

TEST(Linear, NamesTheBadArgument) {
  absl::StatusOr<at::Tensor> r = Linear(at::randn({2, 8}), at::randn({4, 9}));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("weight"));
  r = Linear(at::randn({2, 8}), at::randn({4, 8}).to(at::kBFloat16));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("dtype"));
  r = Linear(at::Tensor(), at::randn({4, 8}));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("x"));
  r = Linear(at::randn({2, 8}), at::randn({8}));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("weight"));
}

// Qwen3.5's zero-centred RMS norm in float64, rounded to x's dtype as the model stores it.
at::Tensor NormFloat64(const at::Tensor& x, const at::Tensor& norm_w, double eps) {
  at::Tensor xd = x.cpu().to(at::kDouble);
  at::Tensor normed = xd * at::rsqrt(xd.pow(2).mean(-1, true) + eps) * (norm_w.cpu().to(at::kDouble) + 1.0);
  return normed.to(x.scalar_type()).to(at::kDouble);
}

// The norm, then x W^T in float64.
at::Tensor NormLinearFloat64(const at::Tensor& x, const at::Tensor& norm_w, double eps, const at::Tensor& w) {
  return at::matmul(NormFloat64(x, norm_w, eps), w.cpu().to(at::kDouble).t());
}

double MaxRelErr(const at::Tensor& got, const at::Tensor& ref) {
  return (got.cpu().to(at::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
}

TEST(RmsNormLinear, NormalisesThenProjectsOnTheCpu) {
  at::manual_seed(9111);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::Tensor x = (at::randn({4, 48}) * 3 + 0.5).to(dtype);
    at::Tensor norm_w = (at::randn({48}) * 0.2).to(dtype);
    at::Tensor w = at::randn({20, 48}).to(dtype);
    absl::StatusOr<at::Tensor> got = RmsNormLinear(x, norm_w, 1e-6, w);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->scalar_type(), dtype);
    EXPECT_LT(MaxRelErr(*got, NormLinearFloat64(x, norm_w, 1e-6, w)), dtype == at::kFloat ? 1e-5 : 8e-3);
  }
}

TEST(LinearAccumulate, AddsIntoTheResidualOnTheCpu) {
  at::manual_seed(9112);
  at::Tensor x = at::randn({3, 32}), w = at::randn({24, 32});
  at::Tensor residual = at::randn({3, 24});
  at::Tensor ref = residual.to(at::kDouble) + at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
  ASSERT_TRUE(LinearAccumulate(x, w, residual).ok());
  EXPECT_LT(MaxRelErr(residual, ref), 1e-5);
}

// silu(gate) * up in float64, rounded to x's dtype as kernels::SiluAndMul stores it.
at::Tensor SiluMulFloat64(const at::Tensor& x) {
  at::Tensor xd = x.cpu().to(at::kDouble);
  const int64_t f = x.size(-1) / 2;
  at::Tensor g = xd.narrow(-1, 0, f), u = xd.narrow(-1, f, f);
  return (g / (1.0 + at::exp(-g)) * u).to(x.scalar_type()).to(at::kDouble);
}

TEST(LinearAccumulate, ReadsSiluAndMulOfGateUpOnTheCpu) {
  at::manual_seed(9115);
  at::Tensor x = at::randn({2, 64}), w = at::randn({24, 32});
  at::Tensor residual = at::randn({2, 24});
  at::Tensor ref = residual.to(at::kDouble) + at::matmul(SiluMulFloat64(x), w.to(at::kDouble).t());
  ASSERT_TRUE(LinearAccumulate(x, w, residual, LinearInput::kSiluAndMul).ok());
  EXPECT_LT(MaxRelErr(residual, ref), 1e-5);
  // x's last dimension must be twice the weight's.
  EXPECT_THAT(LinearAccumulate(at::randn({2, 62}), w, residual, LinearInput::kSiluAndMul).message(),
              HasSubstr("weight"));
}

TEST(LinearAccumulate, NamesTheBadArgument) {
  at::Tensor x = at::randn({3, 32}), w = at::randn({24, 32});
  at::Tensor wrong_shape = at::randn({3, 23});
  absl::Status s = LinearAccumulate(x, w, wrong_shape);
  EXPECT_THAT(s.message(), HasSubstr("residual"));
  at::Tensor wrong_dtype = at::randn({3, 24}).to(at::kBFloat16);
  s = LinearAccumulate(x, w, wrong_dtype);
  EXPECT_THAT(s.message(), HasSubstr("residual"));
  at::Tensor strided = at::randn({24, 3}).t();
  s = LinearAccumulate(x, w, strided);
  EXPECT_THAT(s.message(), HasSubstr("residual"));
  at::Tensor fine = at::randn({3, 24});
  EXPECT_THAT(LinearAccumulate(x, at::randn({24, 31}), fine).message(), HasSubstr("weight"));
}

TEST(RmsNormLinear, NamesTheBadArgument) {
  at::Tensor x = at::randn({2, 16}), w = at::randn({8, 16});
  absl::StatusOr<at::Tensor> r = RmsNormLinear(x, at::randn({15}), 1e-6, w);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("norm_weight"));
  r = RmsNormLinear(x, at::randn({16}), -1.0, w);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("eps"));
  r = RmsNormLinear(x, at::randn({16}), 1e-6, at::randn({8, 17}));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("weight"));
}

// The CPU GEMV takes fp32 x with up to 16 rows (bf16: 2) and a contiguous weight; K off the 64-lane step
// (and below it) runs the scalar tail, N above the 64-feature grain is split across threads, and rows past
// 4 run in tiles of 4 over cache-sized blocks of weight rows (N 300 x K 1024 spans several blocks a thread).
TEST(CpuGemv, MatchesFloat64ForEveryRowCountItTakes) {
  at::manual_seed(9121);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{300, 1024}, {257, 100}, {65, 24}, {1, 8}, {130, 1000}};
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const int64_t max_rows = dtype == at::kFloat ? 16 : 2;
    for (const auto& [n, k] : shapes) {
      at::Tensor w = at::randn({n, k}).to(dtype);
      for (int64_t rows = 1; rows <= max_rows + 1; ++rows) {
        at::Tensor x = (at::randn({rows, k}) + 0.25).to(dtype);
        EXPECT_EQ(UsesSmallBatchLinear(x, w), rows <= max_rows) << rows << " rows";
        absl::StatusOr<at::Tensor> got = Linear(x, w);
        ASSERT_TRUE(got.ok()) << got.status();
        ASSERT_EQ(got->sizes(), (std::vector<int64_t>{rows, n}));
        ASSERT_EQ(got->scalar_type(), dtype);
        at::Tensor ref = at::matmul(x.to(at::kDouble), w.to(at::kDouble).t());
        // fp32: accumulation error only; bf16: one rounding of the result.
        EXPECT_LT(MaxRelErr(*got, ref), dtype == at::kFloat ? 2e-6 : 8e-3)
            << c10::toString(dtype) << ", " << rows << " rows, N " << n << ", K " << k;
      }
    }
  }
  at::set_num_threads(threads);
}

TEST(CpuGemv, ReadsStridedRowsAndLeadingDimensions) {
  at::manual_seed(9122);
  at::Tensor w = at::randn({96, 64});
  at::Tensor wide = at::randn({3, 80});
  at::Tensor x = wide.narrow(1, 16, 64);  // rows 80 elements apart
  ASSERT_TRUE(UsesSmallBatchLinear(x, w));
  absl::StatusOr<at::Tensor> got = Linear(x, w);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(MaxRelErr(*got, at::matmul(x.to(at::kDouble), w.to(at::kDouble).t())), 2e-6);
  at::Tensor x3 = at::randn({1, 2, 64});
  got = Linear(x3, w);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sizes(), (std::vector<int64_t>{1, 2, 96}));
  EXPECT_LT(MaxRelErr(got->reshape({2, 96}), at::matmul(x3.reshape({2, 64}).to(at::kDouble), w.to(at::kDouble).t())),
            2e-6);
  // A transposed weight is not contiguous: at::linear takes it.
  at::Tensor wt = at::randn({64, 96}).t();
  EXPECT_FALSE(UsesSmallBatchLinear(x3, wt));
  got = Linear(x3, wt);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(at::equal(*got, at::linear(x3, wt)));
}

// The residual add and the MLP's silu(gate) * up folded in, fp32 and bf16, against float64.
TEST(CpuGemv, AccumulatesAndReadsSiluAndMul) {
  at::manual_seed(9123);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const std::vector<int64_t> row_counts =
        dtype == at::kFloat ? std::vector<int64_t>{1, 2, 3, 4, 5, 8, 13, 16} : std::vector<int64_t>{1, 2};
    for (bool silu : {false, true}) {
      for (int64_t rows : row_counts) {
        const int64_t n = 200, k = 96;
        at::Tensor w = (at::randn({n, k}) * 0.1).to(dtype);
        at::Tensor x = (silu ? at::randn({rows, 2 * k}) * 2 : at::randn({rows, k})).to(dtype);
        at::Tensor residual = (at::randn({rows, n}) * 2).to(dtype);
        at::Tensor input = silu ? SiluMulFloat64(x) : x.to(at::kDouble);
        at::Tensor ref = residual.to(at::kDouble) + at::matmul(input, w.to(at::kDouble).t());
        ASSERT_TRUE(UsesSmallBatchLinear(silu ? x.narrow(-1, 0, k) : x, w));
        ASSERT_TRUE(LinearAccumulate(x, w, residual, silu ? LinearInput::kSiluAndMul : LinearInput::kAsIs).ok());
        EXPECT_LT(MaxRelErr(residual, ref), dtype == at::kFloat ? 2e-6 : 8e-3)
            << c10::toString(dtype) << ", silu " << silu << ", " << rows << " rows";
      }
    }
  }
}

// With the process-wide switch off, (x, w), which the small-batch kernel takes, goes to at::linear exactly;
// switched on again, the kernel takes it again.
void ExpectSwitchedOffGoesToAtLinear(const at::Tensor& x, const at::Tensor& w) {
  ASSERT_TRUE(UsesSmallBatchLinear(x, w));
  SetSmallBatchLinearEnabled(false);
  const bool used = UsesSmallBatchLinear(x, w);
  absl::StatusOr<at::Tensor> got = Linear(x, w);
  SetSmallBatchLinearEnabled(true);
  EXPECT_FALSE(used);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(at::equal(*got, at::linear(x, w)));
  EXPECT_TRUE(UsesSmallBatchLinear(x, w));
}

TEST(CpuGemv, SwitchedOffEverythingGoesToAtLinear) {
  at::manual_seed(9124);
  ExpectSwitchedOffGoesToAtLinear(at::randn({2, 64}), at::randn({96, 64}));
}

// INT8 weights: each value within half its group's scale of the original, the scale the group's max / 127.
TEST(Int8Weight, QuantizesEachGroupOfThirtyTwoToItsMax) {
  at::manual_seed(9131);
  at::Tensor w = at::randn({40, 96}) * at::linspace(0.01, 3.0, 96);  // groups of very different ranges
  w.narrow(1, 32, 32).narrow(0, 3, 1).zero_();                       // one all-zero group
  absl::StatusOr<LinearWeight> q = QuantizeWeightInt8(w);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_TRUE(q->quantized());
  EXPECT_EQ(q->weight.scalar_type(), at::kChar);
  EXPECT_EQ(q->scales.sizes(), (std::vector<int64_t>{40, 3}));
  const at::Tensor groups = w.reshape({40, 3, 32});
  EXPECT_TRUE(at::allclose(q->scales, groups.abs().amax(-1) / 127.0, 1e-6, 0));
  const at::Tensor err = (DequantizeWeight(*q, at::kFloat) - w).abs().reshape({40, 3, 32});
  EXPECT_TRUE((err <= q->scales.unsqueeze(-1) * 0.5001 + 1e-12).all().item<bool>());
  EXPECT_EQ(q->weight.narrow(1, 32, 32).narrow(0, 3, 1).abs().sum().item<int64_t>(), 0);
  EXPECT_EQ(q->weight.abs().max().item<int64_t>(), 127);
  // K must be a multiple of the group; the message names it.
  absl::StatusOr<LinearWeight> odd = QuantizeWeightInt8(at::randn({4, 48}));
  ASSERT_FALSE(odd.ok());
  EXPECT_THAT(odd.status().message(), HasSubstr("multiple of 32"));
  EXPECT_FALSE(QuantizeWeightInt8(at::randn({4, 32}).to(at::kDouble)).ok());
  EXPECT_TRUE(ParseWeightDtype("int8").ok());
  EXPECT_EQ(*ParseWeightDtype(""), WeightDtype::kSame);
  EXPECT_EQ(*ParseWeightDtype("int4"), WeightDtype::kInt4);
  EXPECT_THAT(ParseWeightDtype("int3").status().message(), HasSubstr("int4"));
}

// 4-bit weights as llama.cpp's Q4_0: the group's largest magnitude m is exactly -8 scales (scale m / -8), every
// value within half a scale (a whole one where the other sign's extreme clamps at 7), two values a byte (value
// j low, j + 16 high, stored + 8).
TEST(Int4Weight, QuantizesEachGroupAsQ40) {
  at::manual_seed(9135);
  at::Tensor w = at::randn({40, 96}) * at::linspace(0.01, 3.0, 96);
  w.narrow(1, 32, 32).narrow(0, 3, 1).zero_();  // one all-zero group
  absl::StatusOr<LinearWeight> q = QuantizeWeightInt4(w);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_TRUE(q->int4());
  EXPECT_EQ(q->weight.scalar_type(), at::kByte);
  EXPECT_EQ(q->weight.sizes(), (std::vector<int64_t>{40, 48}));
  EXPECT_EQ(q->in_features(), 96);
  const at::Tensor groups = w.reshape({40, 3, 32});
  const at::Tensor largest = groups.gather(-1, groups.abs().argmax(-1, true)).squeeze(-1);
  EXPECT_TRUE(at::allclose(q->scales, largest / -8.0, 1e-6, 0));
  const at::Tensor deq = DequantizeWeight(*q, at::kFloat).reshape({40, 3, 32});
  const at::Tensor err = (deq - groups).abs();
  EXPECT_TRUE((err <= q->scales.abs().unsqueeze(-1) * 1.0001 + 1e-12).all().item<bool>());
  // Away from the clamped extreme the error is half a scale.
  const at::Tensor inner = groups.abs() < q->scales.abs().unsqueeze(-1) * 6.5;
  EXPECT_TRUE((err.masked_select(inner) <= q->scales.abs().unsqueeze(-1).expand_as(err).masked_select(inner) * 0.5001 +
               1e-12).all().item<bool>());
  EXPECT_TRUE(at::allclose(deq.gather(-1, groups.abs().argmax(-1, true)).squeeze(-1), largest, 1e-6, 0));
  EXPECT_EQ(q->scales[3][1].item<float>(), 0.0f);
  EXPECT_TRUE((q->weight.narrow(1, 16, 16).narrow(0, 3, 1) == 0x88).all().item<bool>());
  // The byte layout: w_i = ((i % 16) - 8) / 2 has m = -4, scale 0.5, stored values i % 16: byte j = 17 j.
  at::Tensor ramp = (at::arange(32, at::kFloat).remainder(16) - 8) * 0.5;
  absl::StatusOr<LinearWeight> r = QuantizeWeightInt4(ramp.reshape({1, 32}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(at::equal(r->weight.reshape({16}).to(at::kInt), at::arange(16, at::kInt) * 17));
  EXPECT_TRUE(at::equal(DequantizeWeight(*r, at::kFloat), ramp.reshape({1, 32})));
  absl::StatusOr<LinearWeight> odd = QuantizeWeightInt4(at::randn({4, 48}));
  ASSERT_FALSE(odd.ok());
  EXPECT_THAT(odd.status().message(), HasSubstr("multiple of 32"));
}

// Both quantized formats, for the tests that hold the kernels to the dequantized product.
const WeightDtype kQuantized[] = {WeightDtype::kInt8, WeightDtype::kInt4};

// Where the quantized GEMV quantizes x per group of 32 (CPUs with AVX-512 VNNI), each x is within half a step
// (max |x_g| / 254) of its int8 value, so an output is within sum over groups of max |x_g| / 254 sum |w_g| of
// the float64 product: that bound per output, for x [rows, K] and w [N, K] in float64.
at::Tensor ActivationQuantBound(const at::Tensor& xd, const at::Tensor& wd) {
  const int64_t rows = xd.size(0), k = xd.size(1), n = wd.size(0);
  const at::Tensor half_step = xd.reshape({rows, k / 32, 32}).abs().amax(-1) / 254.0;
  return at::matmul(half_step, wd.abs().reshape({n, k / 32, 32}).sum(-1).t());
}

// got equals ref (x W^T in float64 for the x the kernel reads, `xd`) within `tol` of ref's largest value,
// or, where the GEMV took these rows and quantized them, within the activations' bound on top.
void ExpectQuantizedProduct(const at::Tensor& got, const at::Tensor& ref, const at::Tensor& xd, const at::Tensor& wd,
                            double tol, const std::string& what) {
  const at::Tensor err = (got.cpu().to(at::kDouble) - ref).abs();
  at::Tensor bound = at::full_like(ref, tol * ref.abs().max().item<double>());
  const int64_t rows = xd.numel() / xd.size(-1);
  if (rows <= internal::kCpuGemvMaxRows && internal::CpuGemvQuantizesActivations()) {
    bound = bound + ActivationQuantBound(xd.reshape({rows, xd.size(-1)}), wd).reshape(ref.sizes());
  }
  EXPECT_TRUE((err <= bound).all().item<bool>())
      << what << ": error exceeds its bound by " << (err - bound).max().item<double>();
}

// x times the quantized weight equals x times its dequantized float64 values: the GEMV for up to 16 rows (past
// 4 in row tiles), the dequantized blocks into at::mm for more (N beyond one 128-feature block), fp32 and
// bf16 activations, INT8 and 4-bit.
TEST(QuantizedWeight, LinearEqualsTheDequantizedProduct) {
  at::manual_seed(9132);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{300, 1024}, {257, 96}, {1, 32}})
  for (WeightDtype wdt : kQuantized) {
    absl::StatusOr<LinearWeight> q = QuantizeWeight(at::randn({n, k}) * 0.1, wdt);
    ASSERT_TRUE(q.ok()) << q.status();
    const at::Tensor wd = DequantizeWeight(*q, at::kDouble);
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      for (int64_t rows : {1, 2, 3, 4, 5, 8, 16, 17, 33}) {
        at::Tensor x = (at::randn({rows, k}) + 0.25).to(dtype);
        absl::StatusOr<at::Tensor> got = Linear(x, *q);
        ASSERT_TRUE(got.ok()) << got.status();
        ASSERT_EQ(got->sizes(), (std::vector<int64_t>{rows, n}));
        ASSERT_EQ(got->scalar_type(), dtype);
        const at::Tensor xd = x.to(at::kDouble);
        ExpectQuantizedProduct(*got, at::matmul(xd, wd.t()), xd, wd, dtype == at::kFloat ? 2e-6 : 8e-3,
                               c10::str(c10::toString(dtype), ", ", WeightDtypeName(wdt), ", ", rows, " rows, N ",
                                        n, ", K ", k));
      }
    }
  }
  at::set_num_threads(threads);
}

// Every instruction-set body of the quantized GEMV (the test CPU's own choice is the test above), where the
// CPU can run it, for both formats: the float bodies the product of x, the integer-dot body the product of x
// as it quantized it (QuantizeActivationsInt8's dequantized values), to float32 rounding; K = 160 gives the
// integer-dot body a chunk of one group.
TEST(QuantizedWeight, EveryGemvBodyEqualsTheDequantizedProduct) {
  at::manual_seed(9134);
  using internal::CpuIsa;
  bool int8_dot_ran = false;
  for (WeightDtype wdt : kQuantized)
  for (CpuIsa isa : {CpuIsa::kAvx512Vnni, CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kGeneric}) {
    absl::StatusOr<LinearWeight> q = QuantizeWeight(at::randn({200, 160}) * 0.1, wdt);
    ASSERT_TRUE(q.ok()) << q.status();
    const at::Tensor wd = DequantizeWeight(*q, at::kDouble);
    if (isa == CpuIsa::kAvx512Vnni && !internal::CpuHasInt8Dot()) continue;
    if (isa == CpuIsa::kAvx512 && !__builtin_cpu_supports("avx512f")) continue;
    if (isa == CpuIsa::kAvx2 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) continue;
    internal::SetCpuGemvQuantizedIsaForTesting(isa);
    for (int64_t rows : {1, 2, 3, 4, 7, 16}) {
      at::Tensor x = at::randn({rows, 160});
      x[0][5] = 0;  // a group's zero and its largest value land exactly
      absl::StatusOr<at::Tensor> got = Linear(x, *q);
      ASSERT_TRUE(got.ok()) << got.status();
      at::Tensor xref = x;
      if (isa == CpuIsa::kAvx512Vnni) {
        xref = at::empty_like(x);
        internal::Int8Activations unused;
        internal::QuantizeActivationsInt8(x.data_ptr<float>(), rows, 160, q->int4(), unused, xref.data_ptr<float>());
        EXPECT_GT((xref - x).abs().max().item<double>(), 0.0) << "x was not quantized";
        int8_dot_ran = true;
      }
      EXPECT_LT(MaxRelErr(*got, at::matmul(xref.to(at::kDouble), wd.t())), 2e-6)
          << "body " << static_cast<int>(isa) << ", " << WeightDtypeName(wdt) << ", " << rows << " rows";
    }
  }
  internal::SetCpuGemvQuantizedIsaForTesting(CpuIsa::kAuto);
  if (!int8_dot_ran) std::cout << "[   NOTE   ] no AVX-512 VNNI here: the integer-dot body did not run\n";
}

// Activations quantized per group of 32: the scale is the group's max / 127, every value within half a step
// of x, an all-zero group stays zero, and the largest value is exact.
TEST(QuantizedWeight, QuantizesActivationsPerGroupOfThirtyTwo) {
  at::manual_seed(9135);
  at::Tensor x = at::randn({3, 96}) * 4;
  x.narrow(1, 32, 32)[1].zero_();
  for (bool int4 : {false, true}) {
    at::Tensor back = at::empty_like(x);
    internal::Int8Activations q;
    internal::QuantizeActivationsInt8(x.data_ptr<float>(), 3, 96, int4, q, back.data_ptr<float>());
    EXPECT_EQ(q.chunks, 2);
    const at::Tensor amax = x.reshape({3, 3, 32}).abs().amax(-1, true);
    const at::Tensor err = (back - x).reshape({3, 3, 32}).abs();
    EXPECT_TRUE((err <= amax / 254 * (1 + 1e-6)).all().item<bool>()) << "int4 layout " << int4;
    EXPECT_TRUE(at::equal(back.narrow(1, 32, 32)[1], at::zeros({32})));
    const at::Tensor at_max = (x.reshape({3, 3, 32}).abs() == amax);
    EXPECT_LT((back - x).reshape({3, 3, 32}).masked_select(at_max).abs().max().item<float>(), 1e-5);
  }
}

// The residual add, silu(gate) * up and the norm with a quantized weight, for GEMV and GEMM row counts.
TEST(QuantizedWeight, AccumulatesReadsSiluAndMulAndNormalises) {
  at::manual_seed(9133);
  const int64_t n = 160, k = 64;
  for (WeightDtype wdt : kQuantized) {
  absl::StatusOr<LinearWeight> q = QuantizeWeight(at::randn({n, k}) * 0.1, wdt);
  ASSERT_TRUE(q.ok()) << q.status();
  const at::Tensor wd = DequantizeWeight(*q, at::kDouble);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const double tol = dtype == at::kFloat ? 2e-6 : 8e-3;
    for (int64_t rows : {1, 4, 6, 20}) {
      for (bool silu : {false, true}) {
        at::Tensor x = (silu ? at::randn({rows, 2 * k}) * 2 : at::randn({rows, k})).to(dtype);
        at::Tensor residual = (at::randn({rows, n}) * 2).to(dtype);
        const at::Tensor xd = silu ? SiluMulFloat64(x) : x.to(at::kDouble);
        at::Tensor ref = residual.to(at::kDouble) + at::matmul(xd, wd.t());
        ASSERT_TRUE(LinearAccumulate(x, *q, residual, silu ? LinearInput::kSiluAndMul : LinearInput::kAsIs).ok());
        ExpectQuantizedProduct(residual, ref, xd, wd, tol,
                               c10::str(c10::toString(dtype), ", ", WeightDtypeName(wdt), ", silu ", silu, ", ", rows));
      }
      at::Tensor x = (at::randn({rows, k}) * 3 + 0.5).to(dtype);
      at::Tensor norm_w = (at::randn({k}) * 0.2).to(dtype);
      absl::StatusOr<at::Tensor> got = RmsNormLinear(x, norm_w, 1e-6, *q);
      ASSERT_TRUE(got.ok()) << got.status();
      const at::Tensor normed = NormFloat64(x, norm_w, 1e-6);
      ExpectQuantizedProduct(*got, at::matmul(normed, wd.t()), normed, wd, dtype == at::kFloat ? 1e-5 : 8e-3,
                             c10::str("norm, ", c10::toString(dtype), ", ", WeightDtypeName(wdt), ", ", rows));
    }
  }
  }
}

TEST(Int8Weight, NamesTheBadArgument) {
  absl::StatusOr<LinearWeight> q = QuantizeWeightInt8(at::randn({16, 64}));
  ASSERT_TRUE(q.ok());
  EXPECT_THAT(Linear(at::randn({2, 32}), *q).status().message(), HasSubstr("weight"));
  LinearWeight bad_scales = *q;
  bad_scales.scales = at::ones({16, 3});
  EXPECT_THAT(Linear(at::randn({2, 64}), bad_scales).status().message(), HasSubstr("scales"));
  LinearWeight bad_values = *q;
  bad_values.weight = q->weight.to(at::kFloat);
  EXPECT_THAT(Linear(at::randn({2, 64}), bad_values).status().message(), HasSubstr("int8"));
  at::Tensor residual = at::randn({2, 15});
  EXPECT_THAT(LinearAccumulate(at::randn({2, 64}), *q, residual).message(), HasSubstr("residual"));
  // An empty batch is an empty result.
  absl::StatusOr<at::Tensor> empty = Linear(at::zeros({0, 64}), *q);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->sizes(), (std::vector<int64_t>{0, 16}));
}

#ifdef DELTASERVE_WITH_CUDA
class LinearCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (c10::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// max |got - ref| / max |ref| against x W^T in float64 from the same bf16 values.
double RelErrToFloat64(const at::Tensor& got, const at::Tensor& x, const at::Tensor& w) {
  return MaxRelErr(got, at::matmul(x.cpu().to(at::kDouble), w.cpu().to(at::kDouble).t()));
}

TEST_F(LinearCuda, SmallBatchKernelMatchesFloat64) {
  at::manual_seed(9102);
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  // (N, K): the 0.8B model's projections, a tiny one, a long K with few rows (every K split), odd N.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {8224, 1024}, {1024, 2048}, {7168, 1024}, {1024, 3584}, {1, 8}, {33, 40}, {5, 16384}, {300, 264}};
  for (const auto& [n, k] : shapes) {
    at::Tensor w = at::randn({n, k}, bf16);
    for (int64_t rows = 1; rows <= kSmallBatchLinearMaxRows; ++rows) {
      at::Tensor x = at::randn({rows, k}, bf16) + 0.25;
      ASSERT_TRUE(UsesSmallBatchLinear(x, w)) << rows << " x " << k;
      absl::StatusOr<at::Tensor> got = Linear(x, w);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->sizes(), (std::vector<int64_t>{rows, n}));
      // fp32 accumulation, one bf16 rounding of the result: within bf16's half-ulp of the largest value.
      EXPECT_LT(RelErrToFloat64(*got, x, w), 8e-3) << rows << " rows, N " << n << ", K " << k;
    }
  }
}

TEST_F(LinearCuda, StridedRowsAndLeadingDimensions) {
  at::manual_seed(9103);
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor w = at::randn({96, 64}, bf16);
  // Rows 16 elements apart inside a wider tensor (a narrow() of a projection), and [1, 2, K].
  at::Tensor wide = at::randn({2, 80}, bf16);
  at::Tensor x = wide.narrow(1, 16, 64);
  ASSERT_TRUE(UsesSmallBatchLinear(x, w));
  absl::StatusOr<at::Tensor> got = Linear(x, w);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(RelErrToFloat64(*got, x, w), 8e-3);
  at::Tensor x3 = at::randn({1, 2, 64}, bf16);
  ASSERT_TRUE(UsesSmallBatchLinear(x3, w));
  got = Linear(x3, w);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sizes(), (std::vector<int64_t>{1, 2, 96}));
  EXPECT_LT(RelErrToFloat64(got->reshape({2, 96}), x3.reshape({2, 64}), w), 8e-3);
}

TEST_F(LinearCuda, OtherCasesGoToCublas) {
  at::manual_seed(9104);
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor w = at::randn({64, 32}, bf16);
  at::Tensor many = at::randn({kSmallBatchLinearMaxRows + 1, 32}, bf16);
  EXPECT_FALSE(UsesSmallBatchLinear(many, w));
  EXPECT_FALSE(UsesSmallBatchLinear(at::randn({2, 32}, bf16.dtype(at::kFloat)), w.to(at::kFloat)));
  EXPECT_FALSE(UsesSmallBatchLinear(at::randn({2, 12}, bf16), at::randn({64, 12}, bf16)));  // K % 8 != 0
  for (const at::Tensor& x : {many, at::randn({2, 12}, bf16)}) {
    at::Tensor wk = x.size(1) == 32 ? w : at::randn({64, 12}, bf16);
    absl::StatusOr<at::Tensor> got = Linear(x, wk);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(at::equal(*got, at::linear(x, wk)));
  }
}

TEST_F(LinearCuda, SwitchedOffEverythingGoesToCublas) {
  at::manual_seed(9105);
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  ExpectSwitchedOffGoesToAtLinear(at::randn({2, 64}, bf16), at::randn({96, 64}, bf16));
}

// The norm folded into the kernel: the model's shapes (hidden 1024 and the 9B's 4096), a tiny and an
// odd one, bf16 and fp32 norm weights, every row count the kernel takes and one more (the composition).
TEST_F(LinearCuda, RmsNormLinearMatchesFloat64) {
  at::manual_seed(9113);
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{8224, 1024}, {7168, 1024}, {512, 4096}, {5, 8}, {300, 264}};
  for (const auto& [n, k] : shapes) {
    at::Tensor w = at::randn({n, k}, bf16);
    for (at::ScalarType norm_dtype : {at::kBFloat16, at::kFloat}) {
      at::Tensor norm_w = (at::randn({k}, bf16) * 0.3).to(norm_dtype);
      for (int64_t rows = 1; rows <= kSmallBatchLinearMaxRows + 1; ++rows) {
        at::Tensor x = at::randn({rows, k}, bf16) * 4 + 0.5;
        absl::StatusOr<at::Tensor> got = RmsNormLinear(x, norm_w, 1e-6, w);
        ASSERT_TRUE(got.ok()) << got.status();
        ASSERT_EQ(got->sizes(), (std::vector<int64_t>{rows, n}));
        EXPECT_LT(MaxRelErr(*got, NormLinearFloat64(x, norm_w, 1e-6, w)), 8e-3)
            << rows << " rows, N " << n << ", K " << k << ", norm " << c10::toString(norm_dtype);
      }
    }
  }
}

// LinearAccumulate of `input` against float64 for each (N, K) and every row count the kernel takes plus
// one more (the composition): x is [rows, K], or [rows, 2K] of [gate | up] for kSiluAndMul.
void ExpectAccumulateMatchesFloat64(const std::vector<std::pair<int64_t, int64_t>>& shapes, LinearInput input) {
  const at::TensorOptions bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const bool silu = input == LinearInput::kSiluAndMul;
  for (const auto& [n, k] : shapes) {
    at::Tensor w = at::randn({n, k}, bf16) * 0.05;
    for (int64_t rows = 1; rows <= kSmallBatchLinearMaxRows + 1; ++rows) {
      at::Tensor x = silu ? at::randn({rows, 2 * k}, bf16) * 2 : at::randn({rows, k}, bf16);
      at::Tensor residual = at::randn({rows, n}, bf16) * 2;
      at::Tensor product_input = silu ? SiluMulFloat64(x) : x.cpu().to(at::kDouble);
      at::Tensor ref = residual.cpu().to(at::kDouble) + at::matmul(product_input, w.cpu().to(at::kDouble).t());
      ASSERT_TRUE(LinearAccumulate(x, w, residual, input).ok());
      EXPECT_LT(MaxRelErr(residual, ref), 8e-3) << rows << " rows, N " << n << ", K " << k;
    }
  }
}

// The residual add folded into the kernel's epilogue (rows the kernel takes) and addmm (one more row).
TEST_F(LinearCuda, LinearAccumulateMatchesFloat64) {
  at::manual_seed(9114);
  ExpectAccumulateMatchesFloat64({{1024, 3584}, {1024, 2048}, {33, 40}}, LinearInput::kAsIs);
}

// The MLP's silu(gate) * up folded into the kernel's load of x, with the residual add (the down
// projection of the decode step), against float64; one more row than the kernel takes is the composition.
TEST_F(LinearCuda, SiluAndMulLinearAccumulateMatchesFloat64) {
  at::manual_seed(9116);
  ExpectAccumulateMatchesFloat64({{1024, 3584}, {4096, 12288}, {33, 40}}, LinearInput::kSiluAndMul);
}
#endif

}  // namespace
}  // namespace deltaserve::kernels
