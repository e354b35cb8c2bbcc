// bench: the flags to BenchOptions and a target (gRPC or OpenAI HTTP), progress on stderr, the report as
// a table or JSON.
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "client/bench_report.h"
#include "client/commands.h"
#include "client/flags.h"
#include "client/grpc_bench_target.h"
#include "client/load_generator.h"
#include "client/openai_bench_target.h"

namespace deltaserve::client {

int RunBench(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::fprintf(stderr, "deltaserve-cli bench: takes no arguments, only flags (see --help)\n");
    return 2;
  }
  BenchOptions o;
  o.model = absl::GetFlag(FLAGS_model);
  o.num_requests = absl::GetFlag(FLAGS_num_requests);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.request_rate = absl::GetFlag(FLAGS_request_rate);
  o.input_len = absl::GetFlag(FLAGS_input_len);
  o.output_len = absl::GetFlag(FLAGS_output_len);
  o.range_ratio = absl::GetFlag(FLAGS_range_ratio);
  o.seed = absl::GetFlag(FLAGS_seed) >= 0 ? static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)) : 0;
  o.temperature = absl::GetFlag(FLAGS_temperature) >= 0 ? absl::GetFlag(FLAGS_temperature) : 0;
  if (absl::GetFlag(FLAGS_timeout) > 0) o.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  const int step = std::max(1, (o.num_requests + 9) / 10);  // about ten progress lines
  o.on_progress = [step](int done, int total) {
    if (done % step == 0 || done == total) std::fprintf(stderr, "bench: %d/%d requests done\n", done, total);
  };
  std::unique_ptr<BenchTarget> target;
  const std::string protocol = absl::GetFlag(FLAGS_protocol);
  if (protocol == "grpc") {
    target = MakeGrpcBenchTarget(ServerChannel(), "grpc " + absl::GetFlag(FLAGS_server));
  } else if (protocol == "openai") {
    OpenAiTargetOptions t;
    t.server = absl::GetFlag(FLAGS_server);
    t.endpoint = absl::GetFlag(FLAGS_openai_endpoint);
    t.token = BearerToken();
    t.vocab_size = absl::GetFlag(FLAGS_vocab_size);
    t.max_model_len = absl::GetFlag(FLAGS_max_model_len);
    absl::StatusOr<std::unique_ptr<BenchTarget>> made = MakeOpenAiBenchTarget(t);
    if (!made.ok()) {
      std::fprintf(stderr, "deltaserve-cli bench: %s\n", std::string(made.status().message()).c_str());
      return 2;
    }
    target = *std::move(made);
  } else {
    std::fprintf(stderr, "deltaserve-cli bench: --protocol must be grpc or openai, got \"%s\"\n", protocol.c_str());
    return 2;
  }
  std::fprintf(stderr, "bench: %d requests, concurrency %d, input %d, output %d tokens, against %s\n",
               o.num_requests, o.concurrency, o.input_len, o.output_len, target->Label().c_str());
  absl::StatusOr<BenchResult> result = RunBench(*target, o);
  if (!result.ok()) {
    std::fprintf(stderr, "deltaserve-cli bench: %s\n", result.status().ToString().c_str());
    return 1;
  }
  const BenchReport report = MakeReport(*result);
  const nlohmann::json json = ToJson(report, o);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", json.dump(2).c_str());
  } else {
    std::printf("%s", FormatTable(report, o).c_str());
  }
  const std::string path = absl::GetFlag(FLAGS_result_json);
  if (!path.empty()) {
    std::ofstream out(path);
    out << json.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "deltaserve-cli bench: cannot write %s\n", path.c_str());
      return 1;
    }
  }
  return report.failed == 0 ? 0 : 1;
}

}  // namespace deltaserve::client
