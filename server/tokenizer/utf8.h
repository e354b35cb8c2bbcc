// UTF-8 well-formedness for the tokenizer: validation, replacement of ill-formed sequences by U+FFFD the
// way Rust's String::from_utf8_lossy (and so `tokenizers`) does it, and where a byte stream may be cut.
#ifndef DELTASERVE_SERVER_TOKENIZER_UTF8_H_
#define DELTASERVE_SERVER_TOKENIZER_UTF8_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace deltaserve::tokenizer::internal {

// One decoding step at a byte position (Unicode 15, table 3-7 and "maximal subpart" practice).
struct Utf8Step {
  size_t length;   // a whole character, or the maximal ill-formed subpart (at least 1 byte)
  bool valid;      // `length` bytes form one well-formed character
  bool truncated;  // ill-formed only because the input ends inside a well-formed prefix
};
Utf8Step ScanUtf8(absl::string_view s, size_t pos);

bool IsValidUtf8(absl::string_view s);

// Appends `s` with every maximal ill-formed subpart replaced by one U+FFFD.
void AppendUtf8Lossy(absl::string_view s, std::string* out);
std::string Utf8Lossy(absl::string_view s);

// Length of the longest prefix of `s` that can be emitted now: everything except a trailing sequence that
// is well-formed so far but unfinished, which later bytes may still complete.
size_t Utf8StablePrefixLength(absl::string_view s);

// Decodes the code point starting at `*pos` of well-formed UTF-8 and advances `*pos` past it.
char32_t NextCodePoint(absl::string_view s, size_t* pos);
// The code point ending just before `end` of well-formed UTF-8 (end > 0).
char32_t PreviousCodePoint(absl::string_view s, size_t end);
void AppendCodePoint(char32_t c, std::string* out);

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_UTF8_H_
