// ChunkGatedDeltaRuleInPool: the prefill that starts each sequence from its pool slot and leaves the final
// state there. On the CPU it must be ReadStates -> ChunkGatedDeltaRule -> WriteStates exactly, touch no other
// slot, agree with the float64 recurrence, and refuse bad pools and slots by name. On CUDA the fused kernels
// read and write the slots themselves; they must leave the same bytes in the pool and the same output as
// that composition on the same device, for every state dtype, both input dtypes and both kernel shapes,
// without a host synchronisation.
#include "deltaserve/kernels/chunk_gated_delta_rule_pool.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "support/gdn_inputs.h"
#include "support/state_pool.h"
#include "support/sync_debug.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::GdnInputs;
using deltaserve::testing::MakeGdnInputs;
using deltaserve::testing::Regimes;
using deltaserve::testing::ClonePool;
using deltaserve::testing::RelMaxError;

const std::vector<StateDtype> kDtypes = {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8,
                                         StateDtype::kInt8Stochastic, StateDtype::kInt8Coarse,
                                         StateDtype::kFloat8E4M3};
constexpr int64_t kPoolSlots = 9;

bool SameBytes(const RecurrentStatePool& a, const RecurrentStatePool& b) {
  const bool values = at::equal(a.values.view(at::kByte).cpu(), b.values.view(at::kByte).cpu());
  return values && (!a.scales.defined() || at::equal(a.scales.cpu(), b.scales.cpu()));
}

// Packed sequences with their slots out of order, one of them empty; the pool holds random states in all
// its slots, so that a wrong slot or an untouched one shows.
struct Step {
  GdnInputs in;
  std::vector<int64_t> cu, slots;
  RecurrentStatePool pool;
};

Step MakeStep(const std::vector<int64_t>& lengths, int64_t hk, int64_t hv, int64_t dk, int64_t dv, StateDtype dtype,
              at::ScalarType input_dtype, const at::Device& device, uint64_t seed) {
  Step s;
  s.cu = {0};
  for (int64_t len : lengths) s.cu.push_back(s.cu.back() + len);
  s.slots = {5, 2, 7, 0, 8, 3};
  s.slots.resize(lengths.size());
  s.in = MakeGdnInputs(1, s.cu.back(), hk, hv, dk, dv, Regimes()[2], seed, input_dtype);
  s.in.g = s.in.g.to(at::kFloat);
  s.in.beta = s.in.beta.to(at::kFloat);
  for (at::Tensor* t : {&s.in.q, &s.in.k, &s.in.v, &s.in.g, &s.in.beta}) *t = t->to(device);
  s.pool = *MakeRecurrentStatePool(kPoolSlots, hv, dk, dv, dtype, device);
  const at::Tensor all = at::arange(kPoolSlots, at::kLong).to(device);
  EXPECT_TRUE(WriteStates(s.pool, all, at::randn({kPoolSlots, hv, dk, dv}).to(device) * 0.3).ok());
  return s;
}

GatedDeltaRuleOptions Options(int64_t chunk, const std::vector<int64_t>& cu) {
  GatedDeltaRuleOptions o;
  o.chunk_size = chunk;
  o.inverse = *ParseTriInverseMethod("forward", chunk);
  o.host_cu_seqlens = cu;
  return o;
}

// The composition the in-pool path replaces, on pool `pool`; returns o.
at::Tensor ReadRuleWrite(const Step& s, RecurrentStatePool& pool, const GatedDeltaRuleOptions& o) {
  const at::Device device = s.in.q.device();
  const at::Tensor slots = at::tensor(s.slots, at::kLong).to(device), cu = at::tensor(s.cu, at::kLong).to(device);
  const at::Tensor h0 = *ReadStates(pool, slots, s.slots);
  absl::StatusOr<GatedDeltaRuleOutput> out = ChunkGatedDeltaRule(s.in.q, s.in.k, s.in.v, s.in.g, s.in.beta, h0, cu, o);
  EXPECT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(WriteStates(pool, slots, out->final_state, s.slots).ok());
  return out->o;
}

at::Tensor InPool(const Step& s, RecurrentStatePool& pool, const GatedDeltaRuleOptions& o) {
  const at::Device device = s.in.q.device();
  const at::Tensor slots = at::tensor(s.slots, at::kLong).to(device), cu = at::tensor(s.cu, at::kLong).to(device);
  absl::StatusOr<GatedDeltaRuleOutput> out =
      ChunkGatedDeltaRuleInPool(s.in.q, s.in.k, s.in.v, s.in.g, s.in.beta, cu, pool, slots, s.slots, o);
  EXPECT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->final_state.defined());  // the states are in the pool
  return out->o;
}

// Slots no sequence names keep their bytes.
void ExpectOthersUntouched(const Step& s, const RecurrentStatePool& before, const RecurrentStatePool& after) {
  for (int64_t slot = 0; slot < kPoolSlots; ++slot) {
    if (std::find(s.slots.begin(), s.slots.end(), slot) != s.slots.end()) continue;
    EXPECT_TRUE(at::equal(before.values[slot].view(at::kByte).cpu(), after.values[slot].view(at::kByte).cpu()))
        << "slot " << slot << " " << StateDtypeName(before.dtype);
  }
}

TEST(PrefillInPool, IsReadRuleWriteForEveryStateDtype) {
  at::manual_seed(1357);
  uint64_t seed = 20;
  for (StateDtype dtype : kDtypes) {
    const Step s = MakeStep({1, 40, 0, 20}, 2, 4, 32, 32, dtype, at::kFloat, at::kCPU, ++seed);
    const GatedDeltaRuleOptions o = Options(16, s.cu);
    RecurrentStatePool composed = ClonePool(s.pool), in_pool = ClonePool(s.pool);
    const at::Tensor want = ReadRuleWrite(s, composed, o);
    const at::Tensor got = InPool(s, in_pool, o);
    const std::string what = StateDtypeName(dtype);
    EXPECT_TRUE(at::equal(got, want)) << what;
    EXPECT_TRUE(SameBytes(in_pool, composed)) << what;
    ExpectOthersUntouched(s, s.pool, in_pool);

    // Against the float64 recurrence from the slots' dequantized states: the output closely, the states in
    // the pool within the storage dtype's rounding of the exact final state.
    const at::Tensor slots = at::tensor(s.slots, at::kLong), cu = at::tensor(s.cu, at::kLong);
    const at::Tensor h0 = *ReadStates(s.pool, slots);
    auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
    GatedDeltaRuleOptions ro;
    const GatedDeltaRuleOutput ref =
        *RecurrentGatedDeltaRuleReference(d(s.in.q), d(s.in.k), d(s.in.v), d(s.in.g), d(s.in.beta), d(h0), cu, ro);
    EXPECT_LT(RelMaxError(got, ref.o), 1e-4) << what;
    const double bound = dtype == StateDtype::kFloat32    ? 1e-4
                         : dtype == StateDtype::kBFloat16 ? 8e-3    // 2^-8 of the largest value, and the sums
                         : dtype == StateDtype::kFloat8E4M3 ? 7e-2  // 3 mantissa bits: 2^-4
                                                            : 1e-2;  // half of 1/127 of a row's (head's) largest
    EXPECT_LT(RelMaxError(*ReadStates(in_pool, slots), ref.final_state), bound) << what;
  }
}

TEST(PrefillInPool, RefusesPoolsAndSlotsThatDoNotFitByName) {
  at::manual_seed(2468);
  const Step s = MakeStep({3, 5}, 1, 2, 16, 16, StateDtype::kInt8, at::kFloat, at::kCPU, 7);
  const GatedDeltaRuleOptions o = Options(16, s.cu);
  const at::Tensor cu = at::tensor(s.cu, at::kLong);
  auto run = [&](RecurrentStatePool& pool, const std::vector<int64_t>& slots) {
    return ChunkGatedDeltaRuleInPool(s.in.q, s.in.k, s.in.v, s.in.g, s.in.beta, cu, pool,
                                     at::tensor(slots, at::kLong), slots, o)
        .status();
  };
  auto expect_refused = [](const absl::Status& st, const std::vector<std::string>& words) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    for (const std::string& w : words) EXPECT_NE(std::string(st.message()).find(w), std::string::npos) << st;
  };
  RecurrentStatePool heads = *MakeRecurrentStatePool(4, 3, 16, 16, StateDtype::kInt8, at::kCPU);
  expect_refused(run(heads, {0, 1}), {"state pool", "Hv", "2"});
  RecurrentStatePool keys = *MakeRecurrentStatePool(4, 2, 32, 16, StateDtype::kInt8, at::kCPU);
  expect_refused(run(keys, {0, 1}), {"state pool", "dk", "16"});
  RecurrentStatePool values = *MakeRecurrentStatePool(4, 2, 16, 8, StateDtype::kFloat32, at::kCPU);
  expect_refused(run(values, {0, 1}), {"state pool", "dv", "16"});
  RecurrentStatePool pool = ClonePool(s.pool);
  expect_refused(run(pool, {0}), {"slots"});             // one slot for two sequences
  expect_refused(run(pool, {0, kPoolSlots}), {"slots", "outside the pool"});
  expect_refused(run(pool, {4, 4}), {"slots", "twice"});
  expect_refused(run(pool, {-1, 2}), {"slots"});         // no padding rows in a prefill
  RecurrentStatePool no_scales = ClonePool(s.pool);
  no_scales.scales = at::Tensor();
  expect_refused(run(no_scales, {0, 1}), {"state pool", "scales"});
  EXPECT_TRUE(SameBytes(pool, s.pool));  // refused calls change nothing
}

class CudaPrefillInPool : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

// Qwen3.5's shape (the compile-time kernels, the register state pass) and a run-time one (dk 64, dv 48,
// C 32: the general passes, 16-column blocks); float32 and bf16 inputs; every state dtype. The fused
// kernels with the pool as their state source and sink leave exactly the bytes that ReadStates, the same
// kernels on dense states and WriteStates leave, and the same output.
TEST_F(CudaPrefillInPool, KernelsLeaveTheCompositionsBytesInThePool) {
  at::manual_seed(8642);
  struct Shape {
    int64_t dk, dv, chunk;
  };
  uint64_t seed = 300;
  for (const Shape& shape : {Shape{128, 128, 64}, Shape{64, 48, 32}}) {
    for (at::ScalarType input : {at::kFloat, at::kBFloat16}) {
      for (StateDtype dtype : kDtypes) {
        const Step s = MakeStep({1, 63, 0, 64, 65, 200}, 2, 4, shape.dk, shape.dv, dtype, input, at::kCUDA, ++seed);
        const GatedDeltaRuleOptions o = Options(shape.chunk, s.cu);
        RecurrentStatePool composed = ClonePool(s.pool), in_pool = ClonePool(s.pool);
        const at::Tensor want = ReadRuleWrite(s, composed, o);
        const at::Tensor got = InPool(s, in_pool, o);
        const std::string what = StateDtypeName(dtype) + " dk=" + std::to_string(shape.dk) + " " +
                                 std::string(c10::toString(input));
        EXPECT_TRUE(at::equal(got, want)) << what;
        EXPECT_TRUE(SameBytes(in_pool, composed)) << what;
        ExpectOthersUntouched(s, s.pool, in_pool);
      }
    }
  }
}

// The fused state-and-output pass (DELTASERVE_GDN_FUSED_OUTPUT=1) reads and writes the pool the same way.
TEST_F(CudaPrefillInPool, FusedOutputPassLeavesTheSameBytes) {
  at::manual_seed(9753);
  for (StateDtype dtype : {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8}) {
    const Step s = MakeStep({1, 63, 0, 64, 65, 200}, 2, 4, 128, 128, dtype, at::kBFloat16, at::kCUDA, 77);
    const GatedDeltaRuleOptions o = Options(64, s.cu);
    RecurrentStatePool two_passes = ClonePool(s.pool), fused = ClonePool(s.pool);
    ASSERT_EQ(unsetenv("DELTASERVE_GDN_FUSED_OUTPUT"), 0);
    (void)InPool(s, two_passes, o);
    ASSERT_EQ(setenv("DELTASERVE_GDN_FUSED_OUTPUT", "1", 1), 0);
    (void)InPool(s, fused, o);
    ASSERT_EQ(unsetenv("DELTASERVE_GDN_FUSED_OUTPUT"), 0);
    EXPECT_TRUE(SameBytes(fused, two_passes)) << StateDtypeName(dtype);  // the state's arithmetic is the same
  }
}

#ifdef DELTASERVE_WITH_CUDA
TEST_F(CudaPrefillInPool, NeverSynchronisesWithHostSlotsAndOffsets) {
  at::manual_seed(1122);
  for (StateDtype dtype : {StateDtype::kBFloat16, StateDtype::kInt8}) {
    const Step s = MakeStep({1, 63, 0, 64, 65, 200}, 2, 4, 128, 128, dtype, at::kBFloat16, at::kCUDA, 5);
    const GatedDeltaRuleOptions o = Options(64, s.cu);
    RecurrentStatePool pool = ClonePool(s.pool);
    (void)InPool(s, pool, o);  // warm-up: first-use initialisation
    const at::Tensor slots = at::tensor(s.slots, at::kLong).cuda(), cu = at::tensor(s.cu, at::kLong).cuda();
    absl::StatusOr<GatedDeltaRuleOutput> got = absl::UnknownError("not run");
    {
      deltaserve::testing::SyncDebugErrors errors;
      got = ChunkGatedDeltaRuleInPool(s.in.q, s.in.k, s.in.v, s.in.g, s.in.beta, cu, pool, slots, s.slots, o);
    }
    EXPECT_TRUE(got.ok()) << got.status();
  }
}
#endif

}  // namespace
}  // namespace deltaserve::kernels
