// Streams a request's generated text: ids in, complete UTF-8 text out, held back while its tail could
// still grow into a stop string, and cut before the first stop string that appears.
#ifndef DELTASERVE_SERVER_ENGINE_TEXT_STREAM_H_
#define DELTASERVE_SERVER_ENGINE_TEXT_STREAM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace deltaserve::engine {

class TextStream {
 public:
  // `tokenizer` may be null (a checkpoint without tokenizer.json): then there is no text, only ids, and
  // stop strings cannot match (callers refuse them up front).
  TextStream(const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stop_strings);

  // Adds one generated token; returns the text that is now final. After a stop string completes,
  // stopped() is true and nothing past it is ever returned.
  std::string Push(int32_t token);
  // The text still held back (when generation ends for another reason than a stop string).
  std::string Finish();

  bool stopped() const { return stopped_; }
  const std::string& stop_string() const { return stop_string_; }

 private:
  std::unique_ptr<tokenizer::IncrementalDecoder> decoder_;
  std::vector<std::string> stop_;
  size_t hold_ = 0;     // longest stop string - 1: a tail this long may still become one
  std::string text_;    // all text so far
  size_t emitted_ = 0;  // bytes of text_ already returned
  bool stopped_ = false;
  std::string stop_string_;
};

}  // namespace deltaserve::engine

#endif  // DELTASERVE_SERVER_ENGINE_TEXT_STREAM_H_
