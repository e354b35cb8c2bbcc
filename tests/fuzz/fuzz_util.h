// Shared by the libFuzzer harnesses: a per-process scratch folder for parsers that read files.
#ifndef DELTASERVE_TESTS_FUZZ_FUZZ_UTIL_H_
#define DELTASERVE_TESTS_FUZZ_FUZZ_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace deltaserve::fuzz {

// A folder of this process under $TMPDIR (or /tmp), made once.
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string d = std::string(tmp && *tmp ? tmp : "/tmp") + "/deltaserve-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace deltaserve::fuzz

#endif  // DELTASERVE_TESTS_FUZZ_FUZZ_UTIL_H_
