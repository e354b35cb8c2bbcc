#include "tokenizer/regex_compat.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer::internal {
namespace {

struct Range {
  uint32_t first;
  uint32_t last;
};

// Code points of general category L, N and M in Unicode 16.0 that PCRE2 10.42 (Unicode 14.0) does not
// place there: they were unassigned in 14.0. With a PCRE2 that knows them already the ranges are
// redundant, not wrong.
constexpr Range kLetters[] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},   {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x1123F, 0x11240}, {0x11380, 0x11389}, {0x1138B, 0x1138B},
    {0x1138E, 0x1138E}, {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3},
    {0x11BC0, 0x11BE0}, {0x11F02, 0x11F02}, {0x11F04, 0x11F10}, {0x11F12, 0x11F33}, {0x1342F, 0x1342F},
    {0x13441, 0x13446}, {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF},
    {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E4D0, 0x1E4EB},
    {0x1E5D0, 0x1E5ED}, {0x1E5F0, 0x1E5F0}, {0x2B739, 0x2B739}, {0x2EBF0, 0x2EE5D}, {0x31350, 0x323AF},
};
constexpr Range kNumbers[] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x11F50, 0x11F59}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1D2C0, 0x1D2D3}, {0x1E4F0, 0x1E4F9}, {0x1E5F1, 0x1E5FA},
};
constexpr Range kMarks[] = {
    {0x0897, 0x0897},   {0x0CF3, 0x0CF3},   {0x0ECE, 0x0ECE},   {0x10D69, 0x10D6D}, {0x10EFC, 0x10EFF},
    {0x11241, 0x11241}, {0x113B8, 0x113C0}, {0x113C2, 0x113C2}, {0x113C5, 0x113C5}, {0x113C7, 0x113CA},
    {0x113CC, 0x113D0}, {0x113D2, 0x113D2}, {0x113E1, 0x113E2}, {0x11F00, 0x11F01}, {0x11F03, 0x11F03},
    {0x11F34, 0x11F3A}, {0x11F3E, 0x11F42}, {0x11F5A, 0x11F5A}, {0x13440, 0x13440}, {0x13447, 0x13455},
    {0x1611E, 0x1612F}, {0x1E08F, 0x1E08F}, {0x1E4EC, 0x1E4EF}, {0x1E5EE, 0x1E5EF},
};
// Oniguruma's \s: White_Space. Written as escapes so that the (?x) flag cannot drop the space.
constexpr char kSpaces[] =
    R"(\x{09}-\x{0D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

template <size_t N>
std::string ClassItems(const Range (&ranges)[N]) {
  std::string out;
  for (const Range& r : ranges) {
    absl::StrAppendFormat(&out, "\\x{%X}", r.first);
    if (r.last != r.first) absl::StrAppendFormat(&out, "-\\x{%X}", r.last);
  }
  return out;
}

// The extra class items for property `name`, or empty when it is not one that needs them.
std::string Additions(absl::string_view name) {
  if (name == "L") return ClassItems(kLetters);
  if (name == "N") return ClassItems(kNumbers);
  if (name == "M") return ClassItems(kMarks);
  return "";
}

}  // namespace

bool HasUnicode16Additions(absl::string_view text) {
  // All of them lie at U+0897 or above, so only 3- and 4-byte sequences need decoding.
  static const std::vector<Range>* all = [] {
    auto* v = new std::vector<Range>;
    v->insert(v->end(), std::begin(kLetters), std::end(kLetters));
    v->insert(v->end(), std::begin(kNumbers), std::end(kNumbers));
    v->insert(v->end(), std::begin(kMarks), std::end(kMarks));
    std::sort(v->begin(), v->end(), [](const Range& a, const Range& b) { return a.first < b.first; });
    return v;
  }();
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  for (size_t i = 0; i < text.size();) {
    if (bytes[i] < 0xE0) {
      ++i;
      continue;
    }
    const uint32_t c = NextCodePoint(text, &i);
    const auto it = std::upper_bound(all->begin(), all->end(), c,
                                     [](uint32_t cp, const Range& r) { return cp < r.first; });
    if (it != all->begin() && c <= std::prev(it)->last) return true;
  }
  return false;
}

bool IsUnicode16WordAddition(char32_t c) {
  auto in = [c](const auto& ranges) {
    for (const Range& r : ranges) {
      if (c >= r.first && c <= r.last) return true;
    }
    return false;
  };
  constexpr Range kKaktovik = {0x1D2C0, 0x1D2D3};
  if (c >= kKaktovik.first && c <= kKaktovik.last) return false;
  return in(kLetters) || in(kMarks) || in(kNumbers);
}

std::string AdaptPatternForPcre2(absl::string_view p, bool unicode16_letters) {
  std::string out;
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 'Q') {  // \Q...\E is literal text
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == absl::string_view::npos ? p.size() : end + 2;
        absl::StrAppend(&out, p.substr(i, stop - i));
        i = stop;
        continue;
      }
      if (e == 'p') {
        size_t stop;
        absl::string_view name;
        if (i + 2 < p.size() && p[i + 2] == '{') {
          const size_t close = p.find('}', i + 3);
          stop = close == absl::string_view::npos ? p.size() : close + 1;
          name = p.substr(i + 3, stop - 1 - (i + 3));
        } else {
          stop = std::min(i + 3, p.size());
          name = p.substr(i + 2, stop - (i + 2));
        }
        const absl::string_view atom = p.substr(i, stop - i);
        const std::string extra = unicode16_letters ? Additions(name) : "";
        if (extra.empty()) {
          absl::StrAppend(&out, atom);
        } else if (in_class) {
          absl::StrAppend(&out, atom, extra);
        } else {
          absl::StrAppend(&out, "[", atom, extra, "]");
        }
        i = stop;
        continue;
      }
      if (e == 's') {
        absl::StrAppend(&out, in_class ? "" : "[", kSpaces, in_class ? "" : "]");
        i += 2;
        continue;
      }
      if (e == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kSpaces, "]");
        i += 2;
        continue;
      }
      // Any other escape: copied whole, so that its second character is not read as syntax.
      absl::StrAppend(&out, p.substr(i, 2));
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:] inside a class
      const size_t close = p.find(":]", i + 2);
      const size_t stop = close == absl::string_view::npos ? i + 1 : close + 2;
      absl::StrAppend(&out, p.substr(i, stop - i));
      i = stop;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++i;
  }
  return out;
}

}  // namespace deltaserve::tokenizer::internal
