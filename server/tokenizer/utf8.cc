#include "tokenizer/utf8.h"

#include <cstdint>
#include <cstring>

namespace deltaserve::tokenizer::internal {

Utf8Step ScanUtf8(absl::string_view s, size_t pos) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) return {1, true, false};
  size_t trail;
  // The second byte's range is narrower after some lead bytes: that is what rules out overlong forms,
  // surrogates and code points past U+10FFFF.
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    trail = 1;
  } else if (b0 == 0xE0) {
    trail = 2, lo = 0xA0;
  } else if (b0 == 0xED) {
    trail = 2, hi = 0x9F;
  } else if (b0 >= 0xE1 && b0 <= 0xEF) {
    trail = 2;
  } else if (b0 == 0xF0) {
    trail = 3, lo = 0x90;
  } else if (b0 == 0xF4) {
    trail = 3, hi = 0x8F;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    trail = 3;
  } else {
    return {1, false, false};
  }
  for (size_t i = 1; i <= trail; ++i) {
    if (pos + i >= s.size()) return {i, false, true};
    const auto b = static_cast<uint8_t>(s[pos + i]);
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) return {i, false, false};
  }
  return {trail + 1, true, false};
}

bool IsValidUtf8(absl::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    // ASCII runs dominate most text; test eight bytes at a time.
    if (pos + 8 <= s.size()) {
      uint64_t word;
      std::memcpy(&word, s.data() + pos, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        pos += 8;
        continue;
      }
    }
    const Utf8Step step = ScanUtf8(s, pos);
    if (!step.valid) return false;
    pos += step.length;
  }
  return true;
}

void AppendUtf8Lossy(absl::string_view s, std::string* out) {
  size_t pos = 0, run = 0;  // [run, pos) is well-formed and not yet copied
  while (pos < s.size()) {
    const Utf8Step step = ScanUtf8(s, pos);
    if (!step.valid) {
      out->append(s.data() + run, pos - run);
      out->append("\xEF\xBF\xBD");
      run = pos + step.length;
    }
    pos += step.length;
  }
  out->append(s.data() + run, pos - run);
}

std::string Utf8Lossy(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  AppendUtf8Lossy(s, &out);
  return out;
}

size_t Utf8StablePrefixLength(absl::string_view s) {
  // A held-back sequence is at most 3 bytes, but it must be found from a character boundary.
  size_t pos = 0;
  while (pos < s.size()) {
    const Utf8Step step = ScanUtf8(s, pos);
    if (step.truncated) return pos;
    pos += step.length;
  }
  return pos;
}

char32_t NextCodePoint(absl::string_view s, size_t* pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + *pos;
  if (p[0] < 0x80) {
    *pos += 1;
    return p[0];
  }
  if (p[0] < 0xE0) {
    *pos += 2;
    return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (p[0] < 0xF0) {
    *pos += 3;
    return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  *pos += 4;
  return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}

char32_t PreviousCodePoint(absl::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  return NextCodePoint(s, &start);
}

void AppendCodePoint(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

}  // namespace deltaserve::tokenizer::internal
