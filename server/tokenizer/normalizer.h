// Unicode normalization of the text before pre-tokenization (NFC for Qwen), with ICU's data but Unicode
// 9.0's character repertoire, because that is what `tokenizers` normalizes with (see normalizer.cc).
#ifndef DELTASERVE_SERVER_TOKENIZER_NORMALIZER_H_
#define DELTASERVE_SERVER_TOKENIZER_NORMALIZER_H_

#include <unicode/uversion.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/tokenizer_spec.h"

// ICU's namespace is versioned (icu_72); its macros declare into whichever version is installed.
U_NAMESPACE_BEGIN
class Normalizer2;
U_NAMESPACE_END

namespace deltaserve::tokenizer::internal {

class Normalizer {
 public:
  // An empty list normalizes nothing.
  static absl::StatusOr<Normalizer> Create(const std::vector<NormalizationForm>& forms);

  // Returns false, leaving `out` alone, when `text` (valid UTF-8) comes out unchanged; otherwise sets
  // `out` to the normalized text.
  bool Normalize(absl::string_view text, std::string* out) const;

 private:
  struct Step {
    const icu::Normalizer2* quick_check;  // the form itself, for ICU's fast "already normalized" test
    const icu::Normalizer2* decompose;    // NFD or NFKD: full decomposition mappings
    const icu::Normalizer2* compose;      // NFC (pairwise composition), or null for the D forms
  };
  static bool IsNormalized(const Step& step, absl::string_view text);
  // Normalizes `text` into `out` (replacing its contents) by Unicode 9.0's rules.
  void Apply(const Step& step, absl::string_view text, std::string* out) const;

  std::vector<Step> steps_;  // ICU singletons, never freed
};

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_NORMALIZER_H_
