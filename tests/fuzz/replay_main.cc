// A main() for a libFuzzer harness built without libFuzzer (gcc; the regular and the sanitized builds):
// runs LLVMFuzzerTestOneInput on every file under the given paths, then on random mutations of them
// (bit flips, byte changes, insertions, deletions, repeats, splices). Not coverage-guided: it replays
// the seeds and shakes them, so a crash or sanitizer report in the code behind the harness shows up in
// every build; scripts/fuzz.sh is where real fuzzing happens.
//   HARNESS [--mutations N] [--seed S] PATH...    (default 10000 mutations, a fresh seed, printed)
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// A harness may bring its own mutator (libFuzzer's hook); it calls LLVMFuzzerMutate, defined below, for
// byte-level changes.
extern "C" __attribute__((weak)) size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                                                unsigned int seed);

namespace {

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void Run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

// A byte to write: mostly printable ASCII (so text stays UTF-8 and the input gets past the parser to
// the validation behind it), else a varint or length boundary, else anything.
char SomeByte(std::mt19937_64& rng) {
  static const char kSpecial[] = {0, 1, 2, 0x7f, static_cast<char>(0x80), static_cast<char>(0xff)};
  switch (rng() % 4) {
    case 0:
    case 1:
      return static_cast<char>(0x20 + rng() % 95);
    case 2:
      return kSpecial[rng() % sizeof(kSpecial)];
    default:
      return static_cast<char>(rng());
  }
}

std::string Mutate(std::string s, const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t n = s.size();
    switch (rng() % 6) {
      case 0:  // flip one bit, the top one (which breaks UTF-8 text) rarely
        if (n > 0) s[rng() % n] ^= static_cast<char>(1u << (rng() % 8 == 0 ? 7 : rng() % 7));
        break;
      case 1:  // set one byte
        if (n > 0) s[rng() % n] = SomeByte(rng);
        break;
      case 2: {  // insert a few bytes
        const size_t at = n == 0 ? 0 : rng() % (n + 1);
        for (size_t k = 1 + rng() % 4; k > 0; --k) s.insert(s.begin() + static_cast<std::ptrdiff_t>(at), SomeByte(rng));
        break;
      }
      case 3:  // delete a range
        if (n > 0) {
          const size_t at = rng() % n;
          s.erase(at, 1 + rng() % std::min<size_t>(16, n - at));
        }
        break;
      case 4:  // repeat a range
        if (n > 0) {
          const size_t at = rng() % n;
          s.insert(rng() % (n + 1), s.substr(at, 1 + rng() % std::min<size_t>(32, n - at)));
        }
        break;
      default: {  // splice: this input's head with another seed's tail
        const std::string& other = seeds[rng() % seeds.size()];
        s = s.substr(0, n == 0 ? 0 : rng() % (n + 1)) + other.substr(other.empty() ? 0 : rng() % other.size());
      }
    }
  }
  return s;
}

std::mt19937_64& Rng() {
  static std::mt19937_64 rng;
  return rng;
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size) {
  static const std::vector<std::string>* no_splices = new std::vector<std::string>{std::string()};
  std::string s = Mutate(std::string(reinterpret_cast<const char*>(data), size), *no_splices, Rng());
  s.resize(std::min(s.size(), max_size));
  std::memcpy(data, s.data(), s.size());
  return s.size();
}

int main(int argc, char** argv) {
  long mutations = 10000;
  uint64_t seed = std::random_device{}();
  std::vector<std::string> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--mutations" && i + 1 < argc) {
      mutations = std::strtol(argv[++i], nullptr, 10);
    } else if (arg == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (std::filesystem::is_directory(arg)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(arg))
        if (entry.is_regular_file()) seeds.push_back(ReadAll(entry.path()));
    } else if (std::filesystem::is_regular_file(arg)) {
      seeds.push_back(ReadAll(arg));
    } else {
      std::fprintf(stderr, "usage: %s [--mutations N] [--seed S] PATH...  (%s: no such file or folder)\n",
                   argv[0], arg.c_str());
      return 2;
    }
  }
  if (seeds.empty()) seeds.push_back("");
  std::printf("replaying %zu seed inputs, then %ld mutations (--seed %llu)\n", seeds.size(), mutations,
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  for (const std::string& s : seeds) Run(s);
  std::mt19937_64& rng = Rng();
  rng.seed(seed);
  // Mutations start from a seed or from one of the last 256 mutants, so changes compound.
  std::vector<std::string> recent;
  for (long m = 0; m < mutations; ++m) {
    std::string input = !recent.empty() && rng() % 2 ? recent[rng() % recent.size()] : seeds[rng() % seeds.size()];
    if (LLVMFuzzerCustomMutator != nullptr) {
      const size_t max_size = std::max<size_t>(4096, 2 * input.size());
      const size_t size = input.size();
      input.resize(max_size);
      input.resize(LLVMFuzzerCustomMutator(reinterpret_cast<uint8_t*>(input.data()), size, max_size,
                                           static_cast<unsigned int>(rng())));
    } else {
      input = Mutate(std::move(input), seeds, rng);
    }
    Run(input);
    if (recent.size() < 256) {
      recent.push_back(std::move(input));
    } else {
      recent[rng() % recent.size()] = std::move(input);
    }
  }
  std::printf("done: %zu seeds and %ld mutations, no crash\n", seeds.size(), mutations);
  return 0;
}
