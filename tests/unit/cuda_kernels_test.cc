// The kernels on CUDA tensors (skipped where no GPU is present): the ATen paths unchanged, the CUDA
// decode kernels against the CPU paths on the same inputs and states (padding rows included), and the
// decode steps with host metadata free of host synchronisation and replayable in a CUDA graph.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#ifdef DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "absl/strings/str_cat.h"
#include "deltaserve/kernels/causal_conv1d.h"
#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/chunk_gated_delta_rule_pool.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "support/gdn_inputs.h"
#include "support/sync_debug.h"

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

// The standalone fused inverse (TriInverseOptions::fused_cuda) against float64 in every regime, at each
// chunk size it takes, with the CPU test's bounds (3xTF32 products: float32 accuracy), the strict upper
// triangle zero and the unit diagonal; the product form within its correlated-keys bound.
TEST_F(CudaKernels, FusedTriInverseEveryMethodAndChunkSize) {
  at::manual_seed(51309);
  for (const auto& regime : Regimes()) {
    const bool correlated = regime.key_cosine > 0;
    for (const int64_t c : {16, 32, 64}) {
      at::Tensor a64 = MakeChunkMatrices(96, c, 128, regime, 4 + c);
      at::Tensor eye = at::eye(c, a64.options());
      at::Tensor exact = at::linalg_solve_triangular(a64 + eye, eye.expand(a64.sizes()), false, true, true);
      at::Tensor a = a64.to(at::kFloat).to(at::kCUDA);
      for (const char* name : {"forward", "neumann", "neumann-fast", "product"}) {
        SCOPED_TRACE(absl::StrCat(name, " C=", c, " ", regime.name));
        TriInverseOptions o = *ParseTriInverseMethod(name, c);
        o.fused_cuda = true;
        TriInverseStats stats;
        absl::StatusOr<at::Tensor> x = InvertUnitLowerTriangular(a, o, &stats);
        ASSERT_TRUE(x.ok()) << x.status();
        ASSERT_TRUE(x->is_cuda());
        const at::Tensor h = x->cpu().to(at::kDouble);
        EXPECT_EQ(stats.chunks, 96);
        const std::string n = name;
        const double bound = n == "neumann-fast" ? 1e-4 : n == "product" ? (correlated ? 3e-3 : 1e-6) : 1e-6;
        EXPECT_LT(RelMaxError(h, exact), bound);
        EXPECT_EQ(h.triu(1).abs().max().item<double>(), 0.0);
        EXPECT_EQ((h.diagonal(0, -2, -1) - 1).abs().max().item<double>(), 0.0);
      }
    }
  }
}

// The fused kernel's INT8 Neumann (tile scales, refined or not) against float64 in every regime and chunk
// size, with the CPU emulation's bounds, and against the emulation itself: both quantize the same tiles
// with the same rounding, so they differ only where float32 sums of different order round an operand to
// the neighbouring integer.
TEST_F(CudaKernels, FusedInt8InverseMatchesTheEmulation) {
  for (const auto& regime : Regimes()) {
    for (const int64_t c : {16, 32, 64}) {
      const at::Tensor a64 = MakeChunkMatrices(96, c, 128, regime, 40 + c);
      const at::Tensor eye = at::eye(c, a64.options());
      const at::Tensor exact = at::linalg_solve_triangular(a64 + eye, eye.expand(a64.sizes()), false, true, true);
      const at::Tensor a = a64.to(at::kFloat);
      for (const char* name : {"neumann-int8-refine", "neumann-int8-block"}) {
        SCOPED_TRACE(absl::StrCat(name, " C=", c, " ", regime.name));
        TriInverseOptions o = *ParseTriInverseMethod(name, c);
        TriInverseStats cpu_stats, gpu_stats;
        absl::StatusOr<at::Tensor> emulated = InvertUnitLowerTriangular(a, o, &cpu_stats);
        o.fused_cuda = true;
        absl::StatusOr<at::Tensor> x = InvertUnitLowerTriangular(a.cuda(), o, &gpu_stats);
        ASSERT_TRUE(emulated.ok() && x.ok());
        const at::Tensor h = x->cpu().to(at::kDouble);
        EXPECT_EQ(gpu_stats.chunks, 96);
        const bool refine = std::string(name) == "neumann-int8-refine";
        EXPECT_LT(RelMaxError(h, exact), refine ? 1e-4 : 3e-1);
        EXPECT_LT(RelMaxError(h, emulated->to(at::kDouble)), refine ? 1e-4 : 3e-2);
        EXPECT_LE(std::abs(gpu_stats.fallbacks - cpu_stats.fallbacks), 96 / 8) << gpu_stats.fallbacks;
        EXPECT_EQ(h.triu(1).abs().max().item<double>(), 0.0);
        EXPECT_EQ((h.diagonal(0, -2, -1) - 1).abs().max().item<double>(), 0.0);
      }
    }
  }
  // A tolerance no chunk meets sends every chunk to the exact fallback, INT8 path included.
  TriInverseOptions o = *ParseTriInverseMethod("neumann-int8-refine", 64);
  o.fused_cuda = true;
  o.guard_tol = 1e-30;
  const at::Tensor hard = MakeChunkMatrices(32, 64, 128, Regimes()[3], 8);
  const at::Tensor eye = at::eye(64, hard.options());
  TriInverseStats stats;
  absl::StatusOr<at::Tensor> x = InvertUnitLowerTriangular(hard.to(at::kFloat).cuda(), o, &stats);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(stats.fallbacks, 32);
  EXPECT_LT(RelMaxError(x->cpu().to(at::kDouble),
                        at::linalg_solve_triangular(hard + eye, eye.expand(hard.sizes()), false, true, true)),
            1e-6);
}

// The fused kernel's guard: with one correction step, correlated keys send chunks to the in-kernel exact
// fallback, which repairs them, and strong decay sends none.
TEST_F(CudaKernels, FusedTriInverseGuardFallsBackOnlyWhereNeeded) {
  TriInverseOptions o = *ParseTriInverseMethod("neumann-fast", 64);
  o.residual_steps = 1;
  o.fused_cuda = true;
  const at::Tensor strong64 = MakeChunkMatrices(32, 64, 128, Regimes()[0], 5);
  const at::Tensor hard64 = MakeChunkMatrices(32, 64, 128, Regimes()[3], 6);
  TriInverseStats s_strong, s_hard;
  absl::StatusOr<at::Tensor> x_strong = InvertUnitLowerTriangular(strong64.to(at::kFloat).cuda(), o, &s_strong);
  absl::StatusOr<at::Tensor> x_hard = InvertUnitLowerTriangular(hard64.to(at::kFloat).cuda(), o, &s_hard);
  ASSERT_TRUE(x_strong.ok() && x_hard.ok());
  EXPECT_EQ(s_strong.fallbacks, 0);
  EXPECT_GT(s_hard.fallbacks, 0);
  EXPECT_GT(s_hard.max_residual, o.guard_tol);
  const at::Tensor eye = at::eye(64, hard64.options());
  auto exact = [&](const at::Tensor& a) {
    return at::linalg_solve_triangular(a + eye, eye.expand(a.sizes()), false, true, true);
  };
  EXPECT_LT(RelMaxError(x_hard->cpu().to(at::kDouble), exact(hard64)), 1e-3);
  EXPECT_LT(RelMaxError(x_strong->cpu().to(at::kDouble), exact(strong64)), 1e-3);
  // Every chunk over a tolerance no chunk meets: all fall back, and the result is forward substitution's.
  o.guard_tol = 1e-30;
  TriInverseStats s_all;
  absl::StatusOr<at::Tensor> x_all = InvertUnitLowerTriangular(hard64.to(at::kFloat).cuda(), o, &s_all);
  ASSERT_TRUE(x_all.ok());
  EXPECT_EQ(s_all.fallbacks, 32);
  EXPECT_LT(RelMaxError(x_all->cpu().to(at::kDouble), exact(hard64)), 1e-6);
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

// The T-token step's kernel against the ATen path on the CPU, every state dtype, both head shapes, bf16
// and fp32 inputs read in place, a padding row; the state is rounded once in both, so states agree
// within a quantum (a tie may round apart), outputs as the one-token kernel's do.
TEST_F(CudaKernels, MultiTokenStepMatchesTheCpu) {
  at::manual_seed(73591);
  for (const int64_t d : {64, 128}) {
    for (const at::ScalarType in_dtype : {at::kFloat, at::kBFloat16}) {
      for (StateDtype dt : {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8,
                            StateDtype::kInt8Coarse, StateDtype::kFloat8E4M3, StateDtype::kInt8Stochastic}) {
        SCOPED_TRACE(absl::StrCat(StateDtypeName(dt), " d=", d, " ", c10::toString(in_dtype)));
        const int64_t slots_n = 5, hv = 4, tokens = 6;
        GdnInputs in = MakeGdnInputs(3, tokens, 2, hv, d, d, Regimes()[1], 41);
        for (at::Tensor* t : {&in.q, &in.k, &in.v}) *t = t->to(in_dtype).to(at::kFloat);  // same values both sides
        RecurrentStatePool cpu = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCPU);
        RecurrentStatePool gpu = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCUDA);
        const at::Tensor all = at::arange(slots_n, at::kLong), init = at::randn({slots_n, hv, d, d}) * 0.2;
        ASSERT_TRUE(WriteStates(cpu, all, init).ok());
        ASSERT_TRUE(WriteStates(gpu, all.to(at::kCUDA), init.to(at::kCUDA)).ok());
        const at::Tensor untouched = gpu.values.cpu();
        const at::Tensor slots = at::tensor({4, -1, 1}, at::kLong);
        DecodeStepOptions options;
        options.l2norm_qk = true;
        absl::StatusOr<at::Tensor> oc = RecurrentGatedDeltaSteps(in.q, in.k, in.v, in.g, in.beta, slots, cpu, options);
        auto g = [&](const at::Tensor& x) { return x.to(in_dtype).cuda(); };
        absl::StatusOr<at::Tensor> og = RecurrentGatedDeltaSteps(g(in.q), g(in.k), g(in.v), in.g.cuda(),
                                                                 in.beta.cuda(), slots.cuda(), gpu, options);
        ASSERT_TRUE(oc.ok() && og.ok()) << oc.status() << og.status();
        ASSERT_EQ(og->scalar_type(), in_dtype);
        const bool exactish = dt == StateDtype::kFloat32 && in_dtype == at::kFloat;
        const double tol = exactish ? 1e-5 : (dt == StateDtype::kFloat8E4M3 ? 0.15 : 3e-2);
        EXPECT_LT(RelMaxError(og->cpu().to(at::kFloat), *oc), tol);
        EXPECT_EQ(og->select(0, 1).abs().max().item<double>(), 0.0);
        const at::Tensor used = at::tensor({4, 1}, at::kLong);
        EXPECT_LT(RelMaxError(ReadStates(gpu, used.cuda())->cpu(), *ReadStates(cpu, used)), tol);
        const at::Tensor after = gpu.values.cpu();
        for (int64_t s : {0, 2, 3}) EXPECT_TRUE(at::equal(after[s].view(at::kByte), untouched[s].view(at::kByte)));
      }
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

// |got - want| <= atol + rtol |want| everywhere (both moved to the CPU as float64).
void ExpectClose(const at::Tensor& got, const at::Tensor& want, double atol, double rtol,
                 const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const at::Tensor g = got.cpu().to(at::kDouble), w = want.cpu().to(at::kDouble);
  const double excess = ((g - w).abs() - rtol * w.abs()).max().item<double>();
  EXPECT_LE(excess, atol) << what << ": max |got - want| = " << (g - w).abs().max().item<double>();
}

// The fused conv-step kernel against the CPU (ATen) path: odd channel counts (one partial block, and
// several blocks), K = 2, 3, 4 (unrolled) and 5 (any-width loop), padding rows, fp32 and bf16.
TEST_F(CudaKernels, ConvStepKernelMatchesCpu) {
  at::manual_seed(90917);
  const at::Device gpu(at::kCUDA, 0);
  const std::vector<int64_t> slots = {4, -1, 0, 6, -1};
  const at::Tensor slots_cpu = at::tensor(slots, at::kLong);
  const at::Tensor slots_gpu = slots_cpu.to(gpu);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t k : {2, 3, 4, 5}) {
      for (int64_t dim : {37, 301}) {
        const bool with_bias = dim == 301 || k != 3;  // one case without bias or SiLU
        const std::string label =
            std::string(c10::toString(dtype)) + " K=" + std::to_string(k) + " D=" + std::to_string(dim);
        const at::Tensor weight = (0.5 * at::randn({dim, k}, at::kDouble)).to(dtype);
        const at::Tensor bias = with_bias ? at::randn({dim}).to(dtype) : at::Tensor();
        at::Tensor cpu_pool = at::randn({8, dim, k - 1}).to(dtype);
        at::Tensor gpu_pool = cpu_pool.to(gpu);
        for (int64_t t = 0; t < 3; ++t) {
          const at::Tensor x = at::randn({5, dim}).to(dtype);
          absl::StatusOr<at::Tensor> yc = CausalConv1dStep(x, weight, bias, cpu_pool, slots_cpu, with_bias);
          absl::StatusOr<at::Tensor> yg =
              CausalConv1dStep(x.to(gpu), weight.to(gpu), with_bias ? bias.to(gpu) : at::Tensor(), gpu_pool,
                               slots_gpu, with_bias, t == 1 ? std::vector<int64_t>{} : slots);
          ASSERT_TRUE(yc.ok()) << label << ": " << yc.status();
          ASSERT_TRUE(yg.ok()) << label << ": " << yg.status();
          ASSERT_TRUE(yg->is_cuda());
          ASSERT_EQ(yg->scalar_type(), dtype);
          // fp32: only the summation order and FMA differ. bf16: the fp32 results may round to
          // neighbouring bf16 values, one unit in the 8th significant bit.
          if (dtype == at::kFloat) {
            ExpectClose(*yg, *yc, 1e-6, 1e-6, label + " y, token " + std::to_string(t));
          } else {
            ExpectClose(*yg, *yc, 1e-6, 1.0 / 128, label + " y, token " + std::to_string(t));
          }
          for (int64_t row : {1, 4}) {
            EXPECT_TRUE(at::equal((*yg)[row].cpu(), at::zeros({dim}, yc->options())))
                << label << " row " << row;
          }
          EXPECT_GT((*yg)[0].abs().sum().item<double>(), 0.0) << label;
        }
        // The state is copies of inputs: exact, and the slots no row addressed are untouched.
        EXPECT_TRUE(at::equal(gpu_pool.cpu(), cpu_pool)) << label << " conv_state";
      }
    }
  }
}

// Padding rows in the CUDA decode kernel, and in the ATen fallback it uses for dv % 4 != 0: zero output,
// no state touched, the other rows as on the CPU.
TEST_F(CudaKernels, DecodePaddingRowsMatchCpu) {
  at::manual_seed(11235);
  for (int64_t dv : {64, 30}) {
    const int64_t hv = 4, dk = 32, slots_n = 5;
    GdnInputs in = MakeGdnInputs(4, 6, 2, hv, dk, dv, Regimes()[1], 47);
    RecurrentStatePool cpu = *MakeRecurrentStatePool(slots_n, hv, dk, dv, StateDtype::kInt8, at::kCPU);
    RecurrentStatePool gpu = *MakeRecurrentStatePool(slots_n, hv, dk, dv, StateDtype::kInt8, at::kCUDA);
    at::Tensor init = at::randn({slots_n, hv, dk, dv}) * 0.2;
    ASSERT_TRUE(WriteStates(cpu, at::arange(slots_n, at::kLong), init).ok());
    ASSERT_TRUE(WriteStates(gpu, at::arange(slots_n, at::kLong).cuda(), init.cuda()).ok());
    const at::Tensor before = gpu.values.cpu();
    const std::vector<int64_t> slots = {3, -1, 0, -1};
    const at::Tensor slots_cpu = at::tensor(slots, at::kLong);
    DecodeStepOptions host;
    host.host_slots = slots;
    for (int64_t t = 0; t < 6; ++t) {
      auto at_t = [t](const at::Tensor& x) { return x.select(1, t).contiguous(); };
      at::Tensor oc = *RecurrentGatedDeltaStep(at_t(in.q), at_t(in.k), at_t(in.v), at_t(in.g), at_t(in.beta),
                                               slots_cpu, cpu);
      absl::StatusOr<at::Tensor> og =
          RecurrentGatedDeltaStep(at_t(in.q).cuda(), at_t(in.k).cuda(), at_t(in.v).cuda(), at_t(in.g).cuda(),
                                  at_t(in.beta).cuda(), slots_cpu.cuda(), gpu, host);
      ASSERT_TRUE(og.ok()) << og.status();
      ASSERT_LT(RelMaxError(og->cpu(), oc), 3e-2) << "dv " << dv << " step " << t;
      EXPECT_TRUE(at::equal((*og)[1].cpu(), at::zeros_like(oc[1]))) << "dv " << dv;
      EXPECT_TRUE(at::equal((*og)[3].cpu(), at::zeros_like(oc[3]))) << "dv " << dv;
    }
    const at::Tensor after = gpu.values.cpu();
    for (int64_t s : {1, 2, 4}) EXPECT_TRUE(at::equal(after[s], before[s])) << "dv " << dv << " slot " << s;
    EXPECT_FALSE(at::equal(after[3], before[3])) << "dv " << dv;
  }
}

#ifdef DELTASERVE_WITH_CUDA
using deltaserve::testing::SyncDebugErrors;

// One decode step of both kernels as a model runner makes it: inputs, pools and slots on the device,
// the slots' host copy beside them.
struct DecodeBatch {
  std::vector<int64_t> host_slots;
  at::Tensor slots, x, weight, bias, conv_pool;  // conv: x [B, D], pool [slots, D, K - 1]
  at::Tensor q, k, v, g, beta;                   // delta rule: one token
  RecurrentStatePool pool;
  at::Tensor y, o;  // outputs of Run

  absl::Status Run() {
    absl::StatusOr<at::Tensor> yy = CausalConv1dStep(x, weight, bias, conv_pool, slots, true, host_slots);
    if (!yy.ok()) return yy.status();
    DecodeStepOptions options;
    options.l2norm_qk = true;
    options.host_slots = host_slots;
    absl::StatusOr<at::Tensor> oo = RecurrentGatedDeltaStep(q, k, v, g, beta, slots, pool, options);
    if (!oo.ok()) return oo.status();
    y = *yy;
    o = *oo;
    return absl::OkStatus();
  }
};

DecodeBatch MakeDecodeBatch(int64_t dv, StateDtype dtype) {
  const at::TensorOptions cuda = at::TensorOptions().device(at::kCUDA);
  const int64_t batch = 4, dim = 97, hv = 4, dk = 32;
  DecodeBatch d;
  d.host_slots = {2, -1, 0, 5};
  d.slots = at::tensor(d.host_slots, at::kLong).to(at::kCUDA);
  d.x = at::randn({batch, dim}, cuda);
  d.weight = at::randn({dim, 4}, cuda) * 0.5;
  d.bias = at::randn({dim}, cuda);
  d.conv_pool = at::randn({6, dim, 3}, cuda);
  d.q = at::randn({batch, 2, dk}, cuda);
  d.k = at::randn({batch, 2, dk}, cuda);
  d.v = at::randn({batch, hv, dv}, cuda);
  d.g = -at::rand({batch, hv}, cuda) * 0.1;
  d.beta = at::rand({batch, hv}, cuda);
  d.pool = *MakeRecurrentStatePool(6, hv, dk, dv, dtype, at::kCUDA);
  EXPECT_TRUE(WriteStates(d.pool, at::arange(6, at::kLong), at::randn({6, hv, dk, dv}, cuda) * 0.2).ok());
  return d;
}

TEST_F(CudaKernels, DecodeStepsWithHostMetadataNeverSynchronise) {
  at::manual_seed(60221);
  // dv = 64: the fused kernel; dv = 30: the ATen fallback, whose row selection uploads from pinned memory.
  for (int64_t dv : {64, 30}) {
    DecodeBatch d = MakeDecodeBatch(dv, StateDtype::kInt8);
    ASSERT_TRUE(d.Run().ok());  // warm-up: first-use initialisation (cuBLAS, allocators) may synchronise
    const at::Tensor conv_before = d.conv_pool.clone(), values_before = d.pool.values.clone();
    {
      SyncDebugErrors errors;
      absl::Status status = d.Run();
      EXPECT_TRUE(status.ok()) << "dv " << dv << ": " << status;
      // Without the host copy the check must read the slots back: the mode has to catch that, or this
      // test would prove nothing.
      EXPECT_ANY_THROW((void)CausalConv1dStep(d.x, d.weight, d.bias, d.conv_pool, d.slots, true));
    }
    EXPECT_TRUE(at::equal(d.y[1].cpu(), at::zeros({d.x.size(1)}))) << "dv " << dv;
    EXPECT_TRUE(at::equal(d.o[1].cpu(), at::zeros({d.v.size(1), dv}))) << "dv " << dv;
    for (int64_t s : {1, 3, 4}) {
      EXPECT_TRUE(at::equal(d.conv_pool[s], conv_before[s])) << "dv " << dv << " slot " << s;
      EXPECT_TRUE(at::equal(d.pool.values[s], values_before[s])) << "dv " << dv << " slot " << s;
    }
  }
}

// Packed prefill with host offsets: the column lists are computed on the host and reach the GPU by an
// asynchronous copy from pinned memory, never a blocking one.
TEST_F(CudaKernels, PackedConvPrefillWithHostOffsetsNeverSynchronises) {
  at::manual_seed(14142);
  const std::vector<int64_t> offsets = {0, 3, 3, 11};
  const at::Tensor x = at::randn({1, 11, 97}), weight = at::randn({97, 4}) * 0.5, bias = at::randn({97});
  const at::Tensor init = at::randn({3, 97, 3});
  const at::Tensor cu = at::tensor(offsets, at::kLong);
  absl::StatusOr<CausalConv1dOutput> cpu = CausalConv1d(x, weight, bias, init, cu, true);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto gpu_call = [&] {
    return CausalConv1d(x.cuda(), weight.cuda(), bias.cuda(), init.cuda(), cu.cuda(), true, offsets);
  };
  ASSERT_TRUE(gpu_call().ok());  // warm-up: first-use initialisation (cuDNN, pinned pool) may synchronise
  const at::Tensor xg = x.cuda(), wg = weight.cuda(), bg = bias.cuda(), ig = init.cuda(), cg = cu.cuda();
  absl::StatusOr<CausalConv1dOutput> gpu = absl::UnknownError("not run");
  {
    SyncDebugErrors errors;
    gpu = CausalConv1d(xg, wg, bg, ig, cg, true, offsets);
  }
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ExpectClose(gpu->y, cpu->y, 1e-5, 1e-5, "packed y");
  EXPECT_TRUE(at::equal(gpu->final_state.cpu(), cpu->final_state));
}

// The decode steps captured once in a CUDA graph and replayed with new inputs and new slots (padding
// moved) give exactly what eager calls give: nothing of the capture-time host values is baked in but
// the checks' verdict.
#ifdef DELTASERVE_WITH_CUDA
// `--device cuda:1`: the delta rule's kernels launch on their tensors' GPU, not on the current one. The
// prefill in the pool, the one-token step (each state dtype's kernel) and the T-token step on the second GPU
// while the first is current give the bytes they give on the first. Needs two GPUs.
TEST_F(CudaKernels, DeltaRuleKernelsRunOnTheirTensorsGpu) {
  if (c10::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  const c10::cuda::CUDAGuard current(static_cast<c10::DeviceIndex>(0));
  at::manual_seed(2222);
  const std::vector<int64_t> cu = {0, 70, 200};
  const std::vector<int64_t> slots = {3, 1};
  GdnInputs in = MakeGdnInputs(1, cu.back(), 2, 4, 128, 128, Regimes()[1], 17, at::kBFloat16);
  in.g = in.g.to(at::kFloat);
  in.beta = in.beta.to(at::kFloat);
  const at::Tensor init = at::randn({4, 4, 128, 128}) * 0.2;
  const at::Tensor token = at::randn({2, 3, 4, 128}).to(at::kBFloat16);  // q/k/v rows of a T = 3 step
  const at::Tensor g1 = -at::rand({2, 4}), g3 = -at::rand({2, 3, 4});  // the decode steps' decays
  for (StateDtype sd : {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8}) {
    std::vector<at::Tensor> outputs[2], states[2];
    for (int dev = 0; dev < 2; ++dev) {
      const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(dev));
      RecurrentStatePool pool = *MakeRecurrentStatePool(4, 4, 128, 128, sd, device);
      ASSERT_TRUE(WriteStates(pool, at::arange(4, at::kLong).to(device), init.to(device)).ok());
      GatedDeltaRuleOptions o;
      o.inverse = *ParseTriInverseMethod("forward", 64);
      o.host_cu_seqlens = cu;
      const at::Tensor dslots = at::tensor(slots, at::kLong).to(device);
      absl::StatusOr<GatedDeltaRuleOutput> prefill = ChunkGatedDeltaRuleInPool(
          in.q.to(device), in.k.to(device), in.v.to(device), in.g.to(device), in.beta.to(device),
          at::tensor(cu, at::kLong).to(device), pool, dslots, slots, o);
      ASSERT_TRUE(prefill.ok()) << prefill.status();
      DecodeStepOptions step;
      step.l2norm_qk = true;
      step.host_slots = slots;
      const at::Tensor q = token.select(1, 0).narrow(1, 0, 2).to(device), v = token.select(1, 0).to(device);
      const at::Tensor g = g1.to(device), beta = at::full({2, 4}, 0.5).to(device);
      absl::StatusOr<at::Tensor> one = RecurrentGatedDeltaStep(q, q, v, g, beta, dslots, pool, step);
      ASSERT_TRUE(one.ok()) << one.status();
      const at::Tensor qs = token.narrow(2, 0, 2).to(device), vs = token.to(device);
      absl::StatusOr<at::Tensor> steps = RecurrentGatedDeltaSteps(qs, qs, vs, g3.to(device),
                                                                  at::full({2, 3, 4}, 0.5).to(device), dslots, pool, step);
      ASSERT_TRUE(steps.ok()) << steps.status();
      EXPECT_EQ(c10::cuda::current_device(), 0);
      outputs[dev] = {prefill->o.cpu(), one->cpu(), steps->cpu()};
      states[dev] = {pool.values.view(at::kByte).cpu()};
    }
    for (size_t i = 0; i < outputs[0].size(); ++i) {
      EXPECT_TRUE(at::equal(outputs[0][i], outputs[1][i])) << StateDtypeName(sd) << " output " << i;
    }
    EXPECT_TRUE(at::equal(states[0][0], states[1][0])) << StateDtypeName(sd);
  }
}
#endif

TEST_F(CudaKernels, DecodeStepsReplayInACudaGraph) {
  at::manual_seed(16180);
  DecodeBatch graph_batch = MakeDecodeBatch(64, StateDtype::kInt8);
  DecodeBatch eager = graph_batch;
  eager.conv_pool = graph_batch.conv_pool.clone();
  eager.pool.values = graph_batch.pool.values.clone();
  eager.pool.scales = graph_batch.pool.scales.clone();

  at::cuda::CUDAGraph graph;
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    // Capture on scratch pools: the warm-up and capture must not advance the states compared below.
    DecodeBatch scratch = graph_batch;
    scratch.conv_pool = graph_batch.conv_pool.clone();
    scratch.pool.values = graph_batch.pool.values.clone();
    scratch.pool.scales = graph_batch.pool.scales.clone();
    ASSERT_TRUE(scratch.Run().ok());
    side.synchronize();
    graph.capture_begin();
    absl::Status captured = graph_batch.Run();
    graph.capture_end();
    ASSERT_TRUE(captured.ok()) << captured;
  }
  // Capture recorded the kernels without running them: graph_batch's pools are still the initial ones.
  const std::vector<std::vector<int64_t>> steps = {{2, -1, 0, 5}, {-1, 3, 0, -1}, {1, 4, -1, 2}};
  for (size_t t = 0; t < steps.size(); ++t) {
    const at::Tensor x = at::randn(graph_batch.x.sizes(), graph_batch.x.options());
    const at::Tensor v = at::randn(graph_batch.v.sizes(), graph_batch.v.options());
    const at::Tensor slots = at::tensor(steps[t], at::kLong).to(at::kCUDA);
    graph_batch.x.copy_(x);
    graph_batch.v.copy_(v);
    graph_batch.slots.copy_(slots);
    graph.replay();
    eager.x = x;
    eager.v = v;
    eager.slots = slots;
    eager.host_slots = steps[t];
    ASSERT_TRUE(eager.Run().ok());
    EXPECT_TRUE(at::equal(graph_batch.y, eager.y)) << "step " << t;
    EXPECT_TRUE(at::equal(graph_batch.o, eager.o)) << "step " << t;
    EXPECT_TRUE(at::equal(graph_batch.conv_pool, eager.conv_pool)) << "step " << t;
    EXPECT_TRUE(at::equal(graph_batch.pool.values, eager.pool.values)) << "step " << t;
    EXPECT_TRUE(at::equal(graph_batch.pool.scales, eager.pool.scales)) << "step " << t;
  }
}
#endif  // DELTASERVE_WITH_CUDA

}  // namespace
}  // namespace deltaserve::kernels
