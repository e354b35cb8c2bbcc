// Text and ids from outside through the shipped Qwen3 tokenizer: Encode (any bytes, invalid UTF-8
// included, with and without special tokens), Decode / DecodeBytes of any ids, the incremental decoder.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include "absl/strings/string_view.h"

#include "tokenizer/tokenizer.h"

namespace tk = deltaserve::tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<tk::Tokenizer> tok = [] {
    auto t = tk::Tokenizer::FromFile(DELTASERVE_FUZZ_TOKENIZER);
    if (!t.ok()) std::abort();
    return *std::move(t);
  }();
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool special : {true, false}) {
    const std::vector<int32_t> ids = tok->Encode(text, special);
    for (int32_t id : ids)
      if (id < 0 || id >= tok->vocab_size()) std::abort();
    if (!tok->Decode(ids).ok()) std::abort();  // ids Encode made always decode
  }
  // The same bytes read as ids (4 bytes each): out-of-range ones must be refused, not read.
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  (void)tok->Decode(raw, /*skip_special_tokens=*/true);
  (void)tok->DecodeBytes(raw);
  tk::IncrementalDecoder dec(tok.get());
  for (int32_t id : raw) (void)dec.Push(id);
  (void)dec.Flush();
  return 0;
}
