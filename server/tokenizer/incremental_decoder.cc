#include "absl/status/status.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer {

IncrementalDecoder::IncrementalDecoder(const Tokenizer* tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t id) {
  absl::StatusOr<std::string> bytes = tokenizer_->DecodeBytes({id}, skip_special_);
  if (!bytes.ok()) return bytes.status();
  pending_ += *bytes;
  // Ill-formed bytes before the held-back tail are final: replacing them now gives exactly the U+FFFDs
  // that decoding everything at once gives, because the replacement never looks past a bad byte.
  const size_t stable = internal::Utf8StablePrefixLength(pending_);
  std::string out = internal::Utf8Lossy(absl::string_view(pending_).substr(0, stable));
  pending_.erase(0, stable);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out = internal::Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace deltaserve::tokenizer
