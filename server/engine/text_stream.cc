// Incremental text with stop strings (see text_stream.h).
#include "engine/text_stream.h"

#include <algorithm>

namespace deltaserve::engine {

TextStream::TextStream(const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stop_strings)
    : stop_(std::move(stop_strings)) {
  if (tokenizer)
    decoder_ = std::make_unique<tokenizer::IncrementalDecoder>(tokenizer, /*skip_special_tokens=*/true);
  for (const std::string& s : stop_) hold_ = std::max(hold_, s.empty() ? size_t{0} : s.size() - 1);
}

std::string TextStream::Push(int32_t token) {
  if (stopped_ || !decoder_) return "";
  absl::StatusOr<std::string> delta = decoder_->Push(token);
  if (delta.ok()) text_ += *delta;
  // A stop string can only be new where the new text is, or straddle it by at most hold_ bytes.
  const size_t from = emitted_ > hold_ ? emitted_ - hold_ : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : stop_) {
    if (s.empty()) continue;
    const size_t at = text_.find(s, from);
    if (at != std::string::npos && at < cut) {
      cut = at;
      stop_string_ = s;
    }
  }
  size_t end;
  if (cut != std::string::npos) {
    stopped_ = true;
    end = std::max(cut, emitted_);
  } else {
    end = text_.size() > hold_ ? text_.size() - hold_ : 0;
    // Never split a UTF-8 character: back up over continuation bytes.
    while (end > emitted_ && end < text_.size() && (static_cast<unsigned char>(text_[end]) & 0xC0) == 0x80)
      --end;
  }
  if (end <= emitted_) return "";
  std::string out = text_.substr(emitted_, end - emitted_);
  emitted_ = end;
  return out;
}

std::string TextStream::Finish() {
  if (stopped_ || !decoder_) return "";
  text_ += decoder_->Flush();
  std::string out = text_.substr(std::min(emitted_, text_.size()));
  emitted_ = text_.size();
  return out;
}

}  // namespace deltaserve::engine
