// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json as Qwen ships it: NFC normalizer,
// the split regex pre-tokenizer (Unicode classes via PCRE2), merges, added/special tokens, byte decoding.
#ifndef DELTASERVE_SERVER_TOKENIZER_TOKENIZER_H_
#define DELTASERVE_SERVER_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::tokenizer {

class Tokenizer {
 public:
  // Loads tokenizer.json. Errors name the file and the JSON field; components other than byte-level BPE
  // (other models, normalizers, pre-tokenizers, template post-processors) are refused with Unimplemented.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& tokenizer_json_path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view tokenizer_json);
  virtual ~Tokenizer() = default;

  // Text to ids. Added tokens (e.g. <|im_start|>) in the text are matched as single tokens when
  // `parse_special` is true, as transformers does by default; otherwise the special ones (special: true)
  // are encoded as plain text, as `tokenizers` with encode_special_tokens (transformers'
  // split_special_tokens) does, and non-special added tokens such as <tool_call> still match. Bytes that
  // are not UTF-8 are first replaced by U+FFFD. Safe to call from several threads at once.
  virtual std::vector<int32_t> Encode(absl::string_view text, bool parse_special = true) const = 0;
  // Ids to text. Invalid UTF-8 produced by byte-level decoding is replaced by U+FFFD, as `tokenizers`
  // does. Out-of-range ids give InvalidArgument naming the id (`tokenizers` silently drops them).
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids,
                                             bool skip_special_tokens = false) const = 0;
  // Ids to the raw bytes they stand for (no UTF-8 repair): what incremental decoding streams.
  virtual absl::StatusOr<std::string> DecodeBytes(const std::vector<int32_t>& ids,
                                                  bool skip_special_tokens = false) const = 0;
  virtual int64_t vocab_size() const = 0;  // largest id + 1, added tokens included
  virtual std::optional<int32_t> TokenToId(absl::string_view token) const = 0;
  virtual std::optional<std::string> IdToToken(int32_t id) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
};

// Streams text for ids arriving one at a time and never emits a partial UTF-8 character: bytes of an
// unfinished character are held until it completes (or until Flush).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer* tokenizer, bool skip_special_tokens = false);
  // Returns the newly completed text (possibly empty).
  absl::StatusOr<std::string> Push(int32_t id);
  // Returns whatever is held, with invalid sequences replaced by U+FFFD.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;  // raw bytes not yet emitted
};

}  // namespace deltaserve::tokenizer

#endif  // DELTASERVE_SERVER_TOKENIZER_TOKENIZER_H_
