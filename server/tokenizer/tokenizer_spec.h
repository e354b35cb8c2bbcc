// What a tokenizer.json describes, reduced to the parts deltaserve implements, in plain structs: the JSON
// reader fills it, the tokenizer is built from it, and neither side sees the other's types.
#ifndef DELTASERVE_SERVER_TOKENIZER_TOKENIZER_SPEC_H_
#define DELTASERVE_SERVER_TOKENIZER_TOKENIZER_SPEC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace deltaserve::tokenizer::internal {

enum class NormalizationForm { kNFC, kNFD, kNFKC, kNFKD };

// How a Split pre-tokenizer treats the matched delimiters (SplitDelimiterBehavior in `tokenizers`).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitRule {
  std::string pattern;
  bool is_regex = true;  // false: a literal string
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;  // matched against the normalized text rather than the input
  bool special = false;
};

struct TokenizerSpec {
  std::vector<NormalizationForm> normalizers;  // applied in order
  std::vector<SplitRule> splits;               // applied in order, before the byte-level mapping
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  bool ignore_merges = false;
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  std::vector<AddedToken> added_tokens;
};

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_TOKENIZER_SPEC_H_
