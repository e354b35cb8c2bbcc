// deltaserve-cli's measuring parts: percentiles equal numpy's, the report's throughputs and TPOT follow
// from the records, and the load generator against a real in-process server, over gRPC and over the
// OpenAI HTTP API, completes every request with exactly the planned token counts.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/local_server.h"
#include "client/bench_report.h"
#include "client/grpc_bench_target.h"
#include "client/latency_stats.h"
#include "client/load_generator.h"
#include "client/openai_bench_target.h"
#include "model/golden.h"

namespace deltaserve::client {
namespace {

TEST(LatencyStats, PercentilesMatchNumpyLinearInterpolation) {
  // numpy.percentile([3, 1, 4, 1, 5, 9, 2, 6], [0, 50, 90, 99, 100]) = [1, 3.5, 6.9, 8.79, 9]
  const std::vector<double> x = {3, 1, 4, 1, 5, 9, 2, 6};
  EXPECT_DOUBLE_EQ(Percentile(x, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(x, 50), 3.5);
  EXPECT_NEAR(Percentile(x, 90), 6.9, 1e-12);
  EXPECT_NEAR(Percentile(x, 99), 8.79, 1e-12);
  EXPECT_DOUBLE_EQ(Percentile(x, 100), 9);
  const LatencySummary s = Summarize(x);
  EXPECT_DOUBLE_EQ(s.mean, 3.875);
  EXPECT_DOUBLE_EQ(s.max, 9);
  EXPECT_EQ(s.count, 8);
  EXPECT_EQ(Summarize({}).count, 0);
  EXPECT_EQ(Percentile({}, 50), 0);
  EXPECT_EQ(Percentile({7}, 99), 7);
}

TEST(BenchReport, ThroughputAndTpotFollowFromTheRecords) {
  BenchResult result;
  result.duration_seconds = 2;
  RequestRecord a;
  a.ok = true;
  a.prompt_tokens = 10;
  a.output_tokens = 5;
  a.ttft = 0.1;
  a.e2e = 0.5;  // TPOT (0.5 - 0.1) / 4 = 0.1 s
  a.itl = {0.1, 0.1, 0.1, 0.1};
  RequestRecord b = a;
  b.output_tokens = 3;
  b.ttft = 0.3;
  b.e2e = 0.7;  // TPOT 0.2 s
  b.itl = {0.2, 0.2};
  RequestRecord failed;
  failed.error = "code 8: queue full";
  result.requests = {a, b, failed};
  const BenchReport r = MakeReport(result);
  EXPECT_EQ(r.completed, 2);
  EXPECT_EQ(r.failed, 1);
  EXPECT_EQ(r.first_error, "code 8: queue full");
  EXPECT_EQ(r.total_input_tokens, 20);
  EXPECT_EQ(r.total_output_tokens, 8);
  EXPECT_DOUBLE_EQ(r.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(r.output_throughput, 4.0);
  EXPECT_DOUBLE_EQ(r.total_token_throughput, 14.0);
  EXPECT_NEAR(r.ttft_ms.mean, 200, 1e-9);
  EXPECT_NEAR(r.tpot_ms.mean, 150, 1e-9);
  EXPECT_EQ(r.itl_ms.count, 6);
  EXPECT_NEAR(r.e2el_ms.p50, 600, 1e-9);
  const nlohmann::json j = ToJson(r, BenchOptions{});
  EXPECT_DOUBLE_EQ(j["median_e2el_ms"].get<double>(), 600);
  EXPECT_EQ(j["completed"].get<int>(), 2);
  EXPECT_NE(FormatTable(r, BenchOptions{}).find("Failed requests:"), std::string::npos);
}

TEST(LoadGenerator, CompletesEveryRequestWithThePlannedLengths) {
  const deltaserve::testing::Golden golden = deltaserve::testing::ReadGolden("flat_untied");
  api::testing::LocalServer server(golden.dir, /*slots=*/4, 256, engine::EngineOptions{});
  ASSERT_TRUE(server.ok());
  BenchOptions o;
  o.num_requests = 12;
  o.concurrency = 6;  // more than the slots: some wait in the queue
  o.input_len = 20;
  o.output_len = 6;
  o.range_ratio = 0.5;
  o.seed = 3;
  int progress_calls = 0;
  o.on_progress = [&](int done, int total) {
    ++progress_calls;
    EXPECT_EQ(total, 12);
    EXPECT_EQ(done, progress_calls);
  };
  std::unique_ptr<BenchTarget> target = MakeGrpcBenchTarget(server.channel(), "grpc");
  absl::StatusOr<BenchResult> result = RunBench(*target, o);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(progress_calls, 12);
  ASSERT_EQ(result->requests.size(), 12u);
  int64_t output = 0;
  for (const RequestRecord& r : result->requests) {
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_GE(r.prompt_tokens, 10);
    EXPECT_LE(r.prompt_tokens, 30);
    EXPECT_GE(r.output_tokens, 3);
    EXPECT_LE(r.output_tokens, 9);
    EXPECT_GT(r.ttft, 0);
    EXPECT_GE(r.e2e, r.ttft);
    EXPECT_LE(r.itl.size() + 1, static_cast<size_t>(r.output_tokens));  // messages may coalesce tokens
    output += r.output_tokens;
  }
  const BenchReport report = MakeReport(*result);
  EXPECT_EQ(report.completed, 12);
  EXPECT_EQ(report.total_output_tokens, output);
  EXPECT_GT(report.output_throughput, 0);

  // Unknown model: an error before any load, naming the model.
  o.model = "nope";
  absl::StatusOr<BenchResult> missing = RunBench(*target, o);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  // Bad options are refused.
  o.model = "";
  o.concurrency = 0;
  EXPECT_EQ(RunBench(*target, o).status().code(), absl::StatusCode::kInvalidArgument);
}

// A port nothing listens on right now (bound, then released).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// The OpenAI target's own refusals. Its requests against a live server are checked end to end
// (tests/e2e/test_openai_e2e.py: the same totals as the gRPC bench with the same seed): civetweb's
// 100 KB worker stacks cannot start in a process holding this binary's static TLS (LibTorch's CUDA
// libraries, about 190 KB), so the HTTP server does not run inside this test.
TEST(LoadGenerator, OpenAiTargetRefusesBadServers) {
  OpenAiTargetOptions t;
  for (const char* bad : {"localhost", ":80", "localhost:0", "localhost:99999", "localhost:http"}) {
    t.server = bad;
    EXPECT_EQ(MakeOpenAiBenchTarget(t).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  t.server = "http://127.0.0.1:8000/";
  t.endpoint = "v1/completions";
  EXPECT_EQ(MakeOpenAiBenchTarget(t).status().code(), absl::StatusCode::kInvalidArgument);
  t.endpoint = "/v1/completions";
  EXPECT_TRUE(MakeOpenAiBenchTarget(t).ok());
  // Nothing listens: Describe says so, and a request is recorded as failed, not thrown.
  t.server = "127.0.0.1:" + std::to_string(FreePort());
  absl::StatusOr<std::unique_ptr<BenchTarget>> closed = MakeOpenAiBenchTarget(t);
  ASSERT_TRUE(closed.ok());
  EXPECT_EQ((*closed)->Describe("").status().code(), absl::StatusCode::kUnavailable);
  BenchRequest r;
  r.prompt_ids = {1, 2, 3};
  r.max_tokens = 2;
  const RequestRecord rec = (*closed)->Run(r, 5);
  EXPECT_FALSE(rec.ok);
  EXPECT_NE(rec.error.find("cannot connect"), std::string::npos) << rec.error;
  EXPECT_EQ(rec.prompt_tokens, 3);
}

}  // namespace
}  // namespace deltaserve::client
