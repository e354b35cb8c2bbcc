// Added tokens (<|im_start|>, <think>, ...): found in the text before anything else touches it, by
// leftmost-longest matching, with the lstrip/rstrip/single_word rules of `tokenizers`.
#ifndef DELTASERVE_SERVER_TOKENIZER_ADDED_VOCABULARY_H_
#define DELTASERVE_SERVER_TOKENIZER_ADDED_VOCABULARY_H_

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "tokenizer/tokenizer_spec.h"

namespace deltaserve::tokenizer::internal {

// A stretch of text: an added token when id >= 0, otherwise text left for normalization and BPE.
struct TextSegment {
  absl::string_view text;
  int32_t id = -1;
};

// Leftmost-longest search over a fixed set of byte strings (a trie walked from each candidate start).
class TokenTrie {
 public:
  // `patterns[i]` reports value i; empty patterns are ignored.
  explicit TokenTrie(const std::vector<std::string>& patterns);
  bool empty() const { return nodes_.size() == 1; }
  // The leftmost match starting at or after `from`, longest among those; false when there is none.
  bool FindNext(absl::string_view text, size_t from, size_t* begin, size_t* end, int32_t* value) const;

 private:
  struct Node {
    int32_t value = -1;
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
  int single_first_byte_ = -1;  // the first byte when all patterns share it (Qwen: '<'), for memchr
};

class AddedVocabulary {
 public:
  // `normalized_contents[i]` is tokens[i].content after the tokenizer's normalizer (what a token with
  // normalized=true is matched as, and what it decodes from).
  AddedVocabulary(std::vector<AddedToken> tokens, const std::vector<std::string>& normalized_contents);

  // Splits `text` on the tokens with normalized=false (`normalized_pass` false, run on the input) or
  // normalized=true (run on each normalized stretch). With `skip_special`, special tokens are not
  // matched, so they stay plain text. Segments cover `text` in order; empty ones are dropped.
  void Split(absl::string_view text, bool normalized_pass, bool skip_special,
             std::vector<TextSegment>* out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  std::vector<AddedToken> tokens_;
  TokenTrie raw_trie_;
  TokenTrie normalized_trie_;
};

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_ADDED_VOCABULARY_H_
