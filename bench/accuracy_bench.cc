// The accuracy testbed (docs/accuracy.md): the shipped text model's held-out perplexity and top-1
// agreement with the exact configuration, for every chunk-inverse method (prefill path) and every
// recurrent-state dtype (decode path), and the INT8 weights on both paths. The held-out text is models/qwen35-small/heldout_tokens.u16: 32
// windows of 513 token ids from the training corpus' test split (documents never trained on).
//   bench_accuracy MODEL_DIR [--windows 32] [--threads N] [--weights-only]   (--weights-only: the exact
//   references and the INT8 weights, none of the inverse or state variants)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "deltaserve/kernels/recurrent_state.h"
#include "models/qwen35/model.h"
#include "runner/model_runner.h"

namespace q = deltaserve::models::qwen35;

namespace {

constexpr int64_t kWindow = 513;  // 512 predictions per window

struct Result {
  double nll = 0;             // mean negative log-likelihood of the next token
  std::vector<int64_t> top1;  // argmax at every position, for agreement
};

std::unique_ptr<deltaserve::runner::ModelRunner> Load(const std::string& dir, const std::string& inverse, const std::string& state,
                                     int64_t windows, const std::string& weights = "same") {
  q::ModelOptions o;
  o.inverse_method = inverse;
  o.weight_dtype = *deltaserve::kernels::ParseWeightDtype(weights);
  o.state_dtype = *deltaserve::kernels::ParseStateDtype(state);
  deltaserve::runner::RunnerOptions ro;
  ro.max_seqs = windows;
  ro.max_model_len = kWindow + 1;
  auto m = deltaserve::runner::ModelRunner::Load(dir, o, ro);
  if (!m.ok()) {
    std::fprintf(stderr, "%s\n", std::string(m.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(m);
}

void Accumulate(const at::Tensor& logits, const std::vector<int32_t>& next, Result& r, double& nll_sum) {
  const at::Tensor logp = at::log_softmax(logits.to(at::kDouble), -1);
  const at::Tensor idx = at::tensor(std::vector<int64_t>(next.begin(), next.end()), at::kLong).unsqueeze(1);
  nll_sum -= logp.gather(1, idx).sum().item<double>();
  const at::Tensor am = logits.argmax(-1).contiguous();
  r.top1.insert(r.top1.end(), am.data_ptr<int64_t>(), am.data_ptr<int64_t>() + am.numel());
}

// Prefill path: each window in one chunked forward pass, logits at every position.
Result Prefill(deltaserve::runner::ModelRunner& m, const std::vector<std::vector<int32_t>>& windows) {
  Result r;
  double nll = 0;
  int64_t count = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    std::vector<int32_t> in(windows[w].begin(), windows[w].end() - 1), next(windows[w].begin() + 1, windows[w].end());
    auto logits = m.Forward({in}, {static_cast<int64_t>(w)}, /*all_positions=*/true);
    if (!logits.ok()) std::exit(1);
    Accumulate(*logits, next, r, nll);
    count += static_cast<int64_t>(next.size());
  }
  r.nll = nll / static_cast<double>(count);
  return r;
}

// Decode path: every window fed one token per step, so the recurrent state (and its quantisation) carries the
// whole window; windows batched 16 at a time, a CPU decode step's size (up to 16 rows take the decode
// projections, kernels' CpuGemv, as serving does).
constexpr size_t kDecodeBatch = 16;
Result Decode(deltaserve::runner::ModelRunner& m, const std::vector<std::vector<int32_t>>& windows) {
  const size_t n = windows.size();
  std::vector<std::vector<at::Tensor>> per_window(n);
  for (size_t w0 = 0; w0 < n; w0 += kDecodeBatch) {
    const size_t w1 = std::min(n, w0 + kDecodeBatch);
    std::vector<int64_t> slots;
    for (size_t w = w0; w < w1; ++w) slots.push_back(static_cast<int64_t>(w));
    for (int64_t t = 0; t + 1 < kWindow; ++t) {
      std::vector<std::vector<int32_t>> step;
      for (size_t w = w0; w < w1; ++w) step.push_back({windows[w][static_cast<size_t>(t)]});
      auto logits = m.Forward(step, slots);
      if (!logits.ok()) {
        std::fprintf(stderr, "bench_accuracy: decode: %s\n", std::string(logits.status().message()).c_str());
        std::exit(1);
      }
      for (size_t w = w0; w < w1; ++w) per_window[w].push_back((*logits)[static_cast<int64_t>(w - w0)]);
    }
  }
  Result r;
  double nll = 0;
  for (size_t w = 0; w < n; ++w) {
    std::vector<int32_t> next(windows[w].begin() + 1, windows[w].end());
    Accumulate(at::stack(per_window[w]), next, r, nll);
  }
  r.nll = nll / static_cast<double>(n * (kWindow - 1));
  return r;
}

double Agreement(const Result& a, const Result& ref) {
  int64_t same = 0;
  for (size_t i = 0; i < ref.top1.size(); ++i) same += a.top1[i] == ref.top1[i];
  return static_cast<double>(same) / static_cast<double>(ref.top1.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_accuracy MODEL_DIR [--windows 32] [--threads N] [--weights-only]\n");
    return 2;
  }
  const std::string dir = argv[1];
  int64_t count = 32;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--windows") count = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--threads") at::set_num_threads(std::atoi(argv[i + 1]));
  }
  bool weights_only = false;
  for (int i = 2; i < argc; ++i) weights_only = weights_only || std::string(argv[i]) == "--weights-only";
  std::ifstream in(dir + "/heldout_tokens.u16", std::ios::binary);
  std::vector<uint16_t> ids(static_cast<size_t>(count * kWindow));
  if (!in.read(reinterpret_cast<char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 2))) {
    std::fprintf(stderr, "cannot read %d windows from %s/heldout_tokens.u16\n", static_cast<int>(count), dir.c_str());
    return 1;
  }
  std::vector<std::vector<int32_t>> windows(static_cast<size_t>(count));
  for (int64_t w = 0; w < count; ++w)
    windows[static_cast<size_t>(w)].assign(ids.begin() + w * kWindow, ids.begin() + (w + 1) * kWindow);
  at::InferenceMode guard;

  std::printf("| path | variant | held-out ppl | vs exact | top-1 agreement |\n|---|---|---:|---:|---:|\n");
  auto row = [](const char* path, const std::string& name, const Result& r, const Result& ref) {
    std::printf("| %s | %s | %.4f | %+.4f%% | %.4f |\n", path, name.c_str(), std::exp(r.nll),
                (std::exp(r.nll - ref.nll) - 1) * 100, Agreement(r, ref));
    std::fflush(stdout);
    std::fprintf(stderr, "{\"bench\": \"accuracy\", \"path\": \"%s\", \"variant\": \"%s\", \"ppl\": %.6f, "
                 "\"ppl_change_pct\": %.6f, \"top1_agreement\": %.6f}\n",
                 path, name.c_str(), std::exp(r.nll), (std::exp(r.nll - ref.nll) - 1) * 100, Agreement(r, ref));
  };
  // Prefill: the chunk inverse decides the prefill; the exact reference is solve-triangular (trsm).
  auto exact = Load(dir, "solve-triangular", "fp32", count);
  const Result ref = Prefill(*exact, windows);
  row("prefill", "solve-triangular (exact)", ref, ref);
  for (const char* method : {"forward", "neumann", "neumann-fast", "product", "neumann-int16", "neumann-int8"}) {
    if (weights_only) break;
    auto m = Load(dir, method, "fp32", count);
    row("prefill", method, Prefill(*m, windows), ref);
  }
  // Decode: the recurrent state's dtype decides the decode; the reference is fp32.
  auto fp32 = Load(dir, "solve-triangular", "fp32", count);
  const Result dref = Decode(*fp32, windows);
  row("decode", "state fp32 (exact)", dref, dref);
  for (const char* state : {"bf16", "int8", "int8-sr", "int8-coarse", "fp8"}) {
    if (weights_only) break;
    auto m = Load(dir, "solve-triangular", state, count);
    row("decode", std::string("state ") + state, Decode(*m, windows), dref);
  }
  // Weights: INT8 projections (group scales, quantized at load) against the float32 weights, on both paths.
  // (A fresh runner for each path: the prefill leaves its windows in the slots.)
  for (const char* weights : {"int8", "int4"}) {
    const std::string name = std::string("weights ") + weights;
    row("prefill", name, Prefill(*Load(dir, "solve-triangular", "fp32", count, weights), windows), ref);
    row("decode", name, Decode(*Load(dir, "solve-triangular", "fp32", count, weights), windows), dref);
  }
  return 0;
}
