// Bad arguments to every kernel entry point give InvalidArgument naming the field: never a crash, an
// exception or silent garbage.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "support/gdn_inputs.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::GdnInputs;
using deltaserve::testing::MakeGdnInputs;
using deltaserve::testing::Regimes;
using ::testing::HasSubstr;

void ExpectInvalid(const absl::Status& s, const std::string& field) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(field));
}

TEST(KernelArgs, TriInverse) {
  TriInverseOptions neumann = DefaultTriInverseOptions(64, TriInverseMethod::kNeumann);
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({2, 48, 48}), neumann).status(), "chunk size 48");
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({2, 16, 8}), neumann).status(), "square");
  ExpectInvalid(InvertUnitLowerTriangular(at::ones({2, 16, 16}, at::kInt), neumann).status(), "dtype");
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({2, 16, 16}).transpose(1, 2), neumann).status(),
                "contiguous");
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({0, 16, 16}), neumann).status(), "empty");
  ExpectInvalid(InvertUnitLowerTriangular(at::Tensor(), neumann).status(), "undefined");
  TriInverseOptions bits = neumann;
  bits.matmul_bits = 4;
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({1, 16, 16}), bits).status(), "matmul_bits");
  TriInverseOptions fp8_wide;
  fp8_wide.fp8 = true;
  fp8_wide.matmul_bits = 16;
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({1, 16, 16}), fp8_wide).status(), "fp8");
  TriInverseOptions tiles_full;
  tiles_full.block_scales = true;
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({1, 16, 16}), tiles_full).status(), "block_scales");
  TriInverseOptions refine_full;
  refine_full.refine_residual = true;
  ExpectInvalid(InvertUnitLowerTriangular(at::randn({1, 16, 16}), refine_full).status(), "refine_residual");
  // Exact methods take any size.
  EXPECT_TRUE(InvertUnitLowerTriangular(at::randn({1, 48, 48}),
                                        DefaultTriInverseOptions(48, TriInverseMethod::kForwardSubstitution))
                  .ok());
}

TEST(KernelArgs, ChunkGatedDeltaRule) {
  GdnInputs in = MakeGdnInputs(2, 20, 2, 4, 16, 16, Regimes()[0], 3);
  GatedDeltaRuleOptions o;
  auto call = [&](const GdnInputs& x, const at::Tensor& h0 = {}, const at::Tensor& cu = {},
                  const GatedDeltaRuleOptions& opt = GatedDeltaRuleOptions{}) {
    return ChunkGatedDeltaRule(x.q, x.k, x.v, x.g, x.beta, h0, cu, opt).status();
  };
  EXPECT_TRUE(call(in).ok());
  GdnInputs bad = in;
  bad.k = in.k.narrow(1, 0, 10).contiguous();
  ExpectInvalid(call(bad), "k: shape");
  bad = in;
  bad.v = at::randn({2, 20, 3, 16});
  ExpectInvalid(call(bad), "multiple of key heads");
  bad = in;
  bad.g = in.g.to(at::kDouble);
  ExpectInvalid(call(bad), "g: dtype");
  bad = in;
  bad.beta = at::randn({2, 20, 2});
  ExpectInvalid(call(bad), "beta: dimension 2");
  bad = in;
  bad.q = in.q.transpose(1, 2);
  ExpectInvalid(call(bad), "q: must be contiguous");
  bad = in;
  bad.v = in.v.transpose(2, 3).contiguous().transpose(2, 3);
  ExpectInvalid(call(bad), "contiguous");
  bad = in;
  bad.q = at::randn({0, 20, 2, 16});
  ExpectInvalid(call(bad), "empty");
  GatedDeltaRuleOptions c48;
  c48.chunk_size = 48;
  ExpectInvalid(call(in, {}, {}, c48), "chunk_size");
  ExpectInvalid(call(in, at::randn({2, 4, 16, 8})), "initial_state");
  ExpectInvalid(call(in, {}, at::tensor({0, 20}, at::kLong)), "batch size 1");
  GdnInputs one = MakeGdnInputs(1, 20, 2, 4, 16, 16, Regimes()[0], 4);
  ExpectInvalid(call(one, {}, at::tensor({0, 5, 19}, at::kLong)), "must equal the packed length 20");
  ExpectInvalid(call(one, {}, at::tensor({0, 15, 5, 20}, at::kLong)), "must not decrease");
  ExpectInvalid(call(one, {}, at::tensor({0, 20}, at::kInt)), "cu_seqlens: dtype");
}

TEST(KernelArgs, DecodeStepAndPool) {
  ExpectInvalid(MakeRecurrentStatePool(0, 4, 16, 16, StateDtype::kInt8Stochastic, at::kCPU).status(),
                "positive");
  ExpectInvalid(ParseStateDtype("int4").status(), "int8");
  RecurrentStatePool pool = *MakeRecurrentStatePool(4, 4, 16, 16, StateDtype::kInt8Stochastic, at::kCPU);
  at::Tensor before = pool.values.clone();
  at::Tensor q = at::randn({2, 2, 16}), v = at::randn({2, 4, 16}), g = -at::rand({2, 4}),
             b = at::rand({2, 4});
  at::Tensor slots = at::tensor({0, 3}, at::kLong);
  EXPECT_TRUE(RecurrentGatedDeltaStep(q, q, v, g, b, slots, pool).ok());
  before = pool.values.clone();
  ExpectInvalid(RecurrentGatedDeltaStep(q, q, v, g, b, at::tensor({0, 0}, at::kLong), pool).status(),
                "appears twice");
  ExpectInvalid(RecurrentGatedDeltaStep(q, q, v, g, b, at::tensor({0, 4}, at::kLong), pool).status(),
                "outside the pool");
  ExpectInvalid(RecurrentGatedDeltaStep(q, q, v, g, b, at::tensor({0}, at::kLong), pool).status(), "slots");
  ExpectInvalid(RecurrentGatedDeltaStep(q, q, at::randn({2, 4, 8}), g, b, slots, pool).status(), "v:");
  ExpectInvalid(
      RecurrentGatedDeltaStep(at::randn({2, 3, 16}), at::randn({2, 3, 16}), v, g, b, slots, pool).status(),
      "must divide");
  ExpectInvalid(RecurrentGatedDeltaStep(q, q, v, g.to(at::kInt), b, slots, pool).status(), "g: dtype");
  ExpectInvalid(RecurrentGatedDeltaStep(q, q.transpose(1, 2), v, g, b, slots, pool).status(), "k");
  ExpectInvalid(RecurrentGatedDeltaStep(q, q, v, g, b, slots.to(at::kInt), pool).status(), "slots: dtype");
  EXPECT_TRUE(at::equal(pool.values, before)) << "a rejected step must not touch the pool";
  ExpectInvalid(WriteStates(pool, slots, at::randn({2, 4, 16, 8})), "states");
  ExpectInvalid(ReadStates(pool, at::tensor({7}, at::kLong)).status(), "outside the pool");
}

// The caller's host copies are what gets checked (the device tensors are never read back when they are
// given): host values that disagree with valid tensors are caught, and errors name the host field.
TEST(KernelArgs, HostMetadataIsChecked) {
  GdnInputs one = MakeGdnInputs(1, 20, 2, 4, 16, 16, Regimes()[0], 5);
  const at::Tensor cu = at::tensor({0, 5, 20}, at::kLong);
  auto chunk = [&](std::vector<int64_t> host, const at::Tensor& offsets) {
    GatedDeltaRuleOptions o;
    o.host_cu_seqlens = host;
    return ChunkGatedDeltaRule(one.q, one.k, one.v, one.g, one.beta, {}, offsets, o).status();
  };
  EXPECT_TRUE(chunk({0, 5, 20}, cu).ok());
  ExpectInvalid(chunk({0, 5}, cu), "host_cu_seqlens: has 2 values but cu_seqlens has 3");
  ExpectInvalid(chunk({0, 15, 5, 20}, at::tensor({0, 5, 10, 20}, at::kLong)), "must not decrease");
  ExpectInvalid(chunk({0, 15, 5, 20}, at::tensor({0, 5, 10, 20}, at::kLong)), "host_cu_seqlens");
  ExpectInvalid(chunk({0, 5, 19}, cu), "last offset 19 must equal the packed length 20");
  ExpectInvalid(chunk({1, 5, 20}, cu), "must start at 0");
  ExpectInvalid(chunk({0, 5, 20}, {}), "host_cu_seqlens: given without cu_seqlens");

  RecurrentStatePool pool = *MakeRecurrentStatePool(4, 4, 16, 16, StateDtype::kInt8, at::kCPU);
  ASSERT_TRUE(WriteStates(pool, at::arange(4, at::kLong), at::randn({4, 4, 16, 16})).ok());
  const at::Tensor before = pool.values.clone();
  at::Tensor q = at::randn({2, 2, 16}), v = at::randn({2, 4, 16}), g = -at::rand({2, 4}),
             b = at::rand({2, 4});
  const at::Tensor slots = at::tensor({0, 3}, at::kLong);
  auto step = [&](std::vector<int64_t> host) {
    DecodeStepOptions o;
    o.host_slots = host;
    return RecurrentGatedDeltaStep(q, q, v, g, b, slots, pool, o).status();
  };
  ExpectInvalid(step({0, 3, 1}), "host_slots: has 3 values but slots has 2");
  ExpectInvalid(step({0, 4}), "slots: index 4 at position 1 is outside the pool [0, 4)");
  ExpectInvalid(step({0, 4}), "host_slots");
  ExpectInvalid(step({3, 3}), "slots: slot 3 appears twice");
  ExpectInvalid(step({-1, 7}), "outside the pool");
  EXPECT_TRUE(at::equal(pool.values, before)) << "a rejected step must not touch the pool";
  ExpectInvalid(ReadStates(pool, slots, std::vector<int64_t>{0}).status(), "host_slots: has 1 values");
  ExpectInvalid(ReadStates(pool, slots, std::vector<int64_t>{0, 9}).status(), "outside the pool");
  ExpectInvalid(WriteStates(pool, slots, at::randn({2, 4, 16, 16}), std::vector<int64_t>{1, 1}),
                "appears twice");
  EXPECT_TRUE(at::equal(pool.values, before));
}

// A negative slot is a padding row for the decode step only: reading or writing states needs real slots.
TEST(KernelArgs, PaddingSlotsOnlyInTheDecodeStep) {
  RecurrentStatePool pool = *MakeRecurrentStatePool(4, 4, 16, 16, StateDtype::kFloat32, at::kCPU);
  at::Tensor q = at::randn({2, 2, 16}), v = at::randn({2, 4, 16}), g = -at::rand({2, 4}),
             b = at::rand({2, 4});
  EXPECT_TRUE(RecurrentGatedDeltaStep(q, q, v, g, b, at::tensor({-1, 2}, at::kLong), pool).ok());
  EXPECT_TRUE(RecurrentGatedDeltaStep(q, q, v, g, b, at::tensor({-1, -1}, at::kLong), pool).ok())
      << "padding rows never collide with each other";
  ExpectInvalid(ReadStates(pool, at::tensor({-1}, at::kLong)).status(), "slots: index -1");
  ExpectInvalid(WriteStates(pool, at::tensor({-1, 2}, at::kLong), at::randn({2, 4, 16, 16})),
                "outside the pool");
}

}  // namespace
}  // namespace deltaserve::kernels
