// The kernels on CUDA tensors (skipped where no GPU is present): the ATen paths unchanged, and the
// CUDA decode kernel against the fused CPU kernel on the same inputs and states.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "support/gdn_inputs.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::GdnInputs;
using deltaserve::testing::MakeChunkMatrices;
using deltaserve::testing::MakeGdnInputs;
using deltaserve::testing::Regimes;
using deltaserve::testing::RelMaxError;

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

GdnInputs ToCuda(GdnInputs in) {
  for (at::Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.beta}) *t = t->to(at::kCUDA);
  return in;
}

TEST_F(CudaKernels, TriInverseEveryMethod) {
  at::manual_seed(51308);
  for (const auto& regime : Regimes()) {
    at::Tensor a64 = MakeChunkMatrices(256, 64, 128, regime, 3);
    at::Tensor eye = at::eye(64, a64.options());
    at::Tensor exact = at::linalg_solve_triangular(a64 + eye, eye.expand(a64.sizes()), false, true, true);
    at::Tensor a = a64.to(at::kFloat).to(at::kCUDA);
    for (const char* name : {"forward", "solve-triangular", "neumann", "neumann-fast", "neumann-int16"}) {
      TriInverseStats stats;
      absl::StatusOr<at::Tensor> x = InvertUnitLowerTriangular(a, *ParseTriInverseMethod(name, 64), &stats);
      ASSERT_TRUE(x.ok()) << x.status();
      EXPECT_TRUE(x->is_cuda());
      const double bound = std::string(name) == "neumann-int16" ? 1e-2 : 1e-4;
      EXPECT_LT(RelMaxError(x->cpu(), exact), bound) << name << " " << regime.name;
    }
  }
}

TEST_F(CudaKernels, ChunkedPrefillMatchesCpuReference) {
  at::manual_seed(1459);
  const std::vector<int64_t> offsets = {0, 70, 70, 75, 205};
  GdnInputs in = MakeGdnInputs(1, 205, 2, 4, 64, 64, Regimes()[2], 17);
  at::Tensor cu = at::tensor(offsets, at::kLong);
  at::Tensor h0 = at::randn({4, 4, 64, 64}) * 0.3;
  auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  GatedDeltaRuleOutput ref = *RecurrentGatedDeltaRuleReference(d(in.q), d(in.k), d(in.v), d(in.g), d(in.beta),
                                                               d(h0), cu, GatedDeltaRuleOptions{});
  GdnInputs g = ToCuda(in);
  for (const char* name : {"forward", "solve-triangular", "product", "neumann", "neumann-fast"}) {
    GatedDeltaRuleOptions o;
    o.inverse = *ParseTriInverseMethod(name, 64);
    absl::StatusOr<GatedDeltaRuleOutput> got =
        ChunkGatedDeltaRule(g.q, g.k, g.v, g.g, g.beta, h0.to(at::kCUDA), cu.to(at::kCUDA), o);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LT(RelMaxError(got->o.cpu(), ref.o), 1e-4) << name;
    EXPECT_LT(RelMaxError(got->final_state.cpu(), ref.final_state), 1e-4) << name;
  }
}

TEST_F(CudaKernels, DecodeKernelMatchesFusedCpu) {
  at::manual_seed(73581);
  for (StateDtype dt : {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8,
                        StateDtype::kInt8Coarse, StateDtype::kFloat8E4M3}) {
    const int64_t slots_n = 6, hv = 8, d = 128;
    GdnInputs in = MakeGdnInputs(3, 30, 4, hv, d, d, Regimes()[1], 23);
    RecurrentStatePool cpu = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCPU);
    RecurrentStatePool gpu = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCUDA);
    at::Tensor all = at::arange(slots_n, at::kLong);
    at::Tensor init = at::randn({slots_n, hv, d, d}) * 0.2;
    ASSERT_TRUE(WriteStates(cpu, all, init).ok());
    ASSERT_TRUE(WriteStates(gpu, all.to(at::kCUDA), init.to(at::kCUDA)).ok());
    at::Tensor untouched_before = gpu.values.cpu();
    at::Tensor slots = at::tensor({5, 0, 2}, at::kLong);
    for (int64_t t = 0; t < 30; ++t) {
      auto at_t = [t](const at::Tensor& x) { return x.select(1, t).contiguous(); };
      at::Tensor oc =
          *RecurrentGatedDeltaStep(at_t(in.q), at_t(in.k), at_t(in.v), at_t(in.g), at_t(in.beta), slots, cpu);
      at::Tensor og = *RecurrentGatedDeltaStep(at_t(in.q).cuda(), at_t(in.k).cuda(), at_t(in.v).cuda(),
                                               at_t(in.g).cuda(), at_t(in.beta).cuda(), slots.cuda(), gpu);
      // Quantized paths may round a tie differently (FMA contraction on the GPU); one e4m3 quantum is
      // 1/8 of a value, so fp8 gets room for that.
      const double tol = dt == StateDtype::kFloat32 ? 1e-5 : (dt == StateDtype::kFloat8E4M3 ? 0.15 : 3e-2);
      ASSERT_LT(RelMaxError(og.cpu(), oc), tol) << StateDtypeName(dt) << " step " << t;
    }
    EXPECT_LT(RelMaxError(ReadStates(gpu, slots.cuda())->cpu(), *ReadStates(cpu, slots)),
              dt == StateDtype::kFloat32 ? 1e-5 : (dt == StateDtype::kFloat8E4M3 ? 0.15 : 3e-2))
        << StateDtypeName(dt);
    at::Tensor after = gpu.values.cpu();
    for (int64_t s : {1, 3, 4}) {
      EXPECT_TRUE(at::equal(after[s].view(at::kByte), untouched_before[s].view(at::kByte)))
          << StateDtypeName(dt) << " slot " << s;
    }
  }
}

TEST_F(CudaKernels, StochasticRoundingDriftMatchesCpuScale) {
  at::manual_seed(57032);
  // The CUDA and CPU kernels draw the same counter-based bits; their drift against fp32 must agree.
  const int64_t hv = 4, d = 128, steps = 2048;
  GdnInputs in = MakeGdnInputs(1, steps, 2, hv, d, d, {"slow", -8.0, 0.2, 1.0}, 29);
  RecurrentStatePool ref = *MakeRecurrentStatePool(1, hv, d, d, StateDtype::kFloat32, at::kCUDA);
  RecurrentStatePool sr = *MakeRecurrentStatePool(1, hv, d, d, StateDtype::kInt8Stochastic, at::kCUDA);
  at::Tensor slot = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA));
  GdnInputs g = ToCuda(in);
  for (int64_t t = 0; t < steps; ++t) {
    auto at_t = [t](const at::Tensor& x) { return x.select(1, t).contiguous(); };
    (void)*RecurrentGatedDeltaStep(at_t(g.q), at_t(g.k), at_t(g.v), at_t(g.g), at_t(g.beta), slot, ref);
    (void)*RecurrentGatedDeltaStep(at_t(g.q), at_t(g.k), at_t(g.v), at_t(g.g), at_t(g.beta), slot, sr);
  }
  at::Tensor sf = ReadStates(ref, slot)->cpu(), sq = ReadStates(sr, slot)->cpu();
  EXPECT_LT(((sq - sf).norm() / sf.norm()).item<double>(), 0.16);
}

}  // namespace
}  // namespace deltaserve::kernels
