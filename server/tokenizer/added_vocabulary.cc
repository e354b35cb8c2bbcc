#include "tokenizer/added_vocabulary.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <cstring>

#include "tokenizer/regex_compat.h"
#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer::internal {
namespace {

// Rust regex's Unicode \w, which `tokenizers` uses for single_word. ICU here knows Unicode 15.0, the regex
// crate 16.0; the difference is covered by the additions table.
bool IsWordChar(char32_t c) {
  if (IsUnicode16WordAddition(c)) return true;
  const auto cp = static_cast<UChar32>(c);
  switch (u_charType(cp)) {
    case U_NON_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return u_hasBinaryProperty(cp, UCHAR_ALPHABETIC) || u_hasBinaryProperty(cp, UCHAR_JOIN_CONTROL);
  }
}

// Rust regex's Unicode \s, which `tokenizers` uses for lstrip and rstrip.
bool IsSpace(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }

// Where the whitespace that ends `text` begins.
size_t TrailingSpaceStart(absl::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!IsSpace(NextCodePoint(text, &pos))) break;
    end = start;
  }
  return end;
}

// How many bytes of whitespace `text` starts with.
size_t LeadingSpaceLength(absl::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = pos;
    if (!IsSpace(NextCodePoint(text, &next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

TokenTrie::TokenTrie(const std::vector<std::string>& patterns) : nodes_(1) {
  for (size_t i = 0; i < patterns.size(); ++i) {
    const std::string& p = patterns[i];
    if (p.empty()) continue;
    first_byte_[static_cast<uint8_t>(p[0])] = true;
    int32_t node = 0;
    for (const char ch : p) {
      const auto byte = static_cast<uint8_t>(ch);
      auto& children = nodes_[node].children;
      auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{0}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it != children.end() && it->first == byte) {
        node = it->second;
      } else {
        const auto child = static_cast<int32_t>(nodes_.size());
        children.insert(it, {byte, child});
        nodes_.emplace_back();  // invalidates `children`, which is not used again
        node = child;
      }
    }
    nodes_[node].value = static_cast<int32_t>(i);
  }
  if (nodes_[0].children.size() == 1) single_first_byte_ = nodes_[0].children[0].first;
}

bool TokenTrie::FindNext(absl::string_view text, size_t from, size_t* begin, size_t* end,
                         int32_t* value) const {
  if (empty()) return false;
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  for (size_t i = from; i < text.size(); ++i) {
    if (single_first_byte_ >= 0) {
      const void* hit = std::memchr(bytes + i, single_first_byte_, text.size() - i);
      if (hit == nullptr) return false;
      i = static_cast<const uint8_t*>(hit) - bytes;
    } else if (!first_byte_[bytes[i]]) {
      continue;
    }
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t j = i; j < text.size(); ++j) {
      const auto& children = nodes_[node].children;
      auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(bytes[j], int32_t{0}),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it == children.end() || it->first != bytes[j]) break;
      node = it->second;
      if (nodes_[node].value >= 0) {
        best = nodes_[node].value;
        best_end = j + 1;
      }
    }
    if (best >= 0) {
      *begin = i;
      *end = best_end;
      *value = best;
      return true;
    }
  }
  return false;
}

namespace {

std::vector<std::string> Patterns(const std::vector<AddedToken>& tokens,
                                  const std::vector<std::string>& normalized, bool normalized_pass) {
  std::vector<std::string> patterns(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].normalized != normalized_pass) continue;
    patterns[i] = normalized_pass ? normalized[i] : tokens[i].content;
  }
  return patterns;
}

}  // namespace

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens,
                                 const std::vector<std::string>& normalized_contents)
    : tokens_(std::move(tokens)),
      raw_trie_(Patterns(tokens_, normalized_contents, false)),
      normalized_trie_(Patterns(tokens_, normalized_contents, true)) {}

void AddedVocabulary::Split(absl::string_view text, bool normalized_pass, bool skip_special,
                            std::vector<TextSegment>* out) const {
  if (text.empty()) return;
  const TokenTrie& trie = normalized_pass ? normalized_trie_ : raw_trie_;
  size_t done = 0, from = 0, begin = 0, end = 0;
  int32_t index = -1;
  // As `tokenizers`: the search resumes after every match, even one that is then not used.
  while (trie.FindNext(text, from, &begin, &end, &index)) {
    from = end;
    const AddedToken& token = tokens_[index];
    if (skip_special && token.special) continue;
    if (token.single_word) {
      const bool space_before = begin == 0 || !IsWordChar(PreviousCodePoint(text, begin));
      size_t after = end;
      const bool space_after = end == text.size() || !IsWordChar(NextCodePoint(text, &after));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) begin = std::max(TrailingSpaceStart(text.substr(0, begin)), done);
    if (token.rstrip) end += LeadingSpaceLength(text.substr(end));
    if (done < begin) out->push_back({text.substr(done, begin - done), -1});
    out->push_back({text.substr(begin, end - begin), token.id});
    done = end;
  }
  if (done < text.size()) out->push_back({text.substr(done), -1});
}

}  // namespace deltaserve::tokenizer::internal
