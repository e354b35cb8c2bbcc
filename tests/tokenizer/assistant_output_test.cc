// ParseAssistantOutput and AssistantOutputStream (tokenizer/assistant_output.h): reasoning, content and tool
// calls split out of generated text as the chat format writes them; the stream, fed the same text in
// pieces of every size, adds up to the whole-text split.
#include "tokenizer/assistant_output.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "tokenizer/chat_format.h"

namespace deltaserve::tokenizer {
namespace {

TEST(AssistantOutput, PlainTextIsAllContent) {
  AssistantOutput out = ParseAssistantOutput("Hello <b>there</b>\n", true);
  EXPECT_FALSE(out.reasoning.has_value());
  EXPECT_EQ(out.content, "Hello <b>there</b>\n");
  EXPECT_TRUE(out.tool_calls.empty());
}

TEST(AssistantOutput, ReasoningThenAnswer) {
  AssistantOutput out = ParseAssistantOutput("<think>\nLet me see.\n</think>\n\nBlue.", false);
  ASSERT_TRUE(out.reasoning.has_value());
  EXPECT_EQ(*out.reasoning, "Let me see.");
  EXPECT_EQ(out.content, "Blue.");
  AssistantOutput cut = ParseAssistantOutput("<think>\nstill thinking", false);
  EXPECT_EQ(cut.reasoning.value_or("-"), "still thinking");
  EXPECT_EQ(cut.content, "");
  // "</think>" without a leading "<think>" is not reasoning: the text is the answer.
  EXPECT_EQ(ParseAssistantOutput("a</think>b", false).content, "a</think>b");
}

TEST(AssistantOutput, ToolCallsInTheFormatRenderChatWrites) {
  // An assistant turn rendered by the chat format, generated text being what follows the generation prompt.
  ChatMessage m{"assistant", "Checking.", std::string("need weather"),
                {{"get_weather", R"({"city": "Paris"})"}, {"now", "{}"}}};
  absl::StatusOr<std::string> rendered = RenderChat({{"user", "hi", std::nullopt, {}}, m}, ChatOptions{false});
  ASSERT_TRUE(rendered.ok()) << rendered.status();
  const std::string prefix = "<|im_start|>assistant\n";
  const size_t at = rendered->rfind(prefix);
  ASSERT_NE(at, std::string::npos);
  std::string generated = rendered->substr(at + prefix.size());
  generated = generated.substr(0, generated.rfind("<|im_end|>"));
  AssistantOutput out = ParseAssistantOutput(generated, true);
  EXPECT_EQ(out.reasoning.value_or("-"), "need weather");
  EXPECT_EQ(out.content, "Checking.");
  ASSERT_EQ(out.tool_calls.size(), 2u);
  EXPECT_EQ(out.tool_calls[0].name, "get_weather");
  EXPECT_EQ(out.tool_calls[0].arguments, R"({"city":"Paris"})");
  EXPECT_EQ(out.tool_calls[1].name, "now");
  // Without tool parsing the blocks stay in the content.
  EXPECT_NE(ParseAssistantOutput(generated, false).content.find("<tool_call>"), std::string::npos);
}

TEST(AssistantOutput, BlocksThatDoNotParseStayInTheContent) {
  AssistantOutput out = ParseAssistantOutput("a<tool_call>\n{not json}\n</tool_call>b<tool_call>{\"x\": 1}", true);
  EXPECT_TRUE(out.tool_calls.empty());
  EXPECT_EQ(out.content, "a<tool_call>\n{not json}\n</tool_call>b<tool_call>{\"x\": 1}");
  AssistantOutput cut = ParseAssistantOutput("<tool_call>\n{\"name\": \"f\", \"arguments\": \"{}\"}", true);
  ASSERT_EQ(cut.tool_calls.size(), 1u);  // cut before its closing tag, but whole JSON
  EXPECT_EQ(cut.tool_calls[0].arguments, "{}");
}

TEST(AssistantOutput, TheStreamAddsUpToTheWholeSplitWhateverThePieces) {
  const std::string texts[] = {
      "Hello world",
      "  <think>\nhmm </thi nk> still\n</think>\n\nThe answer.",
      "<think>\nshort</think>Done<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2]}}\n</tool_call>",
      "<thin",
      "Text <tool_ca then more <tool_call>{\"name\": \"g\"}</tool_call> tail",
      "<think>never closed",
  };
  std::mt19937 rng(std::random_device{}());
  for (const std::string& text : texts) {
    for (bool tools : {false, true}) {
      const AssistantOutput whole = ParseAssistantOutput(text, tools);
      for (int trial = 0; trial < 50; ++trial) {
        AssistantOutputStream stream(tools);
        std::string reasoning, content;
        for (size_t i = 0; i < text.size();) {
          const size_t n = trial == 0 ? 1 : 1 + rng() % 6;
          AssistantOutputStream::Delta d = stream.Push(absl::string_view(text).substr(i, n));
          reasoning += d.reasoning;
          content += d.content;
          i += n;
        }
        AssistantOutput rest = stream.Finish();
        reasoning += rest.reasoning.value_or("");
        content += rest.content;
        SCOPED_TRACE(text + (tools ? " (tools)" : ""));
        EXPECT_EQ(reasoning, whole.reasoning.value_or(""));
        EXPECT_EQ(content, whole.content);
        ASSERT_EQ(rest.tool_calls.size(), whole.tool_calls.size());
        for (size_t k = 0; k < whole.tool_calls.size(); ++k) {
          EXPECT_EQ(rest.tool_calls[k].name, whole.tool_calls[k].name);
          EXPECT_EQ(rest.tool_calls[k].arguments, whole.tool_calls[k].arguments);
        }
      }
    }
  }
}

}  // namespace
}  // namespace deltaserve::tokenizer
