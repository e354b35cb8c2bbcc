// The OpenAI request translation (api/openai/translate.h): every field into the GenerateRequest the gRPC
// path validates, type errors named by parameter, field paths of validation messages mapped back to the
// API's parameter names, and codes to HTTP statuses.
#include "api/openai/translate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace deltaserve::api::openai {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(OpenAiTranslate, ChatFieldsReachTheGenerateRequest) {
  absl::StatusOr<OpenAiRequest> r = ParseRequest(Endpoint::kChatCompletions, R"({
    "model": "m", "stream": true, "stream_options": {"include_usage": true},
    "messages": [{"role": "system", "content": "be brief"},
                 {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                 {"role": "assistant", "content": null, "reasoning_content": "hm",
                  "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
                 {"role": "tool", "content": "42"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "chat_template_kwargs": {"enable_thinking": false},
    "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": -1, "min_p": 0.1, "seed": 3,
    "stop": "END", "presence_penalty": 0.2, "frequency_penalty": -0.2, "repetition_penalty": 1.1,
    "logprobs": true, "top_logprobs": 2, "n": 1, "ignore_eos": true})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_TRUE(r->logprobs);
  const v1::GenerateRequest& g = r->generate;
  EXPECT_EQ(g.model(), "m");
  ASSERT_EQ(g.chat().messages_size(), 4);
  EXPECT_EQ(g.chat().messages(1).content(), "ab");
  EXPECT_EQ(g.chat().messages(2).reasoning_content(), "hm");
  EXPECT_EQ(g.chat().messages(2).tool_calls(0).name(), "f");
  EXPECT_EQ(g.chat().messages(2).tool_calls(0).arguments(), "{\"x\": 1}");
  EXPECT_EQ(g.chat().tools_json_size(), 1);
  EXPECT_FALSE(g.chat().enable_thinking());
  const v1::SamplingParams& s = g.sampling();
  EXPECT_EQ(s.max_tokens(), 7);
  EXPECT_DOUBLE_EQ(s.temperature(), 0.5);
  EXPECT_FALSE(s.has_top_k());  // -1: off
  EXPECT_EQ(s.seed(), 3u);
  ASSERT_EQ(s.stop_size(), 1);
  EXPECT_EQ(s.stop(0), "END");
  EXPECT_EQ(s.logprobs(), 2);
  EXPECT_TRUE(s.ignore_eos());
}

TEST(OpenAiTranslate, CompletionPromptsAndEcho) {
  absl::StatusOr<OpenAiRequest> ids = ParseRequest(Endpoint::kCompletions, R"({"prompt": [1, 2, 3], "logprobs": 4})");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->generate.token_ids().ids_size(), 3);
  EXPECT_EQ(ids->generate.sampling().logprobs(), 4);
  absl::StatusOr<OpenAiRequest> text = ParseRequest(Endpoint::kCompletions, R"({"prompt": ["hi"], "echo": true})");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->generate.prompt(), "hi");
  EXPECT_EQ(text->echo_prefix, "hi");
  EXPECT_FALSE(ParseRequest(Endpoint::kCompletions, R"({"prompt": [1], "echo": true})").ok());
}

TEST(OpenAiTranslate, BadTypesAreNamedByParameter) {
  const struct {
    Endpoint endpoint;
    const char* body;
    const char* param;
  } cases[] = {
      {Endpoint::kChatCompletions, R"({"messages": [], "temperature": "hot"})", "temperature"},
      {Endpoint::kChatCompletions, R"({"messages": [], "max_tokens": 1.5})", "max_tokens"},
      {Endpoint::kChatCompletions, R"({"messages": [], "max_tokens": 99999999999})", "max_tokens"},
      {Endpoint::kChatCompletions, R"({"messages": [], "n": 17})", "n"},
      {Endpoint::kChatCompletions, R"({"messages": [], "seed": -1})", "seed"},
      {Endpoint::kChatCompletions, R"({"messages": [], "stop": [1]})", "stop[0]"},
      {Endpoint::kChatCompletions, R"({"messages": [], "top_logprobs": 2})", "top_logprobs"},
      {Endpoint::kChatCompletions, R"({"messages": [], "stream_options": {"include_usage": true}})",
       "stream_options"},
      {Endpoint::kChatCompletions, R"({"messages": [{"role": 1}]})", "messages[0].role"},
      {Endpoint::kChatCompletions, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0]"},
      {Endpoint::kChatCompletions, R"({"messages": "hi"})", "messages"},
      {Endpoint::kChatCompletions, R"({})", "messages"},
      {Endpoint::kChatCompletions, R"([])", "body"},
      {Endpoint::kChatCompletions, R"({"messages": [], "model": 3})", "model"},
      {Endpoint::kCompletions, R"({"prompt": {"a": 1}})", "prompt"},
      {Endpoint::kCompletions, R"({"prompt": [1, "a"]})", "prompt[1]"},
      {Endpoint::kCompletions, R"({"prompt": "x", "suffix": "y"})", "suffix"},
      {Endpoint::kCompletions, R"({not json)", "body"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<OpenAiRequest> r = ParseRequest(c.endpoint, c.body);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.body;
    EXPECT_THAT(std::string(r.status().message()), StartsWith(std::string(c.param) + ": ")) << c.body;
    EXPECT_EQ(ParamOf(c.endpoint, std::string(r.status().message())), c.param) << c.body;
  }
}

TEST(OpenAiTranslate, ValidationPathsBecomeParameters) {
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "sampling.max_tokens must be in [1, 4095], got -3"), "max_tokens");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "sampling.logprobs: at most 20"), "top_logprobs");
  EXPECT_EQ(ParamOf(Endpoint::kCompletions, "sampling.logprobs: at most 20"), "logprobs");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "chat.messages[2].role: unknown"), "messages[2].role");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "chat.tools_json[0]: not JSON"), "tools[0]");
  EXPECT_EQ(ParamOf(Endpoint::kCompletions, "token_ids.ids[4]: id 9999 is outside"), "prompt[4]");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "input: the prompt tokenizes to no tokens"), "messages");
  EXPECT_EQ(ParamOf(Endpoint::kCompletions, "input: the prompt tokenizes to no tokens"), "prompt");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "model: \"x\" is not served"), "model");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, "the server is shutting down"), "");
  EXPECT_EQ(ParamOf(Endpoint::kChatCompletions, ""), "");
}

TEST(OpenAiTranslate, CodesBecomeHttpStatuses) {
  EXPECT_EQ(ToHttpError(absl::InvalidArgumentError("x"), "p").http_status, 400);
  EXPECT_EQ(ToHttpError(absl::FailedPreconditionError("x"), "").http_status, 400);
  EXPECT_EQ(ToHttpError(absl::UnauthenticatedError("x"), "").http_status, 401);
  EXPECT_EQ(ToHttpError(absl::NotFoundError("x"), "").http_status, 404);
  EXPECT_EQ(ToHttpError(absl::ResourceExhaustedError("queue full"), "").http_status, 429);
  EXPECT_EQ(ToHttpError(absl::ResourceExhaustedError("body over --max-request-bytes 5"), "").http_status, 413);
  EXPECT_EQ(ToHttpError(absl::UnavailableError("x"), "").http_status, 503);
  EXPECT_EQ(ToHttpError(absl::InternalError("x"), "").http_status, 500);
  const nlohmann::json body = ToHttpError(absl::InvalidArgumentError("max_tokens: bad"), "max_tokens").body;
  EXPECT_EQ(body["error"]["param"], "max_tokens");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["message"], "max_tokens: bad");
  EXPECT_EQ(body["error"]["code"], 400);
  EXPECT_TRUE(ToHttpError(absl::InternalError("x"), "").body["error"]["param"].is_null());
}

TEST(OpenAiTranslate, RequestTimeoutHeader) {
  absl::StatusOr<std::optional<absl::Duration>> none = ParseRequestTimeout(nullptr);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  absl::StatusOr<std::optional<absl::Duration>> t = ParseRequestTimeout(" 2.5 ");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(**t, absl::Milliseconds(2500));
  for (const char* bad : {"", "0", "-1", "soon", "1e9", "nan", "inf", "3s"}) {
    absl::StatusOr<std::optional<absl::Duration>> b = ParseRequestTimeout(bad);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    // The error names the header as its param, as a body field's error names the field.
    EXPECT_EQ(ParamOf(Endpoint::kCompletions, std::string(b.status().message())), kRequestTimeoutHeader) << bad;
  }
}

}  // namespace
}  // namespace deltaserve::api::openai
