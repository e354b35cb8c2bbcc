// Times deltaserve's Qwen3.5 model the way tools/bench_transformers_qwen35.py times transformers:
// prefill of one prompt of N random tokens, then M greedy decode steps; one JSON line with tokens/s and
// the process's peak RSS. scripts/bench_model.sh runs both on the same checkpoints and prints ratios.
//   bench_model MODEL_DIR [--prompt-len N] [--decode M] [--threads T] [--dtype float32|bfloat16]
//               [--inverse-method NAME] [--state-dtype fp32|bf16|int8|...] [--batch B] [--device cpu|cuda]
//               [--cuda-graphs 0|1] [--profile-steps K] [--profile-trace FILE] [--prefill-reps R]
//               [--profile-prefill 0|1] [--small-batch-linear 0|1] [--weight-dtype same|int8|int4]
// --small-batch-linear 0 sends every projection to at::linear (cuBLAS on CUDA): the baseline for the
// small-batch projection kernel, measured in the same run.
// --prefill-reps R times the prompt's prefill R times (slots reset in between): the first run pays
// one-off costs (kernel selection, allocator growth); prefill_tok_s is the median, prefill_first_tok_s
// the first. --profile-prefill 1 profiles one more prefill and prints its summary as model_prefill_profile.
// --profile-steps K profiles K more decode steps after the timed ones with LibTorch's Kineto profiler
// (CUPTI on CUDA): a second JSON line gives, over the profiled window, the GPU events, their summed time,
// the time the GPU was busy, the window's span on the GPU and the gaps in it, the CUDA runtime calls and
// ATen operators of the host, and the ten kernels taking the most time. Totals, not per step: on the H200
// the trace kept only about 2 of 10 steps, so divide by the steps the trace holds (count a kernel that
// runs a known number of times per step). --profile-trace also writes the Chrome trace.
// --batch B runs B sequences together (one packed prefill, then B tokens per decode step): the engine's
// batched throughput; tokens/s count every sequence's tokens.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>

#include <map>
#include <torch/csrc/autograd/profiler_kineto.h>

#include "deltaserve/kernels/linear.h"
#include "kernel_profile.h"
#include "models/qwen35/model.h"
#include "runner/model_runner.h"

namespace q = deltaserve::models::qwen35;

namespace {

// One JSON line summarising a profiled window of decode steps (kernel_profile.h's fields).
void PrintProfile(const char* label, const torch::autograd::profiler::ProfilerResult& result, int batch,
                  bool cuda_graphs, int steps_requested) {
  std::printf("{\"bench\": \"%s\", \"batch\": %d, \"cuda_graphs\": %s, \"steps_requested\": %d, %s}\n", label,
              batch, cuda_graphs ? "true" : "false", steps_requested,
              deltaserve::bench::ProfileSummaryFields(result).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr,
                 "usage: bench_model MODEL_DIR [flags]\n"
                 "  --prompt-len N          prompt tokens per row (256)\n"
                 "  --decode M              decode steps timed after the prefill (32)\n"
                 "  --batch B               rows decoded together (1)\n"
                 "  --device cpu|cuda       (cpu)\n"
                 "  --threads T             CPU threads (2)\n"
                 "  --dtype float32|bfloat16  weight and activation dtype (float32)\n"
                 "  --inverse-method NAME   chunk inverse of the Gated DeltaNet prefill\n"
                 "  --state-dtype NAME      recurrent state storage: fp32, bf16, int8, fp8 (fp32)\n"
                 "  --weight-dtype same|int8|int4  projection weights: as --dtype, or INT8 / 4-bit (CPU) (same)\n"
                 "  --cuda-graphs 0|1       replay decode steps as CUDA graphs (1)\n"
                 "  --prefill-reps N        time the prefill N times, report the median (1)\n"
                 "  --small-batch-linear 0|1  the GEMV kernel for 1-2 rows, or cuBLAS only (1)\n"
                 "  --profile-steps N       profile N decode steps and print the top kernels (0)\n"
                 "  --profile-prefill 0|1   profile the prefill instead (0)\n"
                 "  --profile-trace FILE    write a Chrome trace of the profiled steps\n");
    return argc < 2 ? 2 : 0;
  }
  const std::string dir = argv[1];
  int prompt_len = 256, decode = 32, threads = 2, batch = 1;
  bool cuda_graphs = true;
  int profile_steps = 0, prefill_reps = 1;
  bool profile_prefill = false;
  bool small_batch_linear = true;
  std::string profile_trace;
  q::ModelOptions o;
  std::string state = "fp32", weight_dtype = "same";
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--prompt-len")
      prompt_len = std::atoi(v.c_str());
    else if (f == "--decode")
      decode = std::atoi(v.c_str());
    else if (f == "--threads")
      threads = std::atoi(v.c_str());
    else if (f == "--dtype")
      o.dtype = v == "bfloat16" ? at::kBFloat16 : at::kFloat;
    else if (f == "--inverse-method")
      o.inverse_method = v;
    else if (f == "--state-dtype")
      state = v;
    else if (f == "--weight-dtype")
      weight_dtype = v;
    else if (f == "--batch")
      batch = std::max(1, std::atoi(v.c_str()));
    else if (f == "--device")
      o.device = c10::Device(v);
    else if (f == "--cuda-graphs")
      cuda_graphs = v != "0";
    else if (f == "--profile-steps")
      profile_steps = std::max(0, std::atoi(v.c_str()));
    else if (f == "--profile-trace")
      profile_trace = v;
    else if (f == "--prefill-reps")
      prefill_reps = std::max(1, std::atoi(v.c_str()));
    else if (f == "--profile-prefill")
      profile_prefill = v != "0";
    else if (f == "--small-batch-linear")
      small_batch_linear = v != "0";
    else {
      std::fprintf(stderr, "bench_model: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  absl::StatusOr<deltaserve::kernels::StateDtype> sd = deltaserve::kernels::ParseStateDtype(state);
  if (!sd.ok()) {
    std::fprintf(stderr, "bench_model: %s\n", std::string(sd.status().message()).c_str());
    return 2;
  }
  o.state_dtype = *sd;
  absl::StatusOr<deltaserve::kernels::WeightDtype> wd = deltaserve::kernels::ParseWeightDtype(weight_dtype);
  if (!wd.ok()) {
    std::fprintf(stderr, "bench_model: --weight-dtype: %s\n", std::string(wd.status().message()).c_str());
    return 2;
  }
  o.weight_dtype = *wd;
  deltaserve::kernels::SetSmallBatchLinearEnabled(small_batch_linear);
  deltaserve::runner::RunnerOptions ro;
  ro.max_seqs = batch;
  ro.max_model_len = prompt_len + decode + 1;
  ro.cuda_graphs = cuda_graphs;
  at::set_num_threads(threads);
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  auto t0 = now();
  absl::StatusOr<std::unique_ptr<deltaserve::runner::ModelRunner>> model = deltaserve::runner::ModelRunner::Load(dir, o, ro);
  if (!model.ok()) {
    std::fprintf(stderr, "bench_model: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const double load_s = secs(t0, now());
  std::mt19937 rng(0);
  std::vector<std::vector<int32_t>> prompts(batch, std::vector<int32_t>(prompt_len));
  for (auto& p : prompts)
    for (int32_t& id : p) id = static_cast<int32_t>(rng() % (*model)->model().config().vocab_size);
  std::vector<int64_t> slots(batch);
  for (int b = 0; b < batch; ++b) slots[b] = b;
  at::InferenceMode guard;
  // Weights are mapped lazily: touch them all once (a one-token forward) so that the timed prefill measures
  // compute, not page faults. transformers' load copies them, which its load_s includes.
  t0 = now();
  if (!(*model)->Forward({{prompts[0][0]}}, {0}).ok() || !(*model)->ResetSlot(0).ok()) return 1;
  const double warm_s = secs(t0, now());
  // A value read back waits for the device, so a timed forward includes its kernels.
  auto drain = [](const absl::StatusOr<at::Tensor>& l) {
    if (l.ok()) (void)l->sum().item<float>();
  };
  t0 = now();
  absl::StatusOr<at::Tensor> logits = (*model)->Forward(prompts, slots);
  drain(logits);
  const double prefill_first_s = secs(t0, now());
  // Greedy decode: each sequence's argmax becomes its next input.
  auto decode_steps = [&](int n) {
    for (int i = 0; i < n && logits.ok(); ++i) {
      // One copy back per step (a runner does the same), not one .item() per row.
      const at::Tensor next = logits->argmax(1).to(at::kInt).cpu();
      const int32_t* ids = next.data_ptr<int32_t>();
      std::vector<std::vector<int32_t>> step(batch);
      for (int b = 0; b < batch; ++b) step[b] = {ids[b]};
      logits = (*model)->Forward(step, slots);
    }
  };
  t0 = now();
  decode_steps(decode);
  const double decode_s = secs(t0, now());
  if (!logits.ok()) {
    std::fprintf(stderr, "bench_model: %s\n", std::string(logits.status().message()).c_str());
    return 1;
  }
  if (profile_steps > 0) {
    // Nothing of the timed steps spills into the profile.
    drain(logits);
    std::unique_ptr<torch::autograd::profiler::ProfilerResult> result =
        deltaserve::bench::ProfileWindow(o.device.is_cuda(), [&] {
          decode_steps(profile_steps);
          drain(logits);
        });
    if (!profile_trace.empty()) result->save(profile_trace);
    PrintProfile("model_profile", *result, batch, cuda_graphs, profile_steps);
  }
  // The same prompts again from empty slots: the prefill without first-use costs.
  auto prefill_again = [&]() -> double {
    for (int64_t s : slots) {
      if (!(*model)->ResetSlot(s).ok()) return -1;
    }
    const auto start = now();
    absl::StatusOr<at::Tensor> l = (*model)->Forward(prompts, slots);
    drain(l);
    return l.ok() ? secs(start, now()) : -1;
  };
  std::vector<double> prefill_times = {prefill_first_s};
  for (int r = 1; r < prefill_reps; ++r) prefill_times.push_back(prefill_again());
  std::sort(prefill_times.begin(), prefill_times.end());
  const double prefill_s = prefill_times[prefill_times.size() / 2];
  if (profile_prefill) {
    std::unique_ptr<torch::autograd::profiler::ProfilerResult> result =
        deltaserve::bench::ProfileWindow(o.device.is_cuda(), [&] { (void)prefill_again(); });
    PrintProfile("model_prefill_profile", *result, batch, cuda_graphs, 1);
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf(
      "{\"bench\": \"model\", \"engine\": \"deltaserve\", \"batch\": %d, \"prompt_len\": %d, \"decode_tokens\": %d, "
      "\"threads\": %d, \"dtype\": \"%s\", \"weight_dtype\": \"%s\", \"inverse\": \"%s\", \"state\": \"%s\", "
      "\"load_s\": %.3f, "
      "\"first_touch_s\": %.3f, "
      "\"prefill_tok_s\": %.2f, \"prefill_first_tok_s\": %.2f, \"prefill_reps\": %d, \"decode_tok_s\": %.3f, "
      "\"small_batch_linear\": %s, \"peak_rss_mb\": %.1f}\n",
      batch, prompt_len, decode, threads, o.dtype == at::kBFloat16 ? "bfloat16" : "float32",
      deltaserve::kernels::WeightDtypeName(o.weight_dtype), o.inverse_method.c_str(), state.c_str(), load_s, warm_s, batch * prompt_len / prefill_s,
      batch * prompt_len / prefill_first_s, prefill_reps, batch * decode / decode_s,
      small_batch_linear ? "true" : "false", ru.ru_maxrss / 1024.0);
  return 0;
}
