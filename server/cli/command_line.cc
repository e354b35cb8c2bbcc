// Dashed flag names over Abseil flags (see command_line.h).
#include "cli/command_line.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace deltaserve::cli {

std::vector<std::string> ParseCommandLine(int argc, char** argv, absl::string_view usage, absl::string_view flags_file) {
  absl::FlagsUsageConfig config;
  const std::string file(flags_file);
  config.contains_help_flags = [file](absl::string_view path) { return absl::StrContains(path, file); };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage);
  // Dashes are what users of vLLM and llama.cpp type; Abseil only knows underscores.
  std::vector<std::string> args(argv, argv + argc);
  std::vector<char*> fixed;
  for (std::string& a : args) {
    if (a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      std::replace(a.begin() + 2, a.begin() + static_cast<std::ptrdiff_t>(end), '-', '_');
    }
    fixed.push_back(a.data());
  }
  const std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(fixed.size()), fixed.data());
  return std::vector<std::string>(rest.begin() + 1, rest.end());
}

}  // namespace deltaserve::cli
