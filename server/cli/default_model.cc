#include "cli/default_model.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_join.h"

namespace deltaserve::cli {
namespace {

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool HasConfig(const std::string& dir) {
  struct stat st;
  return ::stat((dir + "/config.json").c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string SelfExe() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// $DELTASERVE_MODEL_DIR, or "" when unset or empty.
std::string EnvModelDir() {
  const char* env = std::getenv(kModelDirEnv);
  return env == nullptr ? std::string() : std::string(env);
}

}  // namespace

std::vector<std::string> DefaultModelCandidates(const std::string& exe_path, const std::string& env_value) {
  std::vector<std::string> out;
  if (!env_value.empty()) out.push_back(env_value);
  if (exe_path.empty()) return out;
  const std::string bin_dir = Dirname(exe_path);
  // Installed: <prefix>/bin/deltaserve and <prefix>/share/deltaserve/models/ (cmake --install, the images).
  out.push_back(Dirname(bin_dir) + "/share/deltaserve/models/" + kShippedTextModel);
  // A build tree inside the source tree: <source>/<build>/server/deltaserve (or .../server/generate/...).
  // Walk up a few levels so both depths and a nested build folder are found.
  std::string dir = bin_dir;
  for (int up = 0; up < 4 && dir != "/"; ++up) {
    dir = Dirname(dir);
    out.push_back((dir == "/" ? "" : dir) + "/models/" + kShippedTextModel);
  }
  return out;
}

std::string DefaultModelDir() {
  // A directory named by the environment is what the operator asked for: no quiet fallback past it.
  if (std::string env = EnvModelDir(); !env.empty()) return env;
  const std::vector<std::string> candidates = DefaultModelCandidates(SelfExe(), "");
  for (const std::string& dir : candidates)
    if (HasConfig(dir)) return dir;
  return candidates.empty() ? std::string("models/") + kShippedTextModel : candidates.front();
}

std::string DefaultModelSearchPath() {
  if (std::string env = EnvModelDir(); !env.empty()) return std::string(kModelDirEnv) + "=" + env;
  return absl::StrJoin(DefaultModelCandidates(SelfExe(), ""), ", ");
}

}  // namespace deltaserve::cli
