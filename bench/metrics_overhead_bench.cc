// Cost of per-layer metrics on decode throughput, two ways: (1) the same engine workload with
// --layer-metrics off, sampled and all, rounds interleaved so machine drift hits every mode alike, median
// decode tokens/s and ratio to off; (2) the direct cost of timing one step (every span's Begin/End,
// Collect, and the histogram observations) measured in a tight loop, as a share of a decode step's time,
// which resolves overheads far below (1)'s run-to-run noise. Never passes or fails.
//   bench_metrics_overhead CHECKPOINT_DIR [--rounds 7] [--seqs 8] [--prompt 16] [--decode 128] [--device cpu]
#include <ATen/ATen.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "runner/model_runner.h"
#include "metrics/prometheus_engine_metrics.h"

namespace {

using deltaserve::engine::LayerMetricsMode;

struct Mode {
  const char* name;
  LayerMetricsMode mode;
};

// Runs `seqs` requests of `prompt` tokens, `decode` new tokens each, all at once; returns generated
// tokens per second over the whole run.
double RunRound(deltaserve::engine::Engine& engine, int seqs, int prompt, int decode, int round) {
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < seqs; ++i) {
    deltaserve::engine::EngineRequest req;
    for (int t = 0; t < prompt; ++t) req.prompt.push_back((t * 31 + i * 7 + round) % 1000 + 1);
    req.params.temperature = 0;
    req.params.max_new_tokens = decode;
    req.params.ignore_eos = true;
    req.on_event = [&](const deltaserve::engine::TokenEvent& e) {
      if (!e.finished) return;
      std::lock_guard<std::mutex> lock(mu);
      ++done;
      cv.notify_all();
    };
    auto handle = engine.Submit(std::move(req));
    if (!handle.ok()) {
      std::fprintf(stderr, "submit: %s\n", handle.status().ToString().c_str());
      std::exit(1);
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == seqs; });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(seqs) * decode / s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR [--rounds N] [--seqs N] [--prompt N] [--decode N] [--device D]\n",
                 argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  int rounds = 7, seqs = 8, prompt = 16, decode = 128;
  std::string device = "cpu";
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (flag == "--seqs") seqs = std::atoi(argv[i + 1]);
    else if (flag == "--prompt") prompt = std::atoi(argv[i + 1]);
    else if (flag == "--decode") decode = std::atoi(argv[i + 1]);
    else if (flag == "--device") device = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  const Mode modes[] = {{"off", LayerMetricsMode::kOff}, {"sampled", LayerMetricsMode::kSampled},
                        {"all", LayerMetricsMode::kAll}};
  // One engine at a time, started fresh for every (round, mode): an idle engine's thread and its OpenMP
  // team would otherwise compete with the measured one on a small machine.
  auto measure = [&](const Mode& m, int round) -> double {
    deltaserve::models::qwen35::ModelOptions mo;
    mo.device = c10::Device(device);
    deltaserve::runner::RunnerOptions ro;
    ro.max_seqs = seqs;
    ro.max_model_len = prompt + decode + 1;
    auto model = deltaserve::runner::ModelRunner::Load(dir, mo, ro);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
      std::exit(1);
    }
    prometheus::Registry registry;
    deltaserve::metrics::PrometheusEngineMetrics sink(registry, "bench", (*model)->model().TimedSpans());
    deltaserve::engine::EngineOptions eo;
    eo.metrics = &sink;  // every mode pays for the request metrics; only layer timing differs
    eo.layer_metrics = m.mode;
    auto engine = deltaserve::engine::Engine::Start(*std::move(model), nullptr, eo);
    if (!engine.ok()) {
      std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
      std::exit(1);
    }
    RunRound(**engine, seqs, prompt, 16, -1);  // warm-up
    const double v = RunRound(**engine, seqs, prompt, decode, round);
    (*engine)->Shutdown(absl::ZeroDuration());
    return v;
  };
  std::vector<std::vector<double>> tps(3);
  for (int r = 0; r < rounds; ++r) {
    for (size_t m = 0; m < 3; ++m) tps[m].push_back(measure(modes[m], r));
    std::fprintf(stderr, "round %d/%d: off %.1f sampled %.1f all %.1f tokens/s\n", r + 1, rounds, tps[0].back(),
                 tps[1].back(), tps[2].back());
  }
  // (2) Direct cost of a timed step, CPU timer: what `all` adds to every step and `sampled` to a share.
  double direct_us = 0;
  {
    auto model = deltaserve::models::qwen35::Qwen35Model::Load(dir, deltaserve::models::qwen35::ModelOptions{});
    const std::vector<deltaserve::models::TimedSpan> spans = (*model)->TimedSpans();
    prometheus::Registry registry;
    deltaserve::metrics::PrometheusEngineMetrics sink(registry, "bench", spans);
    deltaserve::models::LayerTimer timer(c10::Device(c10::kCPU), spans.size());
    deltaserve::engine::StepReport report;
    constexpr int kIters = 20000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kIters; ++i) {
      for (size_t s = 0; s < spans.size(); ++s) {
        timer.Begin(s);
        timer.End(s);
      }
      report.layer_seconds = *timer.Collect();
      sink.OnStep(report);
    }
    direct_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / kIters;
  }
  const double base = Median(tps[0]);
  const double step_us = 1e6 * seqs / base;  // one decode step makes `seqs` tokens
  const double rate = 0.05;
  std::printf("\ndirect cost of timing one step (%s spans): %.2f us; a decode step takes %.0f us here\n",
              "all", direct_us, step_us);
  std::printf("=> all: %.4f%% of decode time; sampled (rate %.2f): %.5f%%\n", 100 * direct_us / step_us, rate,
              100 * rate * direct_us / step_us);
  std::printf("{\"bench\": \"metrics_overhead_direct\", \"timed_step_us\": %.3f, \"decode_step_us\": %.1f, "
              "\"all_pct\": %.5f, \"sampled_pct\": %.6f}\n",
              direct_us, step_us, 100 * direct_us / step_us, 100 * rate * direct_us / step_us);
  std::printf("\n%-8s %14s %8s %9s\n", "mode", "decode tok/s", "vs off", "overhead");
  for (size_t m = 0; m < 3; ++m) {
    const double v = Median(tps[m]);
    std::printf("%-8s %14.1f %8.4f %8.2f%%\n", modes[m].name, v, v / base, (1 - v / base) * 100);
  }
  for (size_t m = 0; m < 3; ++m) {
    const double v = Median(tps[m]);
    std::printf("{\"bench\": \"metrics_overhead\", \"mode\": \"%s\", \"device\": \"%s\", \"seqs\": %d, \"prompt\": %d, "
                "\"decode\": %d, \"rounds\": %d, \"decode_tok_s\": %.2f, \"ratio_vs_off\": %.4f}\n",
                modes[m].name, device.c_str(), seqs, prompt, decode, rounds, v, v / base);
  }
  return 0;
}
