// Chat messages from outside (the JSON a client sends: roles, content, reasoning, tool calls and their
// arguments), parsed and rendered with the Qwen3.5 chat format, thinking on and off, with tools.
#include <cstdint>
#include "absl/strings/string_view.h"

#include "tokenizer/chat_format.h"

namespace tk = deltaserve::tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto messages = tk::ParseChatMessages(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!messages.ok()) return 0;
  for (bool thinking : {true, false}) {
    tk::ChatOptions options;
    options.enable_thinking = thinking;
    if (thinking) options.tools_json = {R"({"type":"function","function":{"name":"f","parameters":{}}})"};
    (void)tk::RenderChat(*messages, options);
  }
  return 0;
}
