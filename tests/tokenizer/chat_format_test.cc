// The Qwen chat format against transformers' apply_chat_template with Qwen3's template: exact text and
// ids on the cases tools/make_chat_fixtures.py writes (DELTASERVE_CHAT_FIXTURES), and the errors.
#include "tokenizer/chat_format.h"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenizer/tokenizer.h"

namespace deltaserve::tokenizer {
namespace {

// Ordered: the tool schemas' key order is part of the expected text.
using Json = nlohmann::ordered_json;
using ::testing::HasSubstr;

struct Fixtures {
  Json data;
  std::unique_ptr<Tokenizer> tokenizer;
};

const Fixtures& Load() {
  static auto* fixtures = [] {
    auto* f = new Fixtures;
    const char* path = std::getenv("DELTASERVE_CHAT_FIXTURES");
    if (path == nullptr) {
      ADD_FAILURE() << "DELTASERVE_CHAT_FIXTURES is not set: run through ctest, or run "
                       "tools/make_chat_fixtures.py and point it at the output";
      return f;
    }
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    f->data = Json::parse(s.str(), nullptr, /*allow_exceptions=*/false);
    if (f->data.is_discarded()) {
      ADD_FAILURE() << "cannot read fixture " << path;
      return f;
    }
    auto tok = Tokenizer::FromFile(f->data["tokenizer"].get<std::string>());
    if (!tok.ok()) {
      ADD_FAILURE() << tok.status();
      return f;
    }
    f->tokenizer = *std::move(tok);
    return f;
  }();
  return *fixtures;
}

ChatOptions OptionsFrom(const Json& o) {
  ChatOptions options;
  options.add_generation_prompt = o.value("add_generation_prompt", true);
  options.enable_thinking = o.value("enable_thinking", true);
  if (o.contains("tools")) {
    for (const Json& tool : o["tools"]) options.tools_json.push_back(tool.dump());
  }
  return options;
}

TEST(ChatFormatFixtures, RenderMatchesTransformersTextAndIds) {
  const Fixtures& f = Load();
  ASSERT_NE(f.tokenizer, nullptr);
  int checked = 0;
  for (const Json& c : f.data["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    absl::StatusOr<std::vector<ChatMessage>> messages = ParseChatMessages(c["messages"].dump());
    ASSERT_TRUE(messages.ok()) << messages.status();
    absl::StatusOr<std::string> text = RenderChat(*messages, OptionsFrom(c["options"]));
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["expected_text"].get<std::string>());
    EXPECT_EQ(f.tokenizer->Encode(*text), c["expected_ids"].get<std::vector<int32_t>>());
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

// Whatever makes the template raise must be refused, with the field named.
TEST(ChatFormatFixtures, TemplateErrorsAreInvalidArgument) {
  const Fixtures& f = Load();
  int checked = 0;
  for (const Json& c : f.data["error_cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>() + " (transformers: " + c["error"].get<std::string>() + ")");
    absl::StatusOr<std::vector<ChatMessage>> messages = ParseChatMessages(c["messages"].dump());
    absl::Status status = messages.status();
    if (messages.ok()) status = RenderChat(*messages, OptionsFrom(c["options"])).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("messages")) << status;
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

ChatMessage Msg(std::string role, std::string content) {
  ChatMessage m;
  m.role = std::move(role);
  m.content = std::move(content);
  return m;
}

std::string ParseError(absl::string_view json) {
  absl::StatusOr<std::vector<ChatMessage>> m = ParseChatMessages(json);
  EXPECT_FALSE(m.ok()) << json;
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  return std::string(m.status().message());
}

TEST(ChatFormat, ParseErrorsNameTheIndexAndField) {
  EXPECT_THAT(ParseError("[{\"role\": \"user\", \"content\": \"a\"}"), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError("{\"role\": \"user\"}"), HasSubstr("must be a JSON array"));
  EXPECT_THAT(ParseError("[1]"), HasSubstr("messages[0]: must be an object"));
  EXPECT_THAT(ParseError(R"([{"content": "a"}])"), HasSubstr("messages[0].role: is missing"));
  EXPECT_THAT(ParseError(R"([{"role": 3, "content": "a"}])"),
              HasSubstr("messages[0].role: must be a string"));
  EXPECT_THAT(ParseError(R"([{"role": "user", "content": "a"}, {"role": "developer", "content": "b"}])"),
              HasSubstr("messages[1].role: unknown role \"developer\""));
  EXPECT_THAT(ParseError(R"([{"role": "user", "content": "a"}, {"role": "assistant"}])"),
              HasSubstr("messages[1].content: is missing"));
  EXPECT_THAT(ParseError(R"([{"role": "assistant", "content": null}])"),
              HasSubstr("messages[0].content: is null"));
  EXPECT_THAT(ParseError(R"([{"role": "user", "content": [{"type": "text", "text": "a"}]}])"),
              HasSubstr("messages[0].content: must be a string"));
  EXPECT_THAT(ParseError(R"([{"role": "assistant", "content": "", "reasoning_content": 1}])"),
              HasSubstr("messages[0].reasoning_content: must be a string or null"));
  EXPECT_THAT(ParseError(R"([{"role": "assistant", "content": "", "tool_calls": {}}])"),
              HasSubstr("messages[0].tool_calls: must be an array or null"));
  EXPECT_THAT(
      ParseError(
          R"([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}])"),
      HasSubstr("messages[0].tool_calls[0].function.name: is missing"));
  EXPECT_THAT(ParseError(R"([{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}])"),
              HasSubstr("messages[0].tool_calls[0].arguments: is missing"));
  EXPECT_THAT(
      ParseError(R"([{"role": "user", "content": "", "tool_calls": [{"name": "f", "arguments": "{}"}]}])"),
      HasSubstr("messages[0].tool_calls: only assistant messages"));
  EXPECT_THAT(ParseError(R"([{"role": "tool", "content": "", "reasoning_content": "r"}])"),
              HasSubstr("messages[0].reasoning_content: only assistant messages"));
}

TEST(ChatFormat, RenderErrors) {
  ChatOptions options;
  EXPECT_EQ(RenderChat({}, options).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status unknown = RenderChat({Msg("user", "a"), Msg("User", "b")}, options).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.message(), HasSubstr("messages[1].role: unknown role \"User\""));
  options.tools_json = {R"({"type": "function"})", "{not json"};
  absl::Status bad_tool = RenderChat({Msg("user", "a")}, options).status();
  EXPECT_EQ(bad_tool.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_tool.message(), HasSubstr("tools[1]: not valid JSON"));
  options.tools_json = {"[]"};
  EXPECT_THAT(RenderChat({Msg("user", "a")}, options).status().message(),
              HasSubstr("tools[0]: must be a JSON object"));
}

// Built directly (no JSON): an absent reasoning_content parses <think> out of the content; a present one,
// even empty, leaves the content alone.
TEST(ChatFormat, ReasoningAbsentAndEmptyDiffer) {
  ChatOptions options;
  options.add_generation_prompt = false;
  ChatMessage parsed{"assistant", "<think>\nr\n</think>\n\nanswer", std::nullopt, {}};
  ChatMessage given{"assistant", "<think>\nr\n</think>\n\nanswer", std::string(), {}};
  EXPECT_EQ(
      *RenderChat({Msg("user", "q"), parsed}, options),
      "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nanswer<|im_end|>\n");
  EXPECT_EQ(*RenderChat({Msg("user", "q"), given}, options),
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
            "<think>\nr\n</think>\n\nanswer<|im_end|>\n");
  options.add_generation_prompt = true;
  options.enable_thinking = false;
  EXPECT_EQ(*RenderChat({Msg("user", "q")}, options),
            "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatFormat, ParseChatToolsSplitsTheArray) {
  absl::StatusOr<std::vector<std::string>> tools = ParseChatTools(R"([{"b": 1, "a": 2}, {"c": []}])");
  ASSERT_TRUE(tools.ok()) << tools.status();
  ASSERT_EQ(tools->size(), 2u);
  EXPECT_EQ(*PythonJsonDumps((*tools)[0]), R"({"b": 1, "a": 2})");
  EXPECT_FALSE(ParseChatTools("{}").ok());
}

TEST(ChatFormat, PythonJsonDumpsMatchesJsonDumps) {
  // Expected strings are what Python's json.dumps(json.loads(x), ensure_ascii=False) prints.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"1.0", "1.0"},
      {"100", "100"},
      {"1E2", "100.0"},
      {"-0", "0"},
      {"-0.0", "-0.0"},
      {"0.0001", "0.0001"},
      {"0.00001", "1e-05"},
      {"1e15", "1000000000000000.0"},
      {"1e16", "1e+16"},
      {"123456789.125", "123456789.125"},
      {"0.1", "0.1"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"},
      {"5e-324", "5e-324"},
      {"-2.5e-7", "-2.5e-07"},
      {"18446744073709551615", "18446744073709551615"},
      {"-9223372036854775808", "-9223372036854775808"},
      {R"("a\u0001\u001f\u007f\b\f\/é")", "\"a\\u0001\\u001f\x7f\\b\\f/é\""},
      {R"({"z": [], "a": {}, "m": [true, false, null]})", R"({"z": [], "a": {}, "m": [true, false, null]})"},
  };
  for (const auto& [in, want] : cases) {
    absl::StatusOr<std::string> got = PythonJsonDumps(in);
    ASSERT_TRUE(got.ok()) << in << ": " << got.status();
    EXPECT_EQ(*got, want) << in;
  }
}

}  // namespace
}  // namespace deltaserve::tokenizer
