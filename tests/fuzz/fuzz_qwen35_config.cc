// A checkpoint's config.json from outside: every field, nested text_config, layer types, rope settings.
#include <cstdint>
#include "absl/strings/string_view.h"

#include "models/qwen35/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)deltaserve::models::qwen35::ParseQwen35Config(
      absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
