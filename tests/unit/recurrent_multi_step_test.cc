// The T-token decode step (RecurrentGatedDeltaSteps): in float32 it equals T one-token steps and the
// float64 recurrence; a quantized state is rounded once, so it lands within half a quantum of the exact
// state where T one-token steps drift; padding, other slots and bad shapes behave as in the one-token step.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "support/gdn_inputs.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::GdnInputs;
using deltaserve::testing::MakeGdnInputs;
using deltaserve::testing::Regimes;
using deltaserve::testing::RelMaxError;

at::Tensor D(const at::Tensor& x) { return x.to(at::kDouble); }

TEST(RecurrentMultiStep, Float32EqualsTheRecurrenceAndTokenByTokenSteps) {
  at::manual_seed(4111);
  GdnInputs in = MakeGdnInputs(3, 7, 2, 4, 32, 24, Regimes()[2], 31);  // group 2
  RecurrentStatePool multi = *MakeRecurrentStatePool(5, 4, 32, 24, StateDtype::kFloat32, at::kCPU);
  RecurrentStatePool single = *MakeRecurrentStatePool(5, 4, 32, 24, StateDtype::kFloat32, at::kCPU);
  const at::Tensor all = at::arange(5, at::kLong), init = at::randn({5, 4, 32, 24});
  ASSERT_TRUE(WriteStates(multi, all, init).ok() && WriteStates(single, all, init).ok());
  const at::Tensor before = multi.values.clone();
  const at::Tensor slots = at::tensor({4, 1, 2}, at::kLong);
  const at::Tensor h0 = *ReadStates(multi, slots);
  DecodeStepOptions options;
  options.l2norm_qk = true;
  absl::StatusOr<at::Tensor> o = RecurrentGatedDeltaSteps(in.q, in.k, in.v, in.g, in.beta, slots, multi, options);
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->sizes(), (std::vector<int64_t>{3, 7, 4, 24}));
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < 7; ++t) {
    auto at_t = [t](const at::Tensor& x) { return x.select(1, t).contiguous(); };
    outs.push_back(*RecurrentGatedDeltaStep(at_t(in.q), at_t(in.k), at_t(in.v), at_t(in.g), at_t(in.beta), slots,
                                            single, options));
  }
  EXPECT_LT(RelMaxError(*o, at::stack(outs, 1)), 1e-5);
  EXPECT_LT(RelMaxError(*ReadStates(multi, slots), *ReadStates(single, slots)), 1e-5);
  GatedDeltaRuleOptions ref_options;
  ref_options.l2norm_qk = true;
  absl::StatusOr<GatedDeltaRuleOutput> ref =
      RecurrentGatedDeltaRuleReference(D(in.q), D(in.k), D(in.v), D(in.g), D(in.beta), D(h0), {}, ref_options);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_LT(RelMaxError(*o, ref->o), 1e-5);
  EXPECT_LT(RelMaxError(*ReadStates(multi, slots), ref->final_state), 1e-5);
  for (int64_t s : {0, 3}) EXPECT_TRUE(at::equal(multi.values[s], before[s])) << "slot " << s;
}

// INT8 per row: the state is quantized once after the T tokens, so every value is within half its row's
// quantum of the exact state; T one-token steps round T times and land further off.
TEST(RecurrentMultiStep, AQuantizedStateRoundsOnce) {
  at::manual_seed(4112);
  const int64_t tokens = 16;
  GdnInputs in = MakeGdnInputs(2, tokens, 2, 2, 32, 32, Regimes()[1], 33);
  RecurrentStatePool multi = *MakeRecurrentStatePool(2, 2, 32, 32, StateDtype::kInt8, at::kCPU);
  RecurrentStatePool single = *MakeRecurrentStatePool(2, 2, 32, 32, StateDtype::kInt8, at::kCPU);
  const at::Tensor slots = at::arange(2, at::kLong), init = at::randn({2, 2, 32, 32}) * 0.3;
  ASSERT_TRUE(WriteStates(multi, slots, init).ok() && WriteStates(single, slots, init).ok());
  const at::Tensor h0 = *ReadStates(multi, slots);
  ASSERT_TRUE(RecurrentGatedDeltaSteps(in.q, in.k, in.v, in.g, in.beta, slots, multi).ok());
  for (int64_t t = 0; t < tokens; ++t) {
    auto at_t = [t](const at::Tensor& x) { return x.select(1, t).contiguous(); };
    ASSERT_TRUE(RecurrentGatedDeltaStep(at_t(in.q), at_t(in.k), at_t(in.v), at_t(in.g), at_t(in.beta), slots,
                                        single).ok());
  }
  absl::StatusOr<GatedDeltaRuleOutput> ref = RecurrentGatedDeltaRuleReference(
      D(in.q), D(in.k), D(in.v), D(in.g), D(in.beta), D(h0), {}, GatedDeltaRuleOptions{});
  ASSERT_TRUE(ref.ok());
  const at::Tensor exact = ref->final_state;                          // [2, 2, 32, 32]
  const at::Tensor quantum = exact.abs().amax(-1, true) / 127.0;      // each row's scale
  const at::Tensor multi_err = (D(*ReadStates(multi, slots)) - exact).abs();
  const at::Tensor single_err = (D(*ReadStates(single, slots)) - exact).abs();
  EXPECT_LE((multi_err - 0.5 * quantum * (1 + 1e-4)).max().item<double>(), 1e-6);
  EXPECT_LT(multi_err.max().item<double>(), single_err.max().item<double>());
}

TEST(RecurrentMultiStep, PaddingRowsAreZeroAndTouchNothing) {
  at::manual_seed(4113);
  GdnInputs in = MakeGdnInputs(3, 4, 1, 2, 16, 16, Regimes()[0], 35);
  for (StateDtype dt : {StateDtype::kFloat32, StateDtype::kInt8}) {
    RecurrentStatePool pool = *MakeRecurrentStatePool(3, 2, 16, 16, dt, at::kCPU);
    RecurrentStatePool alone = *MakeRecurrentStatePool(3, 2, 16, 16, dt, at::kCPU);
    const at::Tensor all = at::arange(3, at::kLong), init = at::randn({3, 2, 16, 16});
    ASSERT_TRUE(WriteStates(pool, all, init).ok() && WriteStates(alone, all, init).ok());
    const at::Tensor before = pool.values.clone();
    absl::StatusOr<at::Tensor> o =
        RecurrentGatedDeltaSteps(in.q, in.k, in.v, in.g, in.beta, at::tensor({-1, 2, -1}, at::kLong), pool);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->select(0, 0).abs().max().item<double>(), 0.0);
    EXPECT_EQ(o->select(0, 2).abs().max().item<double>(), 0.0);
    auto row = [](const at::Tensor& x) { return x.narrow(0, 1, 1); };
    absl::StatusOr<at::Tensor> o1 = RecurrentGatedDeltaSteps(row(in.q), row(in.k), row(in.v), row(in.g),
                                                             row(in.beta), at::tensor({2}, at::kLong), alone);
    ASSERT_TRUE(o1.ok());
    EXPECT_TRUE(at::allclose(o->narrow(0, 1, 1), *o1));
    EXPECT_TRUE(at::equal(pool.values, alone.values)) << StateDtypeName(dt);
    for (int64_t s : {0, 1}) EXPECT_TRUE(at::equal(pool.values[s], before[s]));
  }
}

TEST(RecurrentMultiStep, BadShapesNameTheField) {
  GdnInputs in = MakeGdnInputs(2, 3, 1, 2, 16, 16, Regimes()[0], 37);
  RecurrentStatePool pool = *MakeRecurrentStatePool(2, 2, 16, 16, StateDtype::kFloat32, at::kCPU);
  const at::Tensor slots = at::arange(2, at::kLong);
  auto message = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                     const at::Tensor& beta, const at::Tensor& s) {
    absl::StatusOr<at::Tensor> o = RecurrentGatedDeltaSteps(q, k, v, g, beta, s, pool);
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(o.status().message());
  };
  EXPECT_NE(message(in.q.select(1, 0), in.k, in.v, in.g, in.beta, slots).find("q"), std::string::npos);
  EXPECT_NE(message(in.q, in.k, in.v.narrow(1, 0, 2), in.g, in.beta, slots).find("tokens T"), std::string::npos);
  EXPECT_NE(message(in.q, in.k, in.v, in.g.narrow(1, 0, 1), in.beta, slots).find("g"), std::string::npos);
  EXPECT_NE(message(in.q, in.k, in.v, in.g, in.beta, at::tensor({0, 0}, at::kLong)).find("slots"),
            std::string::npos);
  EXPECT_NE(message(in.q, in.k, in.v, in.g, in.beta, at::tensor({0, 7}, at::kLong)).find("slots"),
            std::string::npos);
}

}  // namespace
}  // namespace deltaserve::kernels
