// Tokenizer benchmark: encode throughput (MB/s, tokens/s) of deltaserve's byte-level BPE on one long text,
// cold (empty piece cache) and warm, whole and line by line, and decode. tools/tokenizer_bench.py writes
// the text (and the `tokenizers` ids, which this checks for equality) and prints the library's figures.
//   tokenizer_bench --text FILE [--tokenizer tokenizer.json] [--ids FILE] [--reps N]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "tokenizer/tokenizer.h"

namespace dt = deltaserve::tokenizer;

namespace {

struct Args {
  std::string tokenizer = "tests/data/qwen3-tokenizer/tokenizer.json";
  std::string text;
  std::string ids;
  int reps = 5;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "usage: %s --text FILE [--tokenizer FILE] [--ids FILE] [--reps N]\n", argv[0]);
      std::exit(2);
    }
    const char* v = argv[++i];
    if (f == "--tokenizer") {
      a.tokenizer = v;
    } else if (f == "--text") {
      a.text = v;
    } else if (f == "--ids") {
      a.ids = v;
    } else if (f == "--reps") {
      a.reps = std::max(1, std::atoi(v));
    } else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      std::exit(2);
    }
  }
  if (a.text.empty()) {
    std::fprintf(stderr, "--text is required (tools/tokenizer_bench.py --text-out writes one)\n");
    std::exit(2);
  }
  return a;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

double Seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Median of `reps` timed runs.
double Median(int reps, const std::function<void()>& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(Seconds(f));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void Report(const char* what, double seconds, double bytes, double tokens) {
  std::printf("%-24s %10.1f %10.2f %14.0f\n", what, seconds * 1e3, bytes / seconds / 1e6, tokens / seconds);
  std::printf(
      "{\"bench\": \"tokenizer\", \"impl\": \"deltaserve\", \"case\": \"%s\", \"ms\": %.2f, \"mb_per_s\": "
      "%.3f, "
      "\"tokens_per_s\": %.0f}\n",
      what, seconds * 1e3, bytes / seconds / 1e6, tokens / seconds);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = ParseArgs(argc, argv);
  const std::string text = ReadFile(a.text);
  std::unique_ptr<dt::Tokenizer> tok;
  const double load = Seconds([&] {
    absl::StatusOr<std::unique_ptr<dt::Tokenizer>> t = dt::Tokenizer::FromFile(a.tokenizer);
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      std::exit(1);
    }
    tok = *std::move(t);
  });
  const std::vector<std::string> lines = absl::StrSplit(text, '\n');
  std::printf("tokenizer_bench: %s, text %s (%.2f MB, %zu lines), load %.0f ms, reps %d\n",
              a.tokenizer.c_str(), a.text.c_str(), text.size() / 1e6, lines.size(), load * 1e3, a.reps);
  std::printf("%-24s %10s %10s %14s\n", "case", "ms", "MB/s", "tokens/s");

  std::vector<int32_t> ids;
  const double cold = Seconds([&] { ids = tok->Encode(text); });
  const double tokens = static_cast<double>(ids.size());
  Report("encode_cold", cold, text.size(), tokens);
  Report("encode_warm", Median(a.reps, [&] { ids = tok->Encode(text); }), text.size(), tokens);
  size_t line_tokens = 0;
  for (const std::string& line : lines) line_tokens += tok->Encode(line).size();
  Report("encode_lines_warm",
         Median(a.reps,
                [&] {
                  for (const std::string& line : lines) tok->Encode(line);
                }),
         text.size(), static_cast<double>(line_tokens));
  std::string decoded;
  Report("decode", Median(a.reps, [&] { decoded = tok->Decode(ids).value(); }), text.size(), tokens);
  Report("decode_incremental",
         Median(a.reps,
                [&] {
                  dt::IncrementalDecoder d(tok.get());
                  decoded.clear();
                  for (const int32_t id : ids) decoded += d.Push(id).value();
                  decoded += d.Flush();
                }),
         text.size(), tokens);
  std::printf("tokens %zu (whole text), %zu (line by line)\n", ids.size(), line_tokens);

  if (!a.ids.empty()) {
    const std::string raw = ReadFile(a.ids);
    std::vector<int32_t> ref(raw.size() / sizeof(int32_t));
    std::copy(raw.data(), raw.data() + ref.size() * sizeof(int32_t), reinterpret_cast<char*>(ref.data()));
    size_t first_diff = 0;
    while (first_diff < std::min(ref.size(), ids.size()) && ref[first_diff] == ids[first_diff]) ++first_diff;
    if (ref == ids) {
      std::printf("ids identical to tokenizers' (%zu tokens)\n", ids.size());
    } else {
      std::printf("ids DIFFER from tokenizers' (%zu vs %zu tokens, first difference at %zu)\n", ids.size(),
                  ref.size(), first_diff);
      return 1;
    }
  }
  return 0;
}
