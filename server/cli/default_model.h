// Where a binary finds its default model when --model is not given: an environment variable, else the
// shipped models beside the installed binary or the source tree it was built in; never a build-time path.
#ifndef DELTASERVE_SERVER_CLI_DEFAULT_MODEL_H_
#define DELTASERVE_SERVER_CLI_DEFAULT_MODEL_H_

#include <string>
#include <vector>

namespace deltaserve::cli {

// The environment variable that names the default text model directory.
inline constexpr char kModelDirEnv[] = "DELTASERVE_MODEL_DIR";
// The shipped text model's directory name under models/.
inline constexpr char kShippedTextModel[] = "qwen35-small";

// Directories tried, in order, for a binary at `exe_path` (absolute): `env_value` when not empty; then
// <prefix>/share/deltaserve/models/qwen35-small for an installed <prefix>/bin/ binary; then
// <source>/models/qwen35-small for a build tree under the source (<source>/<build>/server/deltaserve).
std::vector<std::string> DefaultModelCandidates(const std::string& exe_path, const std::string& env_value);

// For this process (its /proc/self/exe and the environment): $DELTASERVE_MODEL_DIR when set, whether
// it holds a model or not; else the first candidate holding a config.json, else the first candidate.
std::string DefaultModelDir();

// Where DefaultModelDir looked, for error messages: "DELTASERVE_MODEL_DIR=..." or the candidates.
std::string DefaultModelSearchPath();

}  // namespace deltaserve::cli

#endif  // DELTASERVE_SERVER_CLI_DEFAULT_MODEL_H_
