// bench: the flags to BenchOptions, progress on stderr, the report as a table or JSON.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "client/bench_report.h"
#include "client/commands.h"
#include "client/flags.h"
#include "client/load_generator.h"

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
  std::fprintf(stderr, "bench: %d requests, concurrency %d, input %d, output %d tokens, against %s\n",
               o.num_requests, o.concurrency, o.input_len, o.output_len, absl::GetFlag(FLAGS_server).c_str());
  absl::StatusOr<BenchResult> result = RunBench(ServerChannel(), o);
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
