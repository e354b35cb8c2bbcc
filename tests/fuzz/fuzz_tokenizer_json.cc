// A tokenizer.json from outside: the model, vocabulary, merges, added tokens, normalizer, pre-tokenizer
// and decoder sections. What loads must then encode and decode a fixed text without failing.
#include <cstdint>
#include <cstdlib>
#include "absl/strings/string_view.h"

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tok = deltaserve::tokenizer::Tokenizer::FromJson(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!tok.ok()) return 0;
  const std::vector<int32_t> ids = (*tok)->Encode("Hello, world! 你好 <|im_start|>\n\t 12345");
  for (int32_t id : ids)
    if (id < 0 || id >= (*tok)->vocab_size()) std::abort();  // Encode only yields ids of the vocabulary
  (void)(*tok)->Decode(ids);
  return 0;
}
