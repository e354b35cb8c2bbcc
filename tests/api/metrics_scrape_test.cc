// The Prometheus metrics after a known workload, read from the text a scrape returns: every layer of the
// model appears exactly once per phase with a count equal to the steps of that phase (--layer-metrics
// all), a sampled run times the expected steps, off times none, and the request counters and token
// latency counts match the requests sent.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "api/local_server.h"
#include "metrics/prometheus_engine_metrics.h"
#include "model/golden.h"

namespace deltaserve::api {
namespace {

using testing::GreedyRequest;
using testing::LocalServer;
using testing::RunStream;

// name{labels} -> value, from Prometheus' text format.
std::map<std::string, double> ParseScrape(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

struct Workload {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> outputs;
  int64_t prompt_tokens = 0, output_tokens = 0;
};

Workload MakeWorkload(const deltaserve::testing::Golden& golden) {
  Workload w;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = golden.prompts[i % golden.prompts.size()].ids;
    // Some prompts longer than one 64-token chunk, so prefill takes several steps.
    if (i % 2 == 0)
      for (int k = 0; k < 70 + i; ++k) p.push_back((k * 7 + i) % 100);
    w.prompts.push_back(p);
    w.outputs.push_back(3 + i);
    w.prompt_tokens += static_cast<int64_t>(p.size());
    w.output_tokens += 3 + i;
  }
  return w;
}

class MetricsScrapeTest : public ::testing::Test {
 protected:
  void SetUp() override { golden_ = std::make_unique<deltaserve::testing::Golden>(deltaserve::testing::ReadGolden("flat_untied")); }

  // Runs the workload (3 streams at a time) on a fresh server with `mode`; returns the parsed scrape and
  // the model's timed spans.
  std::map<std::string, double> RunAndScrape(engine::LayerMetricsMode mode, double rate,
                                             std::vector<models::TimedSpan>* spans) {
    prometheus::Registry registry;
    std::unique_ptr<metrics::PrometheusEngineMetrics> sink;
    engine::EngineOptions options;
    options.layer_metrics = mode;
    options.layer_metrics_sample_rate = rate;
    LocalServer server(golden_->dir, 3, 512, options,
                       [&](const models::qwen35::Qwen35Model& model, engine::EngineOptions& o) {
                         *spans = model.TimedSpans();
                         sink = std::make_unique<metrics::PrometheusEngineMetrics>(registry, "golden", *spans);
                         o.metrics = sink.get();
                       });
    EXPECT_TRUE(server.ok());
    const Workload w = MakeWorkload(*golden_);
    std::vector<std::future<testing::StreamResult>> futures;
    for (size_t i = 0; i < w.prompts.size(); ++i) {
      futures.push_back(std::async(std::launch::async, [&, i] {
        return RunStream(server.channel(), GreedyRequest(w.prompts[i], w.outputs[i]), std::chrono::seconds(120));
      }));
    }
    for (auto& f : futures) {
      const testing::StreamResult r = f.get();
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    }
    // The last step's report follows the last stream's end; wait for the engine to go idle.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    std::map<std::string, double> scrape;
    do {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      scrape = ParseScrape(prometheus::TextSerializer().Serialize(registry.Collect()));
    } while (scrape["deltaserve_num_requests_running{model=\"golden\"}"] != 0 &&
             std::chrono::steady_clock::now() < until);
    server.engine().Shutdown(absl::ZeroDuration());
    return ParseScrape(prometheus::TextSerializer().Serialize(registry.Collect()));
  }

  std::unique_ptr<deltaserve::testing::Golden> golden_;
};

std::string LayerCount(const models::TimedSpan& s, const char* phase) {
  return "deltaserve_layer_duration_seconds_count{kind=\"" + s.kind + "\",layer=\"" + s.layer +
         "\",model=\"golden\",phase=\"" + phase + "\"}";
}

TEST_F(MetricsScrapeTest, AllModeTimesEveryLayerOncePerStep) {
  std::vector<models::TimedSpan> spans;
  std::map<std::string, double> m = RunAndScrape(engine::LayerMetricsMode::kAll, 0.05, &spans);
  // embedding, mixer + MLP per layer, lm_head
  ASSERT_EQ(spans.size(), 2 + 2 * static_cast<size_t>(6));
  const double prefill_steps = m["deltaserve_engine_steps_total{model=\"golden\",phase=\"prefill\"}"];
  const double decode_steps = m["deltaserve_engine_steps_total{model=\"golden\",phase=\"decode\"}"];
  EXPECT_GE(prefill_steps, 2);  // 70+ token prompts need two chunks
  EXPECT_GT(decode_steps, 0);
  EXPECT_EQ(m["deltaserve_layer_timed_steps_total{model=\"golden\",phase=\"prefill\"}"], prefill_steps);
  EXPECT_EQ(m["deltaserve_layer_timed_steps_total{model=\"golden\",phase=\"decode\"}"], decode_steps);
  for (const models::TimedSpan& s : spans) {
    EXPECT_EQ(m[LayerCount(s, "prefill")], prefill_steps) << s.layer << " " << s.kind;
    EXPECT_EQ(m[LayerCount(s, "decode")], decode_steps) << s.layer << " " << s.kind;
    const std::string sum = std::regex_replace(LayerCount(s, "decode"), std::regex("_count\\{"), "_sum{");
    EXPECT_GT(m[sum], 0) << sum;
  }
  // Exactly one series per (layer, kind, phase): no label combination beyond the model's spans.
  std::set<std::string> series;
  for (const auto& [key, value] : m)
    if (key.rfind("deltaserve_layer_duration_seconds_count{", 0) == 0) series.insert(key);
  EXPECT_EQ(series.size(), 2 * spans.size());

  const Workload w = MakeWorkload(*golden_);
  const double n = static_cast<double>(w.prompts.size());
  EXPECT_EQ(m["deltaserve_request_finished_total{finished_reason=\"length\",model=\"golden\"}"], n);
  EXPECT_EQ(m["deltaserve_request_finished_total{finished_reason=\"stop\",model=\"golden\"}"], 0);
  EXPECT_EQ(m["deltaserve_prompt_tokens_total{model=\"golden\"}"], static_cast<double>(w.prompt_tokens));
  EXPECT_EQ(m["deltaserve_generation_tokens_total{model=\"golden\"}"], static_cast<double>(w.output_tokens));
  EXPECT_EQ(m["deltaserve_time_to_first_token_seconds_count{model=\"golden\"}"], n);
  EXPECT_EQ(m["deltaserve_inter_token_latency_seconds_count{model=\"golden\"}"],
            static_cast<double>(w.output_tokens) - n);
  EXPECT_EQ(m["deltaserve_e2e_request_latency_seconds_count{model=\"golden\"}"], n);
  EXPECT_EQ(m["deltaserve_request_queue_time_seconds_count{model=\"golden\"}"], n);
  EXPECT_EQ(m["deltaserve_request_generation_tokens_sum{model=\"golden\"}"], static_cast<double>(w.output_tokens));
  EXPECT_EQ(m["deltaserve_batch_size_count{model=\"golden\"}"], prefill_steps + decode_steps);
  EXPECT_EQ(m["deltaserve_iteration_tokens_sum{model=\"golden\"}"],
            static_cast<double>(w.prompt_tokens + w.output_tokens - static_cast<int64_t>(n)));
  EXPECT_EQ(m["deltaserve_num_requests_running{model=\"golden\"}"], 0);
  EXPECT_EQ(m["deltaserve_num_requests_waiting{model=\"golden\"}"], 0);
  EXPECT_EQ(m["deltaserve_state_pool_usage_perc{model=\"golden\"}"], 0);
}

TEST_F(MetricsScrapeTest, SampledModeTimesOneStepInPeriodPerPhase) {
  std::vector<models::TimedSpan> spans;
  std::map<std::string, double> m = RunAndScrape(engine::LayerMetricsMode::kSampled, 0.25, &spans);
  for (const char* phase : {"prefill", "decode"}) {
    const double steps = m[std::string("deltaserve_engine_steps_total{model=\"golden\",phase=\"") + phase + "\"}"];
    const double expected = std::ceil(steps / 4);  // steps 0, 4, 8, ... of each phase
    EXPECT_EQ(m[std::string("deltaserve_layer_timed_steps_total{model=\"golden\",phase=\"") + phase + "\"}"], expected);
    for (const models::TimedSpan& s : spans) EXPECT_EQ(m[LayerCount(s, phase)], expected) << phase << " " << s.kind;
  }
}

TEST_F(MetricsScrapeTest, OffModeTimesNothingButCountsRequests) {
  std::vector<models::TimedSpan> spans;
  std::map<std::string, double> m = RunAndScrape(engine::LayerMetricsMode::kOff, 0.05, &spans);
  EXPECT_GT(m["deltaserve_engine_steps_total{model=\"golden\",phase=\"decode\"}"], 0);
  EXPECT_EQ(m["deltaserve_layer_timed_steps_total{model=\"golden\",phase=\"decode\"}"], 0);
  for (const models::TimedSpan& s : spans) EXPECT_EQ(m[LayerCount(s, "decode")], 0);
  EXPECT_EQ(m["deltaserve_request_finished_total{finished_reason=\"length\",model=\"golden\"}"], 6);
}

}  // namespace
}  // namespace deltaserve::api
