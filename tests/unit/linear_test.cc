// kernels::Linear: the same result as at::linear on the CPU, bad arguments named, and, where a GPU is
// present, the small-batch CUDA kernel against a float64 reference for every row count it takes, odd
// shapes and strided rows, plus the hand-over to cuBLAS beyond its row limit.
#include "deltaserve/kernels/linear.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

#ifdef DELTASERVE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace deltaserve::kernels {
namespace {

using ::testing::HasSubstr;

TEST(Linear, EqualsAtLinearOnTheCpu) {
  at::manual_seed(9101);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    at::Tensor x = at::randn({3, 5, 24}).to(dtype);
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

#ifdef DELTASERVE_WITH_CUDA
class LinearCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (c10::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// max |got - ref| / max |ref| against x W^T in float64 from the same bf16 values.
double RelErrToFloat64(const at::Tensor& got, const at::Tensor& x, const at::Tensor& w) {
  at::Tensor ref = at::matmul(x.cpu().to(at::kDouble), w.cpu().to(at::kDouble).t());
  return (got.cpu().to(at::kDouble) - ref).abs().max().item<double>() / ref.abs().max().item<double>();
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
  // Rows 16 elements apart inside a wider tensor (a narrow() of a projection), and [1, 3, K].
  at::Tensor wide = at::randn({3, 80}, bf16);
  at::Tensor x = wide.narrow(1, 16, 64);
  ASSERT_TRUE(UsesSmallBatchLinear(x, w));
  absl::StatusOr<at::Tensor> got = Linear(x, w);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(RelErrToFloat64(*got, x, w), 8e-3);
  at::Tensor x3 = at::randn({1, 3, 64}, bf16);
  got = Linear(x3, w);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->sizes(), (std::vector<int64_t>{1, 3, 96}));
  EXPECT_LT(RelErrToFloat64(got->reshape({3, 96}), x3.reshape({3, 64}), w), 8e-3);
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
  at::Tensor x = at::randn({2, 64}, bf16), w = at::randn({96, 64}, bf16);
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
#endif

}  // namespace
}  // namespace deltaserve::kernels
