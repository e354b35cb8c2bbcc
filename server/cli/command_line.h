// Command-line parsing shared by deltaserve's binaries: Abseil flags that also accept dashed names
// (--max-new-tokens as well as --max_new_tokens), with --help listing the calling binary's own flags.
#ifndef DELTASERVE_SERVER_CLI_COMMAND_LINE_H_
#define DELTASERVE_SERVER_CLI_COMMAND_LINE_H_

#include <string>
#include <vector>

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace deltaserve::cli {

// Sets the usage message, makes --help list the flags defined in files whose path contains
// `flags_file` (Abseil's default only matches files named after the binary), rewrites dashes in flag
// names (never in values) to underscores, and parses. Exits on --help or a bad flag, as Abseil does.
// Returns the positional arguments (argv[0] left out).
std::vector<std::string> ParseCommandLine(int argc, char** argv, absl::string_view usage, absl::string_view flags_file);

}  // namespace deltaserve::cli

#endif  // DELTASERVE_SERVER_CLI_COMMAND_LINE_H_
