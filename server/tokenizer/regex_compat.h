// Rewrites a tokenizer.json split regex, written for Oniguruma with Unicode 16.0 tables (what `tokenizers`
// runs), so that PCRE2 10.42 with its Unicode 14.0 tables classifies every code point the same way.
#ifndef DELTASERVE_SERVER_TOKENIZER_REGEX_COMPAT_H_
#define DELTASERVE_SERVER_TOKENIZER_REGEX_COMPAT_H_

#include <string>

#include "absl/strings/string_view.h"

namespace deltaserve::tokenizer::internal {

// \s and \S become Oniguruma's whitespace set (PCRE2 also counts U+180E). With `unicode16_letters`, \p{L},
// \p{N} and \p{M} (also \pL, \pN, \pM) gain the code points that Unicode 15.0 and 16.0 assigned to those
// categories, which costs about a quarter of the split time: the pre-tokenizer uses that form only for
// text that holds such a code point (see HasUnicode16Additions). Inside a character class \S, \P{..}
// and other properties are left alone; everything else is copied.
std::string AdaptPatternForPcre2(absl::string_view pattern, bool unicode16_letters);

// Whether `text` (valid UTF-8) holds a code point the Unicode 15.0-16.0 additions above cover.
bool HasUnicode16Additions(absl::string_view text);

// Whether `c` is one of those additions that is a word character (\w) to Rust's regex crate, whose tables
// are Unicode 16.0 as well: the letters, marks and decimal digits (not the Kaktovik numerals, category No).
bool IsUnicode16WordAddition(char32_t c);

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_REGEX_COMPAT_H_
