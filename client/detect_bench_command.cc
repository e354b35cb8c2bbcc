// detect-bench: a closed-loop load generator for Vision.Detect. C client threads each keep one request in
// flight (the same encoded image every time) until N measured requests are done, after one untimed
// request per thread; prints images/s and the end-to-end and server-side latency percentiles.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "client/commands.h"
#include "client/flags.h"
#include "client/latency_stats.h"
#include "deltaserve/v1/vision.grpc.pb.h"

namespace deltaserve::client {
namespace {

struct Sample {
  double e2e = 0, server = 0, inference = 0;
  int batch = 0;
};

void PrintSummary(const char* name, const LatencySummary& s) {
  std::printf("%-28s %9.2f %9.2f %9.2f %9.2f\n", name, s.mean * 1e3, s.p50 * 1e3, s.p90 * 1e3, s.p99 * 1e3);
}

std::string SummaryJson(const LatencySummary& s) {
  char buf[200];
  std::snprintf(buf, sizeof(buf), "{\"mean_ms\": %.4f, \"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f}",
                s.mean * 1e3, s.p50 * 1e3, s.p90 * 1e3, s.p99 * 1e3);
  return buf;
}

}  // namespace

int RunDetectBench(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "deltaserve-cli detect-bench: give exactly one IMAGE (PNG or JPEG)\n");
    return 2;
  }
  std::ifstream in(args[0], std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in || ss.str().empty()) {
    std::fprintf(stderr, "deltaserve-cli detect-bench: cannot read %s\n", args[0].c_str());
    return 2;
  }
  const int num_requests = absl::GetFlag(FLAGS_num_requests), concurrency = absl::GetFlag(FLAGS_concurrency);
  if (num_requests < 1 || concurrency < 1 || concurrency > 4096) {
    std::fprintf(stderr, "deltaserve-cli detect-bench: --num-requests must be >= 1 and --concurrency in [1, 4096]\n");
    return 2;
  }
  v1::DetectRequest req;
  req.set_model(absl::GetFlag(FLAGS_model));
  req.set_encoded(ss.str());
  if (absl::GetFlag(FLAGS_score_threshold) >= 0) req.set_score_threshold(absl::GetFlag(FLAGS_score_threshold));
  if (absl::GetFlag(FLAGS_max_detections) > 0) req.set_max_detections(absl::GetFlag(FLAGS_max_detections));
  const double timeout = absl::GetFlag(FLAGS_timeout) > 0 ? absl::GetFlag(FLAGS_timeout) : 60;
  // One channel for all threads, as a real client would share one; gRPC multiplexes the calls.
  auto stub = v1::Vision::NewStub(ServerChannel());

  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<Sample> samples;
  std::vector<std::string> errors;
  auto call = [&](Sample* out) -> grpc::Status {
    grpc::ClientContext ctx;
    SetTimeout(ctx, timeout);
    v1::DetectResponse resp;
    const auto t0 = std::chrono::steady_clock::now();
    const grpc::Status s = stub->Detect(&ctx, req, &resp);
    out->e2e = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out->server = resp.timing().total_seconds();
    out->inference = resp.timing().inference_seconds();
    out->batch = resp.timing().batch_size();
    return s;
  };
  // Warm-up: one request per thread at once, so the first timed ones do not pay for lazy start-up.
  {
    std::vector<std::thread> warm;
    for (int t = 0; t < concurrency; ++t)
      warm.emplace_back([&] {
        Sample ignored;
        const grpc::Status s = call(&ignored);
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          errors.push_back("warm-up: " + s.error_message());
        }
      });
    for (std::thread& t : warm) t.join();
  }
  if (!errors.empty()) {
    std::fprintf(stderr, "deltaserve-cli detect-bench: %s\n", errors.front().c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t)
    threads.emplace_back([&] {
      while (next.fetch_add(1) < num_requests) {
        Sample sample;
        const grpc::Status s = call(&sample);
        std::lock_guard<std::mutex> lock(mu);
        if (s.ok()) {
          samples.push_back(sample);
        } else {
          errors.push_back(s.error_message());
        }
      }
    });
  for (std::thread& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::vector<double> e2e, server, inference, batch;
  for (const Sample& s : samples) {
    e2e.push_back(s.e2e);
    server.push_back(s.server);
    inference.push_back(s.inference);
    batch.push_back(s.batch);
  }
  const LatencySummary e = Summarize(e2e), sv = Summarize(server), inf = Summarize(inference);
  const double images_per_s = static_cast<double>(samples.size()) / wall;
  const double mean_batch = batch.empty() ? 0 : Summarize(batch).mean;
  std::string json = "{\"concurrency\": " + std::to_string(concurrency) +
                     ", \"num_requests\": " + std::to_string(num_requests) +
                     ", \"completed\": " + std::to_string(samples.size()) +
                     ", \"failed\": " + std::to_string(errors.size());
  char buf[160];
  std::snprintf(buf, sizeof(buf), ", \"wall_s\": %.4f, \"images_per_s\": %.3f, \"mean_batch\": %.3f", wall,
                images_per_s, mean_batch);
  json += buf;
  json += ", \"e2e\": " + SummaryJson(e) + ", \"server\": " + SummaryJson(sv) + ", \"inference\": " +
          SummaryJson(inf) + "}";
  const std::string result_json = absl::GetFlag(FLAGS_result_json);
  if (!result_json.empty()) {
    std::ofstream out(result_json);
    if (!(out << json << "\n")) {
      std::fprintf(stderr, "deltaserve-cli detect-bench: cannot write %s\n", result_json.c_str());
      return 1;
    }
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", json.c_str());
  } else {
    std::printf("%d requests at concurrency %d in %.2f s: %.1f images/s, mean batch %.2f, %zu failed\n",
                num_requests, concurrency, wall, images_per_s, mean_batch, errors.size());
    std::printf("%-28s %9s %9s %9s %9s\n", "latency (ms)", "mean", "p50", "p90", "p99");
    PrintSummary("end to end (client)", e);
    PrintSummary("on the server", sv);
    PrintSummary("forward pass", inf);
  }
  if (!errors.empty()) std::fprintf(stderr, "deltaserve-cli detect-bench: first error: %s\n", errors.front().c_str());
  return errors.empty() ? 0 : 1;
}

}  // namespace deltaserve::client
