// The fused CUDA chunked prefill (kernels/cuda/chunk_gated_delta_rule_cuda.cu) against the token-by-token
// recurrence in float64 and against the ATen composition on the same device: every regime, varlen with
// odd and empty lengths, grouped heads, every fused inverse method and chunk size, both column-block
// widths, bfloat16 inputs, forced guard fallbacks counted as the composition counts them, and no host
// synchronisation with host offsets. Skipped without a GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "deltaserve/kernels/chunk_gated_delta_rule.h"
#include "deltaserve/kernels/tri_inverse.h"
#include "support/gdn_inputs.h"
#include "support/sync_debug.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::GdnInputs;
using deltaserve::testing::MakeGdnInputs;
using deltaserve::testing::Regimes;
using deltaserve::testing::RelMaxError;

class CudaChunkPrefill : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

struct Case {
  GdnInputs in;             // on the CPU, [1, T, ...] packed
  std::vector<int64_t> cu;  // offsets
  at::Tensor h0;            // [N, Hv, dk, dv] float32
};

Case MakeCase(const std::vector<int64_t>& lengths, int64_t hk, int64_t hv, int64_t dk, int64_t dv, size_t regime,
              uint64_t seed, at::ScalarType dtype = at::kFloat) {
  Case c;
  c.cu = {0};
  for (int64_t len : lengths) c.cu.push_back(c.cu.back() + len);
  c.in = MakeGdnInputs(1, c.cu.back(), hk, hv, dk, dv, Regimes()[regime], seed, dtype);
  c.h0 = at::randn({static_cast<int64_t>(lengths.size()), hv, dk, dv}) * 0.3;
  return c;
}

GatedDeltaRuleOutput Reference(const Case& c, bool l2norm = false) {
  auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  GatedDeltaRuleOptions o;
  o.l2norm_qk = l2norm;
  absl::StatusOr<GatedDeltaRuleOutput> r = RecurrentGatedDeltaRuleReference(
      d(c.in.q), d(c.in.k), d(c.in.v), d(c.in.g), d(c.in.beta), d(c.h0), at::tensor(c.cu, at::kLong), o);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

GatedDeltaRuleOutput OnCuda(const Case& c, GatedDeltaRuleOptions o, bool host_offsets = true) {
  if (host_offsets) o.host_cu_seqlens = c.cu;
  absl::StatusOr<GatedDeltaRuleOutput> r =
      ChunkGatedDeltaRule(c.in.q.cuda(), c.in.k.cuda(), c.in.v.cuda(), c.in.g.cuda(), c.in.beta.cuda(),
                          c.h0.cuda(), at::tensor(c.cu, at::kLong).cuda(), o);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

GatedDeltaRuleOptions Options(const char* method, int64_t chunk = 64, bool fused = true) {
  GatedDeltaRuleOptions o;
  o.chunk_size = chunk;
  o.inverse = *ParseTriInverseMethod(method, chunk);
  o.fused_cuda = fused;
  o.sync_inverse_stats = true;
  return o;
}

// Odd, empty and exact-multiple lengths in one packed batch.
const std::vector<int64_t> kLengths = {1, 63, 0, 64, 65, 200};

TEST_F(CudaChunkPrefill, EveryRegimeAndMethodMatchesRecurrence) {
  at::manual_seed(31337);
  uint64_t seed = 900;
  for (size_t r = 0; r < Regimes().size(); ++r) {
    const Case c = MakeCase(kLengths, 2, 4, 128, 128, r, ++seed);
    const GatedDeltaRuleOutput ref = Reference(c);
    for (const char* method : {"forward", "neumann", "neumann-fast", "product"}) {
      const GatedDeltaRuleOutput got = OnCuda(c, Options(method));
      const GatedDeltaRuleOutput aten = OnCuda(c, Options(method, 64, false));
      // The product form loses digits on correlated keys in any implementation (tri_inverse_test).
      const double bound = std::string(method) == "product" ? 3e-3 : 1e-4;
      const std::string what = std::string(method) + " " + Regimes()[r].name;
      EXPECT_EQ(got.o.scalar_type(), at::kFloat);
      EXPECT_LT(RelMaxError(got.o.cpu(), ref.o), bound) << what;
      EXPECT_LT(RelMaxError(got.final_state.cpu(), ref.final_state), bound) << what;
      // The fused kernels and the composition are the same math: they agree far below the bound.
      EXPECT_LT(RelMaxError(got.o.cpu(), aten.o.cpu()), bound) << what;
      EXPECT_EQ(got.inverse_stats.chunks, 9 * 4) << what;  // chunks 1 + 1 + 0 + 1 + 2 + 4, 4 heads
    }
  }
}

TEST_F(CudaChunkPrefill, ChunkSizesAndNarrowValueBlocks) {
  at::manual_seed(2718);
  // dv = 48: the 16-column state blocks; dv = 64 with dk = 32: the 32-column ones.
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{64, 48}, {32, 64}}) {
    const Case c = MakeCase({5, 33, 130}, 1, 2, dk, dv, 2, 77);
    const GatedDeltaRuleOutput ref = Reference(c);
    for (int64_t chunk : {16, 32, 64}) {
      for (const char* method : {"forward", "neumann"}) {
        const GatedDeltaRuleOutput got = OnCuda(c, Options(method, chunk));
        const std::string what = std::string(method) + " C=" + std::to_string(chunk) + " dv=" + std::to_string(dv);
        EXPECT_LT(RelMaxError(got.o.cpu(), ref.o), 1e-4) << what;
        EXPECT_LT(RelMaxError(got.final_state.cpu(), ref.final_state), 1e-4) << what;
      }
    }
  }
}

TEST_F(CudaChunkPrefill, UnpackedBatchWithoutInitialStateAndInKernelNorm) {
  at::manual_seed(1618);
  GdnInputs in = MakeGdnInputs(3, 100, 2, 4, 64, 64, Regimes()[3], 5);
  in.q = in.q * 3.0;  // not unit length: the kernel normalises
  in.k = in.k * 0.5;
  GatedDeltaRuleOptions o = Options("neumann");
  o.l2norm_qk = true;
  o.scale = 0.3;
  auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  GatedDeltaRuleOptions ro;
  ro.l2norm_qk = true;
  ro.scale = 0.3;
  const GatedDeltaRuleOutput ref =
      *RecurrentGatedDeltaRuleReference(d(in.q), d(in.k), d(in.v), d(in.g), d(in.beta), {}, {}, ro);
  const GatedDeltaRuleOutput got =
      *ChunkGatedDeltaRule(in.q.cuda(), in.k.cuda(), in.v.cuda(), in.g.cuda(), in.beta.cuda(), {}, {}, o);
  EXPECT_EQ(got.o.sizes(), in.v.sizes());
  EXPECT_LT(RelMaxError(got.o.cpu(), ref.o), 1e-4);
  EXPECT_LT(RelMaxError(got.final_state.cpu(), ref.final_state), 1e-4);
}

TEST_F(CudaChunkPrefill, BFloat16InputsWithFloatGates) {
  at::manual_seed(4242);
  // Every regime, both the exact and the Neumann inverse, the Qwen3.5 shape (C = 64, d = 128: the
  // compile-time instantiation) and a run-time one (d = 64, C = 32; dv = 48 takes 16-column blocks).
  struct Shape {
    int64_t dk, dv, chunk;
  };
  uint64_t seed = 61;
  for (const Shape& shape : {Shape{128, 128, 64}, Shape{64, 48, 32}}) {
    for (size_t r = 0; r < Regimes().size(); ++r) {
      Case c = MakeCase(kLengths, 2, 4, shape.dk, shape.dv, r, ++seed, at::kBFloat16);
      c.in.g = c.in.g.to(at::kFloat);
      c.in.beta = c.in.beta.to(at::kFloat);
      const GatedDeltaRuleOutput ref = Reference(c);  // from the same bf16-rounded q, k, v in float64
      for (const char* method : {"forward", "neumann"}) {
        const GatedDeltaRuleOutput got = OnCuda(c, Options(method, shape.chunk));
        const std::string what = std::string(method) + " " + Regimes()[r].name + " dk=" +
                                 std::to_string(shape.dk) + " C=" + std::to_string(shape.chunk);
        EXPECT_EQ(got.o.scalar_type(), at::kBFloat16);
        // bf16 inputs keep a bf16 workspace between the passes and multiply bf16 operands on tensor cores
        // with float32 sums (FLA's precision class): each operand is rounded at 2^-9 (2e-3), the output
        // once more. A wrong product, pass or chunk boundary is off by far more than 1e-2.
        const double o_err = RelMaxError(got.o.cpu(), ref.o);
        const double state_err = RelMaxError(got.final_state.cpu(), ref.final_state);
        std::printf("bf16 inputs, %s: output rel err %.2e, final state %.2e\n", what.c_str(), o_err, state_err);
        EXPECT_LT(o_err, 1e-2) << what;
        EXPECT_LT(state_err, 1e-2) << what;
      }
    }
  }
}

// At Qwen3.5's shape the state pass keeps the state in registers and picks its pipeline depth by how many
// blocks it has: up to one an SM, three stages; more, two stages and two blocks an SM. The test above has
// 48 blocks; this one 40 sequences x 8 heads x 2 column blocks = 640, more than any GPU's SM count, with
// lengths around the chunk boundaries, the state carried across 5 chunks and two sequences of no tokens.
TEST_F(CudaChunkPrefill, BFloat16ManySequencesTakeTheTwoStagePipeline) {
  at::manual_seed(777);
  std::vector<int64_t> lengths;
  for (int i = 0; i < 40; ++i) lengths.push_back(i % 13 == 5 ? 0 : (i * 37) % 300 + 1);
  Case c = MakeCase(lengths, 4, 8, 128, 128, 0, 91, at::kBFloat16);
  c.in.g = c.in.g.to(at::kFloat);
  c.in.beta = c.in.beta.to(at::kFloat);
  const GatedDeltaRuleOutput ref = Reference(c);
  const GatedDeltaRuleOutput got = OnCuda(c, Options("forward", 64));
  const double o_err = RelMaxError(got.o.cpu(), ref.o);
  const double state_err = RelMaxError(got.final_state.cpu(), ref.final_state);
  std::printf("bf16 inputs, 40 sequences: output rel err %.2e, final state %.2e\n", o_err, state_err);
  EXPECT_LT(o_err, 1e-2);
  EXPECT_LT(state_err, 1e-2);
}

// The fused state-and-output pass (DELTASERVE_GDN_FUSED_OUTPUT=1; Qwen3.5's shape, bf16 inputs) forms the
// output inside the state pass from the operands the output pass reads back: the same final state bit for
// bit (the state's arithmetic is untouched), the output within one bf16 rounding of the two passes' (its
// float32 sums run in another order) and within the bound of the float64 recurrence. Both pipelines: the
// packed odd lengths (48 blocks) and 40 sequences (640 blocks), both inverses that differ in the prepare.
TEST_F(CudaChunkPrefill, BFloat16FusedStateOutputPassEqualsTheTwoPasses) {
  at::manual_seed(5150);
  std::vector<int64_t> many;
  for (int i = 0; i < 40; ++i) many.push_back(i % 13 == 5 ? 0 : (i * 37) % 300 + 1);
  struct Scenario {
    std::vector<int64_t> lengths;
    int64_t hk, hv;
    size_t regime;
    const char* method;
  };
  uint64_t seed = 404;
  for (const Scenario& sc : {Scenario{kLengths, 2, 4, 3, "neumann"}, Scenario{kLengths, 2, 4, 1, "forward"},
                             Scenario{many, 4, 8, 0, "forward"}}) {
    Case c = MakeCase(sc.lengths, sc.hk, sc.hv, 128, 128, sc.regime, ++seed, at::kBFloat16);
    c.in.g = c.in.g.to(at::kFloat);
    c.in.beta = c.in.beta.to(at::kFloat);
    const GatedDeltaRuleOutput ref = Reference(c);
    ASSERT_EQ(unsetenv("DELTASERVE_GDN_FUSED_OUTPUT"), 0);
    const GatedDeltaRuleOutput two_passes = OnCuda(c, Options(sc.method, 64));
    ASSERT_EQ(setenv("DELTASERVE_GDN_FUSED_OUTPUT", "1", 1), 0);
    const GatedDeltaRuleOutput fused = OnCuda(c, Options(sc.method, 64));
    ASSERT_EQ(unsetenv("DELTASERVE_GDN_FUSED_OUTPUT"), 0);
    const std::string what = std::string(sc.method) + " " + Regimes()[sc.regime].name + ", " +
                             std::to_string(sc.lengths.size()) + " sequences";
    EXPECT_TRUE(at::equal(fused.final_state, two_passes.final_state)) << what;
    const double between = RelMaxError(fused.o.cpu().to(at::kDouble), two_passes.o.cpu().to(at::kDouble));
    const double o_err = RelMaxError(fused.o.cpu(), ref.o);
    std::printf("fused state+output, %s: output rel err %.2e (two passes: %.2e), fused vs two passes %.2e\n",
                what.c_str(), o_err, RelMaxError(two_passes.o.cpu(), ref.o), between);
    EXPECT_LT(between, 8e-3) << what;  // at most one bf16 step apart: 2^-7 (7.8e-3) of the largest output
    EXPECT_LT(o_err, 1e-2) << what;
  }
}

TEST_F(CudaChunkPrefill, ForcedGuardFallbacksAreExactAndCounted) {
  at::manual_seed(8080);
  const Case c = MakeCase(kLengths, 2, 4, 64, 64, 3, 19);
  const GatedDeltaRuleOutput ref = Reference(c);
  // Order 1, one correction step and a tolerance nothing meets: every chunk with at least two tokens has
  // a residual and falls back to forward substitution; one-token chunks have A = 0 and an exact start.
  GatedDeltaRuleOptions o = Options("neumann");
  o.inverse.order = 1;
  o.inverse.residual_steps = 1;
  o.inverse.guard_tol = 1e-30;
  const GatedDeltaRuleOutput got = OnCuda(c, o);
  o.fused_cuda = false;
  const GatedDeltaRuleOutput aten = OnCuda(c, o);
  EXPECT_LT(RelMaxError(got.o.cpu(), ref.o), 1e-4);
  EXPECT_LT(RelMaxError(got.final_state.cpu(), ref.final_state), 1e-4);
  EXPECT_EQ(got.inverse_stats.fallbacks, (9 - 2) * 4);  // the two one-token chunks (lengths 1 and 65) pass
  EXPECT_EQ(got.inverse_stats.fallbacks, aten.inverse_stats.fallbacks);
  EXPECT_GT(got.inverse_stats.max_residual, 1e-6);
  // Without corrections the guard measures the residual itself.
  o.fused_cuda = true;
  o.inverse.residual_steps = 0;
  const GatedDeltaRuleOutput direct = OnCuda(c, o);
  EXPECT_EQ(direct.inverse_stats.fallbacks, (9 - 2) * 4);
  EXPECT_LT(RelMaxError(direct.o.cpu(), ref.o), 1e-4);
}

#ifdef DELTASERVE_WITH_CUDA
TEST_F(CudaChunkPrefill, HostOffsetsNeverSynchronise) {
  at::manual_seed(99);
  const Case c = MakeCase(kLengths, 2, 4, 64, 64, 2, 3);
  GatedDeltaRuleOptions o = Options("neumann");
  o.sync_inverse_stats = false;
  o.host_cu_seqlens = c.cu;
  const at::Tensor q = c.in.q.cuda(), k = c.in.k.cuda(), v = c.in.v.cuda(), g = c.in.g.cuda();
  const at::Tensor beta = c.in.beta.cuda(), h0 = c.h0.cuda(), cu = at::tensor(c.cu, at::kLong).cuda();
  ASSERT_TRUE(ChunkGatedDeltaRule(q, k, v, g, beta, h0, cu, o).ok());  // warm-up: first-use initialisation
  absl::StatusOr<GatedDeltaRuleOutput> got = absl::UnknownError("not run");
  {
    deltaserve::testing::SyncDebugErrors errors;
    got = ChunkGatedDeltaRule(q, k, v, g, beta, h0, cu, o);
  }
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(RelMaxError(got->o.cpu(), Reference(c).o), 1e-4);
}
#endif

}  // namespace
}  // namespace deltaserve::kernels
