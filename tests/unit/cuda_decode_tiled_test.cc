// The register-tiled and streamed CUDA decode steps (dk = dv = 64 or 128) against the fused CPU step on
// the same inputs and states: every state dtype, float32 and bfloat16 inputs read in place from strided
// views (as the model hands them over), grouped key heads, padding rows, slots left alone; against the
// general CUDA kernel they replace, and the streamed against the tiled. Skipped without a GPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#ifdef DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "deltaserve/kernels/recurrent_state.h"
#include "support/gdn_inputs.h"
#include "support/sync_debug.h"

namespace deltaserve::kernels {
namespace {

using deltaserve::testing::RelMaxError;

class CudaTiledDecode : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  }
};

// One step's inputs as the model makes them: q, k, v are views into one packed row per sequence.
struct StepInputs {
  at::Tensor packed, q, k, v, g, beta;
};

StepInputs MakeStep(int64_t batch, int64_t hk, int64_t hv, int64_t d, at::ScalarType dtype,
                    at::Device device) {
  StepInputs s;
  const int64_t width = 2 * hk * d + hv * d + 3;  // + 3: rows that are not a multiple of anything
  s.packed = (at::randn({batch, width}) * 0.7).to(dtype).to(device);
  s.q = s.packed.narrow(1, 0, hk * d).view({batch, hk, d});
  s.k = s.packed.narrow(1, hk * d, hk * d).view({batch, hk, d});
  s.v = s.packed.narrow(1, 2 * hk * d, hv * d).view({batch, hv, d});
  // Decays from strong to weak, as the model's -exp(A) * softplus(.) gives.
  s.g = (-at::rand({batch, hv}) * 2.0).to(device);
  s.beta = at::rand({batch, hv}).to(device);
  return s;
}

StepInputs ToDevice(const StepInputs& s, at::Device device) {
  StepInputs o = s;
  for (at::Tensor* t : {&o.q, &o.k, &o.v, &o.g, &o.beta}) *t = t->to(device);
  return o;
}

double StateTolerance(StateDtype dt) {
  switch (dt) {
    case StateDtype::kFloat32:
      return 1e-5;
    case StateDtype::kFloat8E4M3:
      return 0.15;  // one e4m3 quantum is 1/8 of a value; a tie may round either way after FMA contraction
    default:
      return 3e-2;  // one int8 / bf16 quantum where rounding ties break differently
  }
}

TEST_F(CudaTiledDecode, MatchesFusedCpuForEveryStateDtypeAndInputDtype) {
  at::manual_seed(90210);
  const int64_t slots_n = 7, hk = 2, hv = 4, steps = 12;
  const std::vector<int64_t> host_slots = {6, -1, 0, 3, -1};
  const at::Tensor slots_cpu = at::tensor(host_slots, at::kLong);
  for (int64_t d : {64, 128}) {
    for (at::ScalarType in_dtype : {at::kFloat, at::kBFloat16}) {
      for (StateDtype dt : {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8,
                            StateDtype::kInt8Stochastic, StateDtype::kInt8Coarse, StateDtype::kFloat8E4M3}) {
        const std::string label = "d " + std::to_string(d) + " in " + std::string(c10::toString(in_dtype)) +
                                  " state " + StateDtypeName(dt);
        RecurrentStatePool cpu = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCPU);
        RecurrentStatePool gpu = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCUDA);
        const at::Tensor init = at::randn({slots_n, hv, d, d}) * 0.2;
        ASSERT_TRUE(WriteStates(cpu, at::arange(slots_n, at::kLong), init).ok());
        ASSERT_TRUE(WriteStates(gpu, at::arange(slots_n, at::kLong).cuda(), init.cuda()).ok());
        const at::Tensor before = gpu.values.cpu();
        DecodeStepOptions options;
        options.l2norm_qk = true;
        options.host_slots = host_slots;
        for (int64_t t = 0; t < steps; ++t) {
          const StepInputs g =
              MakeStep(static_cast<int64_t>(host_slots.size()), hk, hv, d, in_dtype, at::kCUDA);
          ASSERT_FALSE(g.q.is_contiguous());  // read in place, not copied
          const StepInputs c = ToDevice(g, at::kCPU);
          const at::Tensor oc = *RecurrentGatedDeltaStep(c.q, c.k, c.v, c.g, c.beta, slots_cpu, cpu, options);
          absl::StatusOr<at::Tensor> og =
              RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots_cpu.cuda(), gpu, options);
          ASSERT_TRUE(og.ok()) << og.status();
          ASSERT_EQ(og->scalar_type(), in_dtype) << label;
          const double o_tol = std::max(StateTolerance(dt), in_dtype == at::kBFloat16 ? 1e-2 : 0.0);
          ASSERT_LT(RelMaxError(og->cpu().to(at::kFloat), oc.to(at::kFloat)), o_tol)
              << label << " step " << t;
          for (int64_t row : {1, 4}) {
            EXPECT_EQ(og->select(0, row).abs().max().item<float>(), 0.0f) << label << " padding row " << row;
          }
        }
        const at::Tensor used = at::tensor({6, 0, 3}, at::kLong);
        EXPECT_LT(RelMaxError(ReadStates(gpu, used.cuda())->cpu(), *ReadStates(cpu, used)),
                  StateTolerance(dt))
            << label;
        const at::Tensor after = gpu.values.cpu();
        for (int64_t s : {1, 2, 4, 5}) {
          EXPECT_TRUE(at::equal(after[s].view(at::kByte), before[s].view(at::kByte)))
              << label << " slot " << s;
        }
      }
    }
  }
}

// The tiled kernel and the general kernel (tiled_cuda = false) agree step by step on a long run, so the
// benchmark's baseline computes the same thing.
TEST_F(CudaTiledDecode, EqualsTheGeneralKernelOverManySteps) {
  at::manual_seed(31337);
  const int64_t slots_n = 3, hk = 2, hv = 4, d = 128, steps = 64;
  const std::vector<int64_t> host_slots = {2, 0, 1};
  const at::Tensor slots = at::tensor(host_slots, at::kLong).cuda();
  for (StateDtype dt : {StateDtype::kFloat32, StateDtype::kBFloat16, StateDtype::kInt8,
                        StateDtype::kInt8Stochastic, StateDtype::kFloat8E4M3}) {
    RecurrentStatePool tiled = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCUDA);
    RecurrentStatePool general = *MakeRecurrentStatePool(slots_n, hv, d, d, dt, at::kCUDA);
    const at::Tensor init = (at::randn({slots_n, hv, d, d}) * 0.2).cuda();
    ASSERT_TRUE(WriteStates(tiled, at::arange(slots_n, at::kLong).cuda(), init).ok());
    ASSERT_TRUE(WriteStates(general, at::arange(slots_n, at::kLong).cuda(), init).ok());
    DecodeStepOptions on, off;
    on.l2norm_qk = off.l2norm_qk = true;
    on.host_slots = off.host_slots = host_slots;
    off.tiled_cuda = false;
    for (int64_t t = 0; t < steps; ++t) {
      const StepInputs g = MakeStep(3, hk, hv, d, at::kFloat, at::kCUDA);
      const at::Tensor a = *RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots, tiled, on);
      const at::Tensor b = *RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots, general, off);
      ASSERT_LT(RelMaxError(a.cpu(), b.cpu()), StateTolerance(dt)) << StateDtypeName(dt) << " step " << t;
    }
    EXPECT_LT(RelMaxError(ReadStates(tiled, slots)->cpu(), ReadStates(general, slots)->cpu()),
              StateTolerance(dt))
        << StateDtypeName(dt);
  }
}

// The streamed kernel (1-byte states on Hopper: persistent blocks, the next head's state copied into
// shared memory while the current one is computed) against the tiled kernel, step after step: enough heads
// that every block walks several items through both buffers, slots out of order with padding rows among
// them (their slots untouched), and a batch smaller than the grid. Its column sums run in another order
// and its rows share their scale search, so the bound is one quantum, as against the CPU.
TEST_F(CudaTiledDecode, StreamedKernelMatchesTheTiledKernel) {
  at::manual_seed(2718);
  const int64_t hk = 8, hv = 16, steps = 6;
  for (int64_t d : {64, 128}) {
    for (const int64_t batch : {int64_t{2}, int64_t{97}}) {
      std::vector<int64_t> host_slots, untouched;  // slots in reverse, every seventh row a padding row
      for (int64_t b = 0; b < batch; ++b) {
        host_slots.push_back(b % 7 == 3 ? -1 : batch - 1 - b);
        if (b % 7 == 3) untouched.push_back(batch - 1 - b);
      }
      std::vector<int64_t> used;
      for (int64_t slot : host_slots) {
        if (slot >= 0) used.push_back(slot);
      }
      const at::Tensor slots = at::tensor(host_slots, at::kLong).cuda();
      const at::Tensor used_slots = at::tensor(used, at::kLong).cuda();
      for (at::ScalarType in_dtype : {at::kFloat, at::kBFloat16}) {
        for (StateDtype dt : {StateDtype::kInt8, StateDtype::kInt8Stochastic, StateDtype::kInt8Coarse,
                              StateDtype::kFloat8E4M3}) {
          const std::string label = "d " + std::to_string(d) + " batch " + std::to_string(batch) + " in " +
                                    std::string(c10::toString(in_dtype)) + " state " + StateDtypeName(dt);
          RecurrentStatePool streamed = *MakeRecurrentStatePool(batch, hv, d, d, dt, at::kCUDA);
          RecurrentStatePool tiled = *MakeRecurrentStatePool(batch, hv, d, d, dt, at::kCUDA);
          const at::Tensor init = (at::randn({batch, hv, d, d}) * 0.2).cuda();
          ASSERT_TRUE(WriteStates(streamed, at::arange(batch, at::kLong).cuda(), init).ok());
          ASSERT_TRUE(WriteStates(tiled, at::arange(batch, at::kLong).cuda(), init).ok());
          const at::Tensor initial = streamed.values.clone();
          DecodeStepOptions on, off;
          on.l2norm_qk = off.l2norm_qk = true;
          on.host_slots = off.host_slots = host_slots;
          off.streamed_cuda = false;
          for (int64_t t = 0; t < steps; ++t) {
            const StepInputs g = MakeStep(batch, hk, hv, d, in_dtype, at::kCUDA);
            const at::Tensor a = *RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots, streamed, on);
            const at::Tensor b = *RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots, tiled, off);
            const double o_tol = std::max(StateTolerance(dt), in_dtype == at::kBFloat16 ? 1e-2 : 0.0);
            ASSERT_LT(RelMaxError(a.cpu().to(at::kFloat), b.cpu().to(at::kFloat)), o_tol)
                << label << " step " << t;
            ASSERT_GT(a.abs().max().item<float>(), 0.0f) << label;
            for (int64_t row = 3; row < batch; row += 7) {
              ASSERT_EQ(a.select(0, row).abs().max().item<float>(), 0.0f)
                  << label << " padding row " << row;
            }
          }
          const at::Tensor streamed_states = ReadStates(streamed, used_slots)->cpu();
          EXPECT_LT(RelMaxError(streamed_states, ReadStates(tiled, used_slots)->cpu()), StateTolerance(dt))
              << label;
          EXPECT_FALSE(at::equal(streamed.values, initial)) << label;  // the states moved
          for (int64_t slot : untouched) {
            EXPECT_TRUE(at::equal(streamed.values[slot], initial[slot])) << label << " slot " << slot;
          }
        }
      }
    }
  }
}

#ifdef DELTASERVE_WITH_CUDA
// With the slots' host copy the tiled step never waits on the device (no cast, no copy, no read-back).
TEST_F(CudaTiledDecode, NeverSynchronisesTheHost) {
  at::manual_seed(4242);
  const std::vector<int64_t> host_slots = {1, -1, 0};
  const at::Tensor slots = at::tensor(host_slots, at::kLong).cuda();
  RecurrentStatePool pool = *MakeRecurrentStatePool(2, 4, 128, 128, StateDtype::kInt8, at::kCUDA);
  DecodeStepOptions options;
  options.l2norm_qk = true;
  options.host_slots = host_slots;
  const StepInputs g = MakeStep(3, 2, 4, 128, at::kBFloat16, at::kCUDA);
  ASSERT_TRUE(RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots, pool, options).ok());  // warm-up
  absl::StatusOr<at::Tensor> o = absl::UnknownError("not run");
  {
    deltaserve::testing::SyncDebugErrors errors;
    o = RecurrentGatedDeltaStep(g.q, g.k, g.v, g.g, g.beta, slots, pool, options);
  }
  ASSERT_TRUE(o.ok()) << o.status();
}

// Captured once in a CUDA graph and replayed with new inputs and slots (padding moved), the tiled step
// gives exactly what eager calls give.
TEST_F(CudaTiledDecode, ReplaysInACudaGraph) {
  at::manual_seed(2718);
  const int64_t hk = 2, hv = 4, d = 128;
  StepInputs graph_in = MakeStep(4, hk, hv, d, at::kBFloat16, at::kCUDA);
  at::Tensor slots = at::tensor({2, -1, 0, 5}, at::kLong).cuda();
  RecurrentStatePool graph_pool = *MakeRecurrentStatePool(6, hv, d, d, StateDtype::kInt8, at::kCUDA);
  ASSERT_TRUE(
      WriteStates(graph_pool, at::arange(6, at::kLong).cuda(), (at::randn({6, hv, d, d}) * 0.2).cuda()).ok());
  RecurrentStatePool eager_pool = graph_pool;
  eager_pool.values = graph_pool.values.clone();
  eager_pool.scales = graph_pool.scales.clone();
  const std::vector<int64_t> capture_slots = {2, -1, 0, 5};
  DecodeStepOptions options;
  options.l2norm_qk = true;
  options.host_slots = capture_slots;  // the capture-time copy: only the checks' verdict is baked in
  at::cuda::CUDAGraph graph;
  at::Tensor graph_out;
  {
    const c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
    RecurrentStatePool scratch = graph_pool;  // warm-up on copies: capture must not advance the states
    scratch.values = graph_pool.values.clone();
    scratch.scales = graph_pool.scales.clone();
    ASSERT_TRUE(RecurrentGatedDeltaStep(graph_in.q, graph_in.k, graph_in.v, graph_in.g, graph_in.beta, slots,
                                        scratch, options)
                    .ok());
    c10::cuda::getCurrentCUDAStream().synchronize();
    graph.capture_begin();
    absl::StatusOr<at::Tensor> o = RecurrentGatedDeltaStep(graph_in.q, graph_in.k, graph_in.v, graph_in.g,
                                                           graph_in.beta, slots, graph_pool, options);
    graph.capture_end();
    ASSERT_TRUE(o.ok()) << o.status();
    graph_out = *o;
  }
  const std::vector<std::vector<int64_t>> steps = {{2, -1, 0, 5}, {-1, 3, 0, -1}, {1, 4, -1, 2}};
  for (size_t t = 0; t < steps.size(); ++t) {
    const StepInputs fresh = MakeStep(4, hk, hv, d, at::kBFloat16, at::kCUDA);
    graph_in.packed.copy_(fresh.packed);
    graph_in.g.copy_(fresh.g);
    graph_in.beta.copy_(fresh.beta);
    slots.copy_(at::tensor(steps[t], at::kLong));
    graph.replay();
    DecodeStepOptions eager_options = options;
    eager_options.host_slots = steps[t];
    const at::Tensor eager_out = *RecurrentGatedDeltaStep(fresh.q, fresh.k, fresh.v, fresh.g, fresh.beta,
                                                          slots, eager_pool, eager_options);
    EXPECT_TRUE(at::equal(graph_out, eager_out)) << "step " << t;
    EXPECT_TRUE(at::equal(graph_pool.values, eager_pool.values)) << "step " << t;
    EXPECT_TRUE(at::equal(graph_pool.scales, eager_pool.scales)) << "step " << t;
  }
}
#endif  // DELTASERVE_WITH_CUDA

}  // namespace
}  // namespace deltaserve::kernels
