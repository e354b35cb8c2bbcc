// Renders a conversation into Qwen's ChatML prompt text exactly as transformers' apply_chat_template does
// with Qwen3's Jinja chat template, written as C++ logic (no template engine), plus an OpenAI-style reader.
#ifndef DELTASERVE_SERVER_TOKENIZER_CHAT_FORMAT_H_
#define DELTASERVE_SERVER_TOKENIZER_CHAT_FORMAT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::tokenizer {

// The reference is the "chat_template" of Qwen3's tokenizer_config.json (tests/data/qwen3-tokenizer).
// Qwen3.5 uses the same ChatML family; its own template was not available, so where it differs from
// Qwen3's the output follows Qwen3.
//
// Where the template would raise, RenderChat and ParseChatMessages return InvalidArgument naming the
// message index and the field. Deliberately stricter than the template, which silently drops them: a
// role other than system/user/assistant/tool, and tool calls or reasoning_content on a non-assistant
// message.

struct ToolCall {
  std::string name;
  // Written into the prompt verbatim, so it must already be JSON text: the template copies a string
  // argument unchanged and only re-serializes a structured one (ParseChatMessages does that part).
  std::string arguments;
};

struct ChatMessage {
  std::string role;  // system, user, assistant or tool
  std::string content;
  // Assistant only. Absent and present-but-empty differ in the template: when absent, reasoning is parsed
  // out of a "<think>...</think>" prefix of `content`; when present, `content` is taken as it is.
  std::optional<std::string> reasoning_content;
  std::vector<ToolCall> tool_calls;  // assistant only
};

struct ChatOptions {
  bool add_generation_prompt = true;
  // false appends an empty "<think>\n\n</think>\n\n" after the generation prompt, which is how Qwen3 is
  // told to answer without reasoning.
  bool enable_thinking = true;
  // Tool schemas, one JSON object per entry (any formatting: they are re-serialized as Python's
  // json.dumps writes them, keys in the given order, which is what the model saw in training).
  std::vector<std::string> tools_json;
};

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages, const ChatOptions& options);

// Reads an OpenAI-style JSON array of messages: {"role", "content", "reasoning_content"?, "tool_calls"?:
// [{"type": "function", "function": {"name", "arguments"}}]} (a tool call without the "function" wrapper
// is accepted too, as the template does). "arguments" may be a JSON string (kept verbatim) or any JSON
// value (serialized as the template's tojson does). Other fields ("tool_call_id", "name") are ignored, as
// the template ignores them. Content must be a string: a null content (common on OpenAI tool-call
// messages) or content parts make the template fail, so they are errors here too.
absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(absl::string_view json);

// Splits a JSON array of tool schemas into ChatOptions::tools_json entries.
absl::StatusOr<std::vector<std::string>> ParseChatTools(absl::string_view json);

// Serializes a JSON document as Python's json.dumps(x, ensure_ascii=False) does (", " and ": "
// separators, keys in document order, Python's float repr), which is the template's tojson filter.
// Exposed for tests.
absl::StatusOr<std::string> PythonJsonDumps(absl::string_view json);

}  // namespace deltaserve::tokenizer

#endif  // DELTASERVE_SERVER_TOKENIZER_CHAT_FORMAT_H_
