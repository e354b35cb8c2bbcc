// Checks CausalConv1d and CausalConv1dStep against an explicit double-precision loop, across batching,
// packed variable-length sequences, the decode step's slot pool, bfloat16, and argument validation.
#include "deltaserve/kernels/causal_conv1d.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "support/sync_debug.h"

namespace deltaserve::kernels {
namespace {

using ::testing::HasSubstr;

struct Reference {
  at::Tensor y;            // [L, D] double
  at::Tensor final_state;  // [D, K - 1] double
};

// One sequence, straight from the definition: x [L, D], weight [D, K], bias [D] and init [D, K - 1]
// optional (undefined).
Reference ReferenceSequence(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& init, bool silu) {
  const at::Tensor xd = x.to(at::kDouble).cpu().contiguous();
  const at::Tensor wd = weight.to(at::kDouble).cpu().contiguous();
  const at::Tensor bd = bias.defined() ? bias.to(at::kDouble).cpu().contiguous() : at::Tensor();
  const at::Tensor id = init.defined() ? init.to(at::kDouble).cpu().contiguous() : at::Tensor();
  const int64_t len = xd.size(0);
  const int64_t dim = wd.size(0);
  const int64_t k = wd.size(1);
  const auto xa = xd.accessor<double, 2>();
  const auto wa = wd.accessor<double, 2>();

  // Input u of the sequence; u < 0 reads the initial state, whose last column is input -1.
  auto input = [&](int64_t u, int64_t d) -> double {
    if (u >= 0) return xa[u][d];
    return id.defined() ? id.accessor<double, 2>()[d][k - 1 + u] : 0.0;
  };

  Reference ref;
  ref.y = at::zeros({len, dim}, at::kDouble);
  ref.final_state = at::zeros({dim, k - 1}, at::kDouble);
  auto ya = ref.y.accessor<double, 2>();
  auto fa = ref.final_state.accessor<double, 2>();
  for (int64_t t = 0; t < len; ++t) {
    for (int64_t d = 0; d < dim; ++d) {
      double acc = bd.defined() ? bd.accessor<double, 1>()[d] : 0.0;
      for (int64_t j = 0; j < k; ++j) acc += wa[d][j] * input(t - k + 1 + j, d);
      if (silu) acc = acc / (1.0 + std::exp(-acc));
      ya[t][d] = acc;
    }
  }
  for (int64_t d = 0; d < dim; ++d) {
    for (int64_t j = 0; j < k - 1; ++j) fa[d][j] = input(len - (k - 1) + j, d);
  }
  return ref;
}

// x [B, T, D], init [B, D, K - 1] or undefined: y [B, T, D], final_state [B, D, K - 1].
Reference ReferenceBatch(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const at::Tensor& init, bool silu) {
  std::vector<at::Tensor> ys;
  std::vector<at::Tensor> finals;
  for (int64_t b = 0; b < x.size(0); ++b) {
    Reference one = ReferenceSequence(x[b], weight, bias, init.defined() ? init[b] : at::Tensor(), silu);
    ys.push_back(one.y);
    finals.push_back(one.final_state);
  }
  return {at::stack(ys), at::stack(finals)};
}

// |got - want| <= atol + rtol |want| everywhere.
void ExpectClose(const at::Tensor& got, const at::Tensor& want, double atol, double rtol,
                 const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const at::Tensor g = got.to(at::kDouble).cpu();
  const at::Tensor w = want.to(at::kDouble).cpu();
  const double excess = ((g - w).abs() - rtol * w.abs()).max().item<double>();
  EXPECT_LE(excess, atol) << what << ": max |got - want| = " << (g - w).abs().max().item<double>();
}

// States are copies of inputs, never computed, so they must match exactly.
void ExpectExact(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(at::equal(got.to(at::kDouble).cpu(), want.to(at::kDouble).cpu())) << what;
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(needle));
}

at::Tensor Int64Tensor(const std::vector<int64_t>& values) {
  return at::tensor(at::ArrayRef<int64_t>(values), at::TensorOptions().dtype(at::kLong));
}

// Weights at half scale keep outputs O(1), where a float32 tolerance of 1e-5 has headroom.
at::Tensor RandomWeight(int64_t dim, int64_t k, at::ScalarType dtype) {
  return (0.5 * at::randn({dim, k}, at::kDouble)).to(dtype);
}

void RunBatchCase(bool with_initial_state, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t batch = 3, len = 37, dim = 24, k = 4;
  const at::Tensor x = at::randn({batch, len, dim}, at::kFloat);
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat);
  const at::Tensor bias = at::randn({dim}, at::kFloat);
  const at::Tensor init = with_initial_state ? at::randn({batch, dim, k - 1}, at::kFloat) : at::Tensor();

  absl::StatusOr<CausalConv1dOutput> out = CausalConv1d(x, weight, bias, init, at::Tensor(), /*silu=*/true);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->y.scalar_type(), at::kFloat);
  EXPECT_TRUE(out->y.is_contiguous());
  const Reference ref = ReferenceBatch(x, weight, bias, init, /*silu=*/true);
  ExpectClose(out->y, ref.y, 1e-5, 1e-5, "y");
  ExpectExact(out->final_state, ref.final_state, "final_state");
}

TEST(CausalConv1dTest, BatchWithBiasAndSiluMatchesReference) { RunBatchCase(false, 101); }

TEST(CausalConv1dTest, BatchWithInitialStateMatchesReference) { RunBatchCase(true, 102); }

TEST(CausalConv1dTest, Float64WithoutBiasOrActivationMatchesReference) {
  at::manual_seed(103);
  const int64_t batch = 2, len = 11, dim = 8, k = 3;
  const at::Tensor x = at::randn({batch, len, dim}, at::kDouble);
  const at::Tensor weight = RandomWeight(dim, k, at::kDouble);
  const at::Tensor init = at::randn({batch, dim, k - 1}, at::kDouble);

  absl::StatusOr<CausalConv1dOutput> out = CausalConv1d(x, weight, at::Tensor(), init, at::Tensor(), false);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->y.scalar_type(), at::kDouble);
  const Reference ref = ReferenceBatch(x, weight, at::Tensor(), init, false);
  ExpectClose(out->y, ref.y, 1e-12, 0.0, "y");
  ExpectExact(out->final_state, ref.final_state, "final_state");
}

TEST(CausalConv1dTest, PackedSequencesMatchSeparateCallsAndReference) {
  at::manual_seed(202);
  const int64_t dim = 24, k = 4;
  // Zero-length sequences first and in the middle; 2 < K - 1 keeps part of its initial state, also
  // when it is the last sequence of the pack.
  const std::vector<std::vector<int64_t>> cases = {{0, 2, 12, 23}, {5, 0, 12, 2}};
  for (const std::vector<int64_t>& lengths : cases) {
    const int64_t num_seqs = static_cast<int64_t>(lengths.size());
    std::vector<int64_t> offsets = {0};
    for (int64_t len : lengths) offsets.push_back(offsets.back() + len);
    const int64_t total = offsets.back();
    const std::string label = "lengths {" + std::to_string(lengths[0]) + ", " + std::to_string(lengths[1]) +
                              ", " + std::to_string(lengths[2]) + ", " + std::to_string(lengths[3]) + "}";

    const at::Tensor x = at::randn({1, total, dim}, at::kFloat);
    const at::Tensor weight = RandomWeight(dim, k, at::kFloat);
    const at::Tensor bias = at::randn({dim}, at::kFloat);
    const at::Tensor init = at::randn({num_seqs, dim, k - 1}, at::kFloat);

    absl::StatusOr<CausalConv1dOutput> packed =
        CausalConv1d(x, weight, bias, init, Int64Tensor(offsets), /*silu=*/true);
    ASSERT_TRUE(packed.ok()) << label << ": " << packed.status();
    ASSERT_EQ(packed->y.sizes(), x.sizes()) << label;
    ASSERT_EQ(packed->final_state.sizes(), init.sizes()) << label;

    for (int64_t i = 0; i < num_seqs; ++i) {
      const std::string seq = label + ", sequence " + std::to_string(i);
      const int64_t start = offsets[i];
      const int64_t len = lengths[i];
      const Reference ref = ReferenceSequence(x[0].narrow(0, start, len), weight, bias, init[i], true);
      ExpectExact(packed->final_state[i], ref.final_state, seq + " final_state vs reference");
      if (len == 0) {
        ExpectExact(packed->final_state[i], init[i], seq + " final_state of an empty sequence");
        continue;
      }
      const at::Tensor packed_y = packed->y[0].narrow(0, start, len);
      ExpectClose(packed_y, ref.y, 1e-5, 1e-5, seq + " y vs reference");

      absl::StatusOr<CausalConv1dOutput> alone =
          CausalConv1d(x.narrow(1, start, len).contiguous(), weight, bias, init.narrow(0, i, 1).contiguous(),
                       at::Tensor(), true);
      ASSERT_TRUE(alone.ok()) << seq << ": " << alone.status();
      ExpectClose(packed_y, alone->y[0], 1e-5, 1e-5, seq + " y vs separate call");
      ExpectExact(packed->final_state[i], alone->final_state[0], seq + " final_state vs separate call");
    }
  }
}

TEST(CausalConv1dTest, StepTokenByTokenMatchesFullSequenceAndLeavesOtherSlots) {
  at::manual_seed(303);
  const int64_t batch = 2, len = 9, dim = 16, k = 4, pool_slots = 5;
  const at::Tensor x = at::randn({batch, len, dim}, at::kFloat);
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat);
  const at::Tensor bias = at::randn({dim}, at::kFloat);
  const at::Tensor init = at::randn({batch, dim, k - 1}, at::kFloat);
  const at::Tensor slots = Int64Tensor({3, 1});

  at::Tensor pool = at::randn({pool_slots, dim, k - 1}, at::kFloat);
  pool.index_copy_(0, slots, init);
  const at::Tensor before = pool.clone();

  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < len; ++t) {
    absl::StatusOr<at::Tensor> y =
        CausalConv1dStep(x.select(1, t).contiguous(), weight, bias, pool, slots, true);
    ASSERT_TRUE(y.ok()) << "token " << t << ": " << y.status();
    ASSERT_EQ(y->sizes().vec(), std::vector<int64_t>({batch, dim}));
    ys.push_back(*y);
  }

  absl::StatusOr<CausalConv1dOutput> full = CausalConv1d(x, weight, bias, init, at::Tensor(), true);
  ASSERT_TRUE(full.ok()) << full.status();
  ExpectClose(at::stack(ys, 1), full->y, 1e-5, 1e-5, "stepped y vs full-sequence y");
  ExpectExact(pool.index_select(0, slots), full->final_state, "pool at slots vs full-sequence final_state");
  ExpectClose(at::stack(ys, 1), ReferenceBatch(x, weight, bias, init, true).y, 1e-5, 1e-5,
              "stepped y vs reference");
  for (int64_t s : {0, 2, 4}) {
    EXPECT_TRUE(at::equal(pool[s], before[s])) << "slot " << s << " was not addressed but changed";
  }
}

TEST(CausalConv1dTest, BFloat16MatchesReferenceWithinBf16Tolerance) {
  at::manual_seed(404);
  const int64_t batch = 2, len = 20, dim = 16, k = 4;
  const at::Tensor x = at::randn({batch, len, dim}, at::kFloat).to(at::kBFloat16);
  const at::Tensor weight = RandomWeight(dim, k, at::kBFloat16);
  const at::Tensor bias = at::randn({dim}, at::kFloat).to(at::kBFloat16);
  const at::Tensor init = at::randn({batch, dim, k - 1}, at::kFloat).to(at::kBFloat16);

  absl::StatusOr<CausalConv1dOutput> out = CausalConv1d(x, weight, bias, init, at::Tensor(), true);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->y.scalar_type(), at::kBFloat16);
  EXPECT_EQ(out->final_state.scalar_type(), at::kBFloat16);
  // The reference sees the same bf16-rounded inputs; what remains is the output's rounding to bf16
  // (8 significant bits), well inside 2^-7 relative.
  const Reference ref = ReferenceBatch(x, weight, bias, init, true);
  ExpectClose(out->y, ref.y, 1e-3, 1.0 / 128, "bf16 y");
  ExpectExact(out->final_state, ref.final_state, "bf16 final_state");

  const at::Tensor slots = Int64Tensor({2, 0});
  at::Tensor pool = at::randn({3, dim, k - 1}, at::kFloat).to(at::kBFloat16);
  pool.index_copy_(0, slots, init);
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < len; ++t) {
    absl::StatusOr<at::Tensor> y =
        CausalConv1dStep(x.select(1, t).contiguous(), weight, bias, pool, slots, true);
    ASSERT_TRUE(y.ok()) << "token " << t << ": " << y.status();
    EXPECT_EQ(y->scalar_type(), at::kBFloat16);
    ys.push_back(*y);
  }
  ExpectClose(at::stack(ys, 1), ref.y, 1e-3, 1.0 / 128, "bf16 stepped y");
  ExpectExact(pool.index_select(0, slots), ref.final_state, "bf16 pool at slots");
}

TEST(CausalConv1dTest, RunsOnCudaLikeOnCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(505);
  const int64_t dim = 32, k = 4;
  const at::Tensor x = at::randn({1, 30, dim}, at::kFloat);
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat);
  const at::Tensor bias = at::randn({dim}, at::kFloat);
  const at::Tensor init = at::randn({3, dim, k - 1}, at::kFloat);
  const at::Tensor cu = Int64Tensor({0, 1, 30, 30});
  const at::Device gpu(at::kCUDA, 0);

  absl::StatusOr<CausalConv1dOutput> cpu = CausalConv1d(x, weight, bias, init, cu, true);
  absl::StatusOr<CausalConv1dOutput> cuda =
      CausalConv1d(x.to(gpu), weight.to(gpu), bias.to(gpu), init.to(gpu), cu.to(gpu), true);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_TRUE(cuda->y.is_cuda());
  ExpectClose(cuda->y, cpu->y, 1e-5, 1e-5, "packed y on CUDA");
  ExpectExact(cuda->final_state, cpu->final_state, "packed final_state on CUDA");

  at::Tensor pool = at::randn({4, dim, k - 1}, at::kFloat).to(gpu);
  const at::Tensor slots = Int64Tensor({2}).to(gpu);
  const at::Tensor before = pool.clone();
  absl::StatusOr<at::Tensor> y =
      CausalConv1dStep(x[0][0].unsqueeze(0).to(gpu), weight.to(gpu), bias.to(gpu), pool, slots, true);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_TRUE(y->is_cuda());
  for (int64_t s : {0, 1, 3}) EXPECT_TRUE(at::equal(pool[s], before[s])) << "slot " << s;
  EXPECT_FALSE(at::equal(pool[2], before[2]));
}

// The step reads x's rows where they are: a view into a wider projection (strided rows) gives exactly
// what its contiguous copy gives, on the CPU and, where present, on CUDA.
TEST(CausalConv1dTest, StepReadsStridedRowsInPlace) {
  at::manual_seed(515);
  const int64_t dim = 40, k = 4;
  const at::Tensor wide = at::randn({3, dim + 9}, at::kFloat);
  const at::Tensor x = wide.narrow(1, 5, dim);
  ASSERT_FALSE(x.is_contiguous());
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat), bias = at::randn({dim}, at::kFloat);
  const at::Tensor pool = at::randn({4, dim, k - 1}, at::kFloat);
  const std::vector<int64_t> slots = {3, -1, 0};
  std::vector<at::Device> devices = {at::kCPU};
  if (at::hasCUDA()) devices.emplace_back(at::kCUDA, 0);
  for (const at::Device& d : devices) {
    at::Tensor strided_pool = pool.to(d).clone(), copy_pool = pool.to(d).clone();
    const at::Tensor xd = wide.to(d).narrow(1, 5, dim);
    absl::StatusOr<at::Tensor> a =
        CausalConv1dStep(xd, weight.to(d), bias.to(d), strided_pool, Int64Tensor(slots).to(d), true, slots);
    absl::StatusOr<at::Tensor> b = CausalConv1dStep(xd.contiguous(), weight.to(d), bias.to(d), copy_pool,
                                                    Int64Tensor(slots).to(d), true, slots);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    ExpectExact(*a, *b, "strided y on " + d.str());
    ExpectExact(strided_pool, copy_pool, "pool after strided x on " + d.str());
  }
}

TEST(CausalConv1dTest, HostMetadataGivesIdenticalResults) {
  at::manual_seed(707);
  const int64_t dim = 21, k = 4;
  const std::vector<int64_t> offsets = {0, 3, 3, 17, 18};
  const at::Tensor x = at::randn({1, 18, dim}, at::kFloat);
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat);
  const at::Tensor bias = at::randn({dim}, at::kFloat);
  const at::Tensor init = at::randn({4, dim, k - 1}, at::kFloat);
  absl::StatusOr<CausalConv1dOutput> device_only =
      CausalConv1d(x, weight, bias, init, Int64Tensor(offsets), true);
  absl::StatusOr<CausalConv1dOutput> with_host =
      CausalConv1d(x, weight, bias, init, Int64Tensor(offsets), true, offsets);
  ASSERT_TRUE(device_only.ok()) << device_only.status();
  ASSERT_TRUE(with_host.ok()) << with_host.status();
  EXPECT_TRUE(at::equal(with_host->y, device_only->y));
  EXPECT_TRUE(at::equal(with_host->final_state, device_only->final_state));

  const std::vector<int64_t> slots = {4, 0, 2};
  at::Tensor pool_a = at::randn({5, dim, k - 1}, at::kFloat);
  at::Tensor pool_b = pool_a.clone();
  for (int64_t t = 0; t < 3; ++t) {
    const at::Tensor xt = at::randn({3, dim}, at::kFloat);
    absl::StatusOr<at::Tensor> ya = CausalConv1dStep(xt, weight, bias, pool_a, Int64Tensor(slots), true);
    absl::StatusOr<at::Tensor> yb =
        CausalConv1dStep(xt, weight, bias, pool_b, Int64Tensor(slots), true, slots);
    ASSERT_TRUE(ya.ok()) << ya.status();
    ASSERT_TRUE(yb.ok()) << yb.status();
    EXPECT_TRUE(at::equal(*ya, *yb)) << "token " << t;
  }
  EXPECT_TRUE(at::equal(pool_a, pool_b));
}

// Negative slots are padding rows: zero output, no state touched, and the other rows exactly as in a
// call without the padding.
void RunPaddingCase(at::ScalarType dtype, int64_t k, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t dim = 19, pool_slots = 6;
  const at::Tensor weight = RandomWeight(dim, k, dtype);
  const at::Tensor bias = at::randn({dim}, at::kFloat).to(dtype);
  at::Tensor padded_pool = at::randn({pool_slots, dim, k - 1}, at::kFloat).to(dtype);
  at::Tensor plain_pool = padded_pool.clone();
  const std::vector<int64_t> padded_slots = {-1, 5, -1, 0, 3, -7};
  const std::vector<int64_t> real_rows = {1, 3, 4};
  const std::vector<int64_t> plain_slots = {5, 0, 3};
  const std::string label = std::string(c10::toString(dtype)) + " K=" + std::to_string(k);
  for (int64_t t = 0; t < 4; ++t) {
    const at::Tensor x = at::randn({6, dim}, at::kFloat).to(dtype);
    // Host copy given on even tokens only: both routes must skip the padding.
    const std::vector<int64_t> host = t % 2 == 0 ? padded_slots : std::vector<int64_t>{};
    absl::StatusOr<at::Tensor> padded =
        CausalConv1dStep(x, weight, bias, padded_pool, Int64Tensor(padded_slots), true, host);
    absl::StatusOr<at::Tensor> plain = CausalConv1dStep(x.index_select(0, Int64Tensor(real_rows)), weight,
                                                        bias, plain_pool, Int64Tensor(plain_slots), true);
    ASSERT_TRUE(padded.ok()) << label << ": " << padded.status();
    ASSERT_TRUE(plain.ok()) << label << ": " << plain.status();
    EXPECT_TRUE(at::equal(padded->index_select(0, Int64Tensor(real_rows)), *plain))
        << label << " token " << t;
    for (int64_t row : {0, 2, 5}) {
      EXPECT_TRUE(at::equal((*padded)[row], at::zeros({dim}, padded->options()))) << label << " row " << row;
    }
    EXPECT_NE((*padded)[1].abs().sum().item<double>(), 0.0) << label;
  }
  EXPECT_TRUE(at::equal(padded_pool, plain_pool)) << label << ": the pools must match slot for slot";

  // A batch of padding alone: zeros out, pool untouched.
  const at::Tensor before = padded_pool.clone();
  absl::StatusOr<at::Tensor> none = CausalConv1dStep(at::randn({2, dim}, at::kFloat).to(dtype), weight, bias,
                                                     padded_pool, Int64Tensor({-1, -1}), true);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(at::equal(*none, at::zeros({2, dim}, none->options())));
  EXPECT_TRUE(at::equal(padded_pool, before));
}

TEST(CausalConv1dTest, StepPaddingRowsAreZeroAndTouchNothing) {
  RunPaddingCase(at::kFloat, 4, 808);
  RunPaddingCase(at::kFloat, 2, 809);
  RunPaddingCase(at::kBFloat16, 3, 810);
}

// Prefill against the pool: each packed sequence (empty, shorter than K - 1, crossing the CUDA kernel's
// 16-token tiles, starting mid-tile) from its own slot's state, x a view with strided rows, the pool rows of
// the sequences replaced by their last inputs and every other row untouched. Against the float64
// definition on the CPU and, where present, on CUDA (float32 and bfloat16, K of 2, 3 and 4).
void RunPrefillCase(const at::Device& device, at::ScalarType dtype, int64_t k, bool with_bias, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t dim = 45, pool_slots = 9;
  const std::vector<int64_t> lengths = {3, 0, 1, 2, 40, 17, 0};
  const std::vector<int64_t> slots = {5, 0, 3, 7, 1, 2, 8};
  std::vector<int64_t> cu = {0};
  for (int64_t len : lengths) cu.push_back(cu.back() + len);
  const int64_t total = cu.back();
  const at::Tensor wide = at::randn({total, dim + 7}, at::kFloat).to(dtype);
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat).to(dtype);
  const at::Tensor bias = with_bias ? at::randn({dim}, at::kFloat).to(dtype) : at::Tensor();
  const at::Tensor pool_before = at::randn({pool_slots, dim, k - 1}, at::kFloat).to(dtype);
  const at::Tensor x = wide.to(device).narrow(1, 3, dim);
  ASSERT_FALSE(x.is_contiguous());
  const std::string label = device.str() + " " + c10::toString(dtype) + " K=" + std::to_string(k);
  // Host copies on the CPU; on CUDA both routes (host copies, and read back from the device).
  for (bool host : {true, false}) {
    at::Tensor p = pool_before.to(device).clone();
    absl::StatusOr<at::Tensor> y = CausalConv1dPrefill(
        x, weight.to(device), with_bias ? bias.to(device) : at::Tensor(), p, Int64Tensor(slots).to(device),
        Int64Tensor(cu).to(device), true, host ? absl::Span<const int64_t>(cu) : absl::Span<const int64_t>(),
        host ? absl::Span<const int64_t>(slots) : absl::Span<const int64_t>());
    ASSERT_TRUE(y.ok()) << label << ": " << y.status();
    ASSERT_EQ(y->device(), device);
    ASSERT_EQ(y->scalar_type(), dtype);
    ASSERT_EQ(y->sizes(), (std::vector<int64_t>{total, dim}));
    for (size_t i = 0; i < lengths.size(); ++i) {
      const Reference ref = ReferenceSequence(wide.narrow(1, 3, dim).narrow(0, cu[i], lengths[i]), weight, bias,
                                              pool_before[slots[i]], true);
      const std::string what = label + " sequence " + std::to_string(i);
      if (lengths[i] == 0) {
        // Nothing to output; the state below must be the old one.
      } else if (dtype == at::kFloat) {
        ExpectClose(y->narrow(0, cu[i], lengths[i]), ref.y, 1e-5, 1e-5, what + " y");
      } else {  // one bf16 rounding of a float32 sum
        ExpectClose(y->narrow(0, cu[i], lengths[i]), ref.y, 1e-3, 1.0 / 128, what + " y");
      }
      ExpectExact(p[slots[i]], ref.final_state, what + " state");
    }
    ExpectExact(p[4], pool_before[4], label + " untouched slot 4");
    ExpectExact(p[6], pool_before[6], label + " untouched slot 6");
  }
}

TEST(CausalConv1dTest, PrefillAgainstThePoolMatchesReferenceAndLeavesOtherSlots) {
  std::vector<at::Device> devices = {at::kCPU};
  if (at::hasCUDA()) devices.emplace_back(at::kCUDA, 0);
  uint64_t seed = 900;
  for (const at::Device& d : devices) {
    RunPrefillCase(d, at::kFloat, 4, true, ++seed);
    RunPrefillCase(d, at::kFloat, 2, false, ++seed);
    RunPrefillCase(d, at::kFloat, 3, true, ++seed);
    RunPrefillCase(d, at::kBFloat16, 4, true, ++seed);
  }
}

#ifdef DELTASERVE_WITH_CUDA
// The CUDA prefill gives the CPU's outputs (float32: summation order only) and the same pool, and with
// host copies of the offsets and slots it never synchronises.
TEST(CausalConv1dTest, PrefillOnCudaMatchesCpuWithoutSynchronising) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(950);
  const at::Device gpu(at::kCUDA, 0);
  const int64_t dim = 6144 / 16, k = 4;  // a slice of Qwen3.5's conv width
  const std::vector<int64_t> cu = {0, 512, 512, 1025, 1100};
  const std::vector<int64_t> slots = {2, 6, 0, 4};
  const at::Tensor x = at::randn({cu.back(), dim}, at::kFloat);
  const at::Tensor weight = RandomWeight(dim, k, at::kFloat), bias = at::randn({dim}, at::kFloat);
  at::Tensor cpu_pool = at::randn({8, dim, k - 1}, at::kFloat);
  at::Tensor gpu_pool = cpu_pool.to(gpu);
  absl::StatusOr<at::Tensor> yc =
      CausalConv1dPrefill(x, weight, bias, cpu_pool, Int64Tensor(slots), Int64Tensor(cu), true, cu, slots);
  const at::Tensor xg = x.to(gpu), wg = weight.to(gpu), bg = bias.to(gpu);
  const at::Tensor sg = Int64Tensor(slots).to(gpu), cg = Int64Tensor(cu).to(gpu);
  absl::StatusOr<at::Tensor> yg;
  {
    deltaserve::testing::SyncDebugErrors no_sync;
    yg = CausalConv1dPrefill(xg, wg, bg, gpu_pool, sg, cg, true, cu, slots);
  }
  ASSERT_TRUE(yc.ok()) << yc.status();
  ASSERT_TRUE(yg.ok()) << yg.status();
  ExpectClose(*yg, *yc, 1e-5, 1e-5, "y on CUDA");
  ExpectExact(gpu_pool, cpu_pool, "pool on CUDA");
}
#endif  // DELTASERVE_WITH_CUDA

class CausalConv1dArgsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(606);
    x_ = at::randn({2, 8, 6}, at::kFloat);
    weight_ = RandomWeight(6, 4, at::kFloat);
    bias_ = at::randn({6}, at::kFloat);
    pool_ = at::randn({4, 6, 3}, at::kFloat);
  }

  absl::Status Full(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& initial_state = {},
                    const at::Tensor& cu_seqlens = {}) {
    return CausalConv1d(x, weight, bias_, initial_state, cu_seqlens, true).status();
  }
  absl::Status Step(const at::Tensor& x, at::Tensor& pool, const std::vector<int64_t>& slots) {
    return CausalConv1dStep(x, weight_, bias_, pool, Int64Tensor(slots), true).status();
  }

  at::Tensor x_, weight_, bias_, pool_;
};

TEST_F(CausalConv1dArgsTest, WrongXRank) {
  ExpectInvalid(Full(x_[0], weight_), "x: expected 3 dimensions");
  ExpectInvalid(Step(x_, pool_, {0, 1}), "x: expected 2 dimensions");
}

TEST_F(CausalConv1dArgsTest, WeightChannelMismatch) {
  ExpectInvalid(Full(x_, RandomWeight(7, 4, at::kFloat)), "weight: dimension 0 (channels D) must be 6");
}

TEST_F(CausalConv1dArgsTest, KernelWidthBelowTwo) {
  ExpectInvalid(Full(x_, RandomWeight(6, 1, at::kFloat)), "weight: kernel width K");
}

TEST_F(CausalConv1dArgsTest, NonContiguousX) {
  const at::Tensor transposed = at::randn({2, 6, 8}, at::kFloat).transpose(1, 2);
  ASSERT_FALSE(transposed.is_contiguous());
  ExpectInvalid(Full(transposed, weight_), "x: must be contiguous");
  // The step takes strided rows but not strided channels.
  ExpectInvalid(Step(at::randn({6, 2}, at::kFloat).t(), pool_, {0, 1}), "x: channels must be contiguous");
}

TEST_F(CausalConv1dArgsTest, DtypeMismatch) {
  ExpectInvalid(Full(x_, weight_.to(at::kDouble)), "weight: dtype must be one of {Float}");
  at::Tensor half_pool = pool_.to(at::kBFloat16);
  ExpectInvalid(Step(x_[0].select(0, 0).unsqueeze(0).contiguous(), half_pool, {0}), "conv_state: dtype");
}

TEST_F(CausalConv1dArgsTest, InitialStateWrongSequenceCount) {
  ExpectInvalid(Full(x_, weight_, at::randn({3, 6, 3}, at::kFloat)), "initial_state: dimension 0");
}

TEST_F(CausalConv1dArgsTest, DuplicateSlotsLeaveThePoolAlone) {
  const at::Tensor before = pool_.clone();
  ExpectInvalid(Step(x_.select(1, 0).contiguous(), pool_, {1, 1}), "slots: slot 1 appears twice");
  EXPECT_TRUE(at::equal(pool_, before));
}

TEST_F(CausalConv1dArgsTest, SlotOutOfRange) {
  ExpectInvalid(Step(x_.select(1, 0).contiguous(), pool_, {0, 4}), "slots: index 4");
}

TEST_F(CausalConv1dArgsTest, SlotAbovePoolWithPaddingIsStillAnError) {
  ExpectInvalid(Step(x_.select(1, 0).contiguous(), pool_, {-1, 4}), "slots: index 4 at position 1");
  ExpectInvalid(Step(x_.select(1, 0).contiguous(), pool_, {2, 2}), "appears twice");
  EXPECT_TRUE(Step(x_.select(1, 0).contiguous(), pool_, {-1, -1}).ok());
}

// Wrong host copies are caught on their own values (the tensors here are valid) and named.
TEST_F(CausalConv1dArgsTest, WrongHostMetadata) {
  const at::Tensor x = x_.select(1, 0).contiguous();
  const at::Tensor slots = Int64Tensor({0, 1});
  auto step = [&](const std::vector<int64_t>& host) {
    return CausalConv1dStep(x, weight_, bias_, pool_, slots, true, host).status();
  };
  const at::Tensor before = pool_.clone();
  ExpectInvalid(step({0}), "host_slots: has 1 values but slots has 2");
  ExpectInvalid(step({0, 4}), "slots: index 4");
  ExpectInvalid(step({0, 4}), "host_slots");
  ExpectInvalid(step({1, 1}), "slots: slot 1 appears twice");
  EXPECT_TRUE(at::equal(pool_, before));

  const at::Tensor x1 = x_[0].unsqueeze(0).contiguous();
  const at::Tensor cu = Int64Tensor({0, 3, 8});
  auto full = [&](const at::Tensor& offsets, const std::vector<int64_t>& host) {
    return CausalConv1d(x1, weight_, bias_, {}, offsets, true, host).status();
  };
  EXPECT_TRUE(full(cu, {0, 3, 8}).ok());
  ExpectInvalid(full(cu, {0, 3, 5, 8}), "host_cu_seqlens: has 4 values but cu_seqlens has 3");
  ExpectInvalid(full(cu, {0, 9, 8}), "cu_seqlens: offsets must not decrease");
  ExpectInvalid(full(cu, {0, 9, 8}), "host_cu_seqlens");
  ExpectInvalid(full(cu, {0, 3, 7}), "last offset 7");
  ExpectInvalid(full({}, {0, 8}), "host_cu_seqlens: given without cu_seqlens");
}

TEST_F(CausalConv1dArgsTest, CuSeqlensWithBatchTwo) {
  ExpectInvalid(Full(x_, weight_, {}, Int64Tensor({0, 3, 8})),
                "cu_seqlens: packed sequences need batch size 1");
}

// Prefill against the pool: every rule names its field, and a refused call leaves the pool as it was.
TEST_F(CausalConv1dArgsTest, PrefillNamesTheBadArgument) {
  const at::Tensor x = x_[0];  // [8, 6]
  const at::Tensor before = pool_.clone();
  auto prefill = [&](const at::Tensor& xx, const std::vector<int64_t>& slots, const at::Tensor& cu) {
    return CausalConv1dPrefill(xx, weight_, bias_, pool_, Int64Tensor(slots), cu, true).status();
  };
  ExpectInvalid(prefill(x, {0, 1}, at::Tensor()), "cu_seqlens: required");
  ExpectInvalid(prefill(x, {0}, Int64Tensor({0, 3, 8})), "slots");           // one slot for two sequences
  ExpectInvalid(prefill(x, {0, -1}, Int64Tensor({0, 3, 8})), "slots");       // no padding in prefill
  ExpectInvalid(prefill(x, {1, 1}, Int64Tensor({0, 3, 8})), "slots");        // the same slot twice
  ExpectInvalid(prefill(x, {0, 4}, Int64Tensor({0, 3, 8})), "slots");        // past the pool
  ExpectInvalid(prefill(x, {0, 1}, Int64Tensor({0, 3, 7})), "cu_seqlens");   // not ending at T
  ExpectInvalid(prefill(x_, {0, 1}, Int64Tensor({0, 3, 8})), "x: expected 2 dimensions");
  ExpectInvalid(prefill(x.t(), {0, 1}, Int64Tensor({0, 3, 6})), "x: channels must be contiguous");
  at::Tensor narrow_pool = at::zeros({4, 6, 2});
  ExpectInvalid(CausalConv1dPrefill(x, weight_, bias_, narrow_pool, Int64Tensor({0}), Int64Tensor({0, 8}), true)
                    .status(),
                "conv_state");
  EXPECT_TRUE(at::equal(pool_, before));
}

TEST_F(CausalConv1dArgsTest, CuSeqlensNotEndingAtT) {
  ExpectInvalid(Full(x_[0].unsqueeze(0).contiguous(), weight_, {}, Int64Tensor({0, 3, 7})),
                "cu_seqlens: last offset 7 must equal the packed length 8");
}

}  // namespace
}  // namespace deltaserve::kernels
