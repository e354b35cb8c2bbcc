// The Split pre-tokenizers of tokenizer.json, run with PCRE2 (JIT): cut normalized text into the pieces
// that BPE merges within. Matches Oniguruma's leftmost, backtracking semantics as `tokenizers` uses them.
#ifndef DELTASERVE_SERVER_TOKENIZER_PRETOKENIZER_H_
#define DELTASERVE_SERVER_TOKENIZER_PRETOKENIZER_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/tokenizer_spec.h"

namespace deltaserve::tokenizer::internal {

class RegexSplitter;

class PreTokenizer {
 public:
  // InvalidArgument naming the rule when a pattern does not compile.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(const std::vector<SplitRule>& rules);
  ~PreTokenizer();

  // Appends the pieces of `text` (valid UTF-8) in order, as views into `text`; empty pieces are dropped.
  // Safe to call from several threads at once.
  void Split(absl::string_view text, std::vector<absl::string_view>* pieces) const;

 private:
  PreTokenizer() = default;
  std::vector<std::unique_ptr<RegexSplitter>> splitters_;
};

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_PRETOKENIZER_H_
