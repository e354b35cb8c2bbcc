// Splits the text a Qwen3-family model generated for an assistant turn the way the chat format writes
// one: reasoning in a leading <think>...</think>, the answer, and tool calls in <tool_call> blocks.
#ifndef DELTASERVE_SERVER_TOKENIZER_ASSISTANT_OUTPUT_H_
#define DELTASERVE_SERVER_TOKENIZER_ASSISTANT_OUTPUT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "tokenizer/chat_format.h"

namespace deltaserve::tokenizer {

struct AssistantOutput {
  std::optional<std::string> reasoning;  // set when the text starts with "<think>" (whitespace aside)
  std::string content;                   // the answer, without the reasoning and the parsed tool calls
  std::vector<ToolCall> tool_calls;      // blocks holding {"name": string, "arguments": ...}, in order
};

// The whole turn at once. Reasoning is the text between a leading "<think>" and the first "</think>"
// (newlines trimmed; a turn cut before "</think>" is all reasoning). With `parse_tool_calls`, every
// "<tool_call>{...}</tool_call>" block whose JSON names a function becomes a ToolCall ("arguments"
// serialized as JSON text) and leaves the content; a block that does not parse stays in the content.
AssistantOutput ParseAssistantOutput(absl::string_view text, bool parse_tool_calls);

// The same split while the text streams in: Push returns the new reasoning and content text that can be
// told apart so far (it holds back what could still become a tag); Finish returns the rest and the tool
// calls. Content from the first "<tool_call>" on is held back until Finish (with `parse_tool_calls`).
class AssistantOutputStream {
 public:
  explicit AssistantOutputStream(bool parse_tool_calls) : parse_tool_calls_(parse_tool_calls) {}

  struct Delta {
    std::string reasoning;
    std::string content;
  };
  Delta Push(absl::string_view text);
  // The held-back text, as ParseAssistantOutput would split the whole turn.
  AssistantOutput Finish();

 private:
  enum class Mode { kStart, kReasoning, kContent, kToolCalls };
  Delta Drain(bool final);

  bool parse_tool_calls_;
  Mode mode_ = Mode::kStart;
  std::string pending_;               // pushed, not yet returned
  bool reasoning_started_ = false;    // some reasoning returned (its leading newlines are behind it)
  bool strip_content_start_ = false;  // "</think>" just passed: the newlines after it are the format's
};

}  // namespace deltaserve::tokenizer

#endif  // DELTASERVE_SERVER_TOKENIZER_ASSISTANT_OUTPUT_H_
