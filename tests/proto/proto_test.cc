// The public contract's generated C++: every input form survives the wire, `optional` fields keep
// "unset" apart from zero, and the services expose the methods the server and clients are built on.
#include <google/protobuf/descriptor.h>

#include <string>

#include "deltaserve/v1/models.grpc.pb.h"
#include "deltaserve/v1/models.pb.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"
#include "deltaserve/v1/text_generation.pb.h"
#include "gtest/gtest.h"

namespace deltaserve::v1 {
namespace {

using ::google::protobuf::DescriptorPool;
using ::google::protobuf::MethodDescriptor;
using ::google::protobuf::ServiceDescriptor;

template <typename Message>
Message RoundTrip(const Message& in) {
  std::string wire;
  EXPECT_TRUE(in.SerializeToString(&wire));
  Message out;
  EXPECT_TRUE(out.ParseFromString(wire));
  return out;
}

TEST(GenerateRequestTest, PromptRoundTrips) {
  GenerateRequest req;
  req.set_model("qwen");
  req.set_request_id("req-1");
  req.set_prompt("Hello, wörld");
  req.mutable_sampling()->set_temperature(0.7);
  req.mutable_sampling()->add_stop("\n\n");

  GenerateRequest out = RoundTrip(req);
  EXPECT_EQ(out.input_case(), GenerateRequest::kPrompt);
  EXPECT_EQ(out.prompt(), "Hello, wörld");
  EXPECT_EQ(out.model(), "qwen");
  EXPECT_EQ(out.request_id(), "req-1");
  EXPECT_DOUBLE_EQ(out.sampling().temperature(), 0.7);
  ASSERT_EQ(out.sampling().stop_size(), 1);
  EXPECT_EQ(out.sampling().stop(0), "\n\n");
}

TEST(GenerateRequestTest, ChatRoundTrips) {
  GenerateRequest req;
  ChatInput* chat = req.mutable_chat();
  ChatMessage* user = chat->add_messages();
  user->set_role("user");
  user->set_content("What is the weather in Paris?");
  ChatMessage* assistant = chat->add_messages();
  assistant->set_role("assistant");
  assistant->set_reasoning_content("");  // present but empty: differs from unset in the template
  ToolCall* call = assistant->add_tool_calls();
  call->set_name("get_weather");
  call->set_arguments(R"({"city": "Paris"})");
  chat->set_enable_thinking(false);
  chat->add_tools_json(R"({"type": "function", "function": {"name": "get_weather"}})");

  GenerateRequest out = RoundTrip(req);
  ASSERT_EQ(out.input_case(), GenerateRequest::kChat);
  ASSERT_EQ(out.chat().messages_size(), 2);
  EXPECT_EQ(out.chat().messages(0).role(), "user");
  EXPECT_FALSE(out.chat().messages(0).has_reasoning_content());
  EXPECT_TRUE(out.chat().messages(1).has_reasoning_content());
  EXPECT_EQ(out.chat().messages(1).reasoning_content(), "");
  ASSERT_EQ(out.chat().messages(1).tool_calls_size(), 1);
  EXPECT_EQ(out.chat().messages(1).tool_calls(0).name(), "get_weather");
  EXPECT_EQ(out.chat().messages(1).tool_calls(0).arguments(), R"({"city": "Paris"})");
  ASSERT_TRUE(out.chat().has_enable_thinking());
  EXPECT_FALSE(out.chat().enable_thinking());
  EXPECT_EQ(out.chat().tools_json_size(), 1);
  EXPECT_FALSE(out.has_sampling());
}

TEST(GenerateRequestTest, TokenIdsRoundTrip) {
  GenerateRequest req;
  for (int32_t id : {0, 1, 151643, 248319}) req.mutable_token_ids()->add_ids(id);
  GenerateRequest out = RoundTrip(req);
  ASSERT_EQ(out.input_case(), GenerateRequest::kTokenIds);
  ASSERT_EQ(out.token_ids().ids_size(), 4);
  EXPECT_EQ(out.token_ids().ids(2), 151643);
  EXPECT_EQ(out.token_ids().ids(3), 248319);
}

TEST(GenerateRequestTest, InputIsOneOf) {
  GenerateRequest req;
  EXPECT_EQ(req.input_case(), GenerateRequest::INPUT_NOT_SET);
  req.set_prompt("x");
  req.mutable_token_ids()->add_ids(7);  // replaces the prompt
  EXPECT_EQ(req.input_case(), GenerateRequest::kTokenIds);
  EXPECT_EQ(RoundTrip(req).input_case(), GenerateRequest::kTokenIds);
  EXPECT_EQ(RoundTrip(GenerateRequest()).input_case(), GenerateRequest::INPUT_NOT_SET);
}

TEST(SamplingParamsTest, UnsetIsNotZero) {
  SamplingParams unset = RoundTrip(SamplingParams());
  EXPECT_FALSE(unset.has_temperature());
  EXPECT_FALSE(unset.has_top_k());
  EXPECT_FALSE(unset.has_top_p());
  EXPECT_FALSE(unset.has_min_p());
  EXPECT_FALSE(unset.has_repetition_penalty());
  EXPECT_FALSE(unset.has_seed());
  EXPECT_FALSE(unset.has_max_tokens());
  EXPECT_FALSE(unset.has_logprobs());

  // Zero is a real value for each of these (greedy, top-k off, seed 0, own logprob only, ...) and must
  // arrive as set; a plain proto3 scalar would drop it on the wire.
  SamplingParams zero;
  zero.set_temperature(0);
  zero.set_top_k(0);
  zero.set_top_p(0);
  zero.set_min_p(0);
  zero.set_repetition_penalty(0);
  zero.set_seed(0);
  zero.set_max_tokens(0);
  zero.set_logprobs(0);
  SamplingParams out = RoundTrip(zero);
  EXPECT_TRUE(out.has_temperature());
  EXPECT_TRUE(out.has_top_k());
  EXPECT_TRUE(out.has_top_p());
  EXPECT_TRUE(out.has_min_p());
  EXPECT_TRUE(out.has_repetition_penalty());
  EXPECT_TRUE(out.has_seed());
  EXPECT_TRUE(out.has_max_tokens());
  EXPECT_TRUE(out.has_logprobs());
  EXPECT_EQ(out.logprobs(), 0);

  // The full 64-bit seed range survives.
  SamplingParams big;
  big.set_seed(UINT64_MAX);
  EXPECT_EQ(RoundTrip(big).seed(), UINT64_MAX);
}

TEST(SamplingParamsTest, OptionalFieldsArePresenceTracked) {
  // Guards the contract itself: the fields documented "unset = model default" must keep presence, and
  // the ones documented "default off" must not need it.
  const auto* desc = SamplingParams::descriptor();
  for (const char* name : {"temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed",
                           "max_tokens", "logprobs"}) {
    const auto* field = desc->FindFieldByName(name);
    ASSERT_NE(field, nullptr) << name;
    EXPECT_TRUE(field->has_presence()) << name;
  }
  for (const char* name : {"presence_penalty", "frequency_penalty", "ignore_eos"}) {
    const auto* field = desc->FindFieldByName(name);
    ASSERT_NE(field, nullptr) << name;
    EXPECT_FALSE(field->has_presence()) << name;
  }
  EXPECT_TRUE(ChatInput::descriptor()->FindFieldByName("enable_thinking")->has_presence());
  EXPECT_TRUE(ChatMessage::descriptor()->FindFieldByName("reasoning_content")->has_presence());
}

TEST(GenerateResponseTest, LastMessageRoundTrips) {
  GenerateResponse resp;
  resp.set_request_id("req-1");
  resp.set_text("Paris.");
  resp.add_token_ids(12);
  resp.add_token_ids(151645);
  TokenLogprob* lp = resp.add_logprobs();
  lp->set_token_id(12);
  lp->set_logprob(-0.25f);
  TopLogprob* alt = lp->add_top_logprobs();
  alt->set_token_id(13);
  alt->set_logprob(-1.5f);
  resp.set_finish_reason(FINISH_REASON_STOP);
  resp.set_stop_token_id(151645);
  resp.mutable_usage()->set_prompt_tokens(10);
  resp.mutable_usage()->set_completion_tokens(2);
  resp.mutable_usage()->set_time_to_first_token_seconds(0.125);
  resp.mutable_usage()->set_total_seconds(0.5);
  resp.set_seed(0);

  GenerateResponse out = RoundTrip(resp);
  EXPECT_EQ(out.finish_reason(), FINISH_REASON_STOP);
  EXPECT_EQ(out.stop_reason_case(), GenerateResponse::kStopTokenId);
  EXPECT_EQ(out.stop_token_id(), 151645);
  EXPECT_EQ(out.token_ids_size(), 2);
  ASSERT_EQ(out.logprobs_size(), 1);
  EXPECT_FLOAT_EQ(out.logprobs(0).top_logprobs(0).logprob(), -1.5f);
  EXPECT_EQ(out.usage().completion_tokens(), 2);
  EXPECT_DOUBLE_EQ(out.usage().time_to_first_token_seconds(), 0.125);
  EXPECT_TRUE(out.has_seed());
  EXPECT_EQ(out.seed(), 0u);

  // A stop string, including the empty-looking case of a string that is set: presence is by oneof case.
  resp.set_stop_string("\n\n");
  out = RoundTrip(resp);
  EXPECT_EQ(out.stop_reason_case(), GenerateResponse::kStopString);
  EXPECT_EQ(out.stop_string(), "\n\n");

  // A mid-stream message carries no finish reason, usage, stop reason or seed.
  GenerateResponse mid = RoundTrip(GenerateResponse());
  EXPECT_EQ(mid.finish_reason(), FINISH_REASON_UNSPECIFIED);
  EXPECT_FALSE(mid.has_usage());
  EXPECT_EQ(mid.stop_reason_case(), GenerateResponse::STOP_REASON_NOT_SET);
  EXPECT_FALSE(mid.has_seed());
}

TEST(EnumTest, ZeroIsUnspecified) {
  EXPECT_EQ(FinishReason_Name(FinishReason(0)), "FINISH_REASON_UNSPECIFIED");
  EXPECT_EQ(FinishReason_Name(FINISH_REASON_CANCELLED), "FINISH_REASON_CANCELLED");
  EXPECT_EQ(FinishReason_Name(FINISH_REASON_ERROR), "FINISH_REASON_ERROR");
  EXPECT_EQ(ModelKind_Name(ModelKind(0)), "MODEL_KIND_UNSPECIFIED");
  EXPECT_EQ(ModelKind_Name(MODEL_KIND_TEXT_GENERATION), "MODEL_KIND_TEXT_GENERATION");
  EXPECT_EQ(ModelKind_Name(MODEL_KIND_VISION_DETECTION), "MODEL_KIND_VISION_DETECTION");
}

TEST(ModelInfoTest, RoundTrips) {
  ModelInfo info;
  info.set_name("qwen3.5-0.8b");
  info.set_kind(MODEL_KIND_TEXT_GENERATION);
  info.set_architecture("Qwen3_5ForConditionalGeneration");
  info.set_dtype("bfloat16");
  info.set_device("cuda:0");
  info.set_ready(true);
  info.set_num_layers(24);
  info.mutable_layer_types()->set_linear_attention(18);
  info.mutable_layer_types()->set_full_attention(6);
  info.set_vocab_size(248320);
  info.set_max_model_len(8192);
  info.set_inverse_method("neumann");
  info.set_state_dtype("int8");
  info.mutable_limits()->set_max_prompt_tokens(8191);
  info.mutable_default_sampling()->set_temperature(0.6);
  info.add_eos_token_ids(248044);

  ListModelsResponse list;
  *list.add_models() = info;
  list.set_default_model(info.name());
  ListModelsResponse out = RoundTrip(list);
  ASSERT_EQ(out.models_size(), 1);
  EXPECT_EQ(out.default_model(), "qwen3.5-0.8b");
  EXPECT_EQ(out.models(0).layer_types().full_attention(), 6);
  EXPECT_EQ(out.models(0).limits().max_prompt_tokens(), 8191);
  EXPECT_DOUBLE_EQ(out.models(0).default_sampling().temperature(), 0.6);
  EXPECT_FALSE(out.models(0).default_sampling().has_top_k());
}

const MethodDescriptor* FindMethod(const std::string& service, const std::string& method) {
  const ServiceDescriptor* s = DescriptorPool::generated_pool()->FindServiceByName(service);
  if (s == nullptr) return nullptr;
  return s->FindMethodByName(method);
}

void ExpectMethod(const std::string& service, const std::string& method, const std::string& input,
                  const std::string& output, bool server_streaming) {
  SCOPED_TRACE(service + "." + method);
  const MethodDescriptor* m = FindMethod(service, method);
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->input_type()->full_name(), input);
  EXPECT_EQ(m->output_type()->full_name(), output);
  EXPECT_FALSE(m->client_streaming());
  EXPECT_EQ(m->server_streaming(), server_streaming);
}

TEST(ServiceTest, TextGenerationMethods) {
  const ServiceDescriptor* s = DescriptorPool::generated_pool()->FindServiceByName("deltaserve.v1.TextGeneration");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->method_count(), 3);
  ExpectMethod("deltaserve.v1.TextGeneration", "Generate", "deltaserve.v1.GenerateRequest",
               "deltaserve.v1.GenerateResponse", /*server_streaming=*/true);
  ExpectMethod("deltaserve.v1.TextGeneration", "Tokenize", "deltaserve.v1.TokenizeRequest",
               "deltaserve.v1.TokenizeResponse", false);
  ExpectMethod("deltaserve.v1.TextGeneration", "Detokenize", "deltaserve.v1.DetokenizeRequest",
               "deltaserve.v1.DetokenizeResponse", false);
  // The generated stub agrees with the descriptor on the name clients dial.
  EXPECT_STREQ(TextGeneration::service_full_name(), "deltaserve.v1.TextGeneration");
}

TEST(ServiceTest, ModelsMethods) {
  const ServiceDescriptor* s = DescriptorPool::generated_pool()->FindServiceByName("deltaserve.v1.Models");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->method_count(), 2);
  ExpectMethod("deltaserve.v1.Models", "ListModels", "deltaserve.v1.ListModelsRequest",
               "deltaserve.v1.ListModelsResponse", false);
  ExpectMethod("deltaserve.v1.Models", "GetModel", "deltaserve.v1.GetModelRequest", "deltaserve.v1.ModelInfo",
               false);
  EXPECT_STREQ(Models::service_full_name(), "deltaserve.v1.Models");
}

TEST(ServiceTest, FilesUseTheV1PackagePaths) {
  // Clients and reflection see these paths; the import in models.proto depends on them.
  const auto* pool = DescriptorPool::generated_pool();
  const auto* tg = pool->FindFileByName("deltaserve/v1/text_generation.proto");
  const auto* models = pool->FindFileByName("deltaserve/v1/models.proto");
  ASSERT_NE(tg, nullptr);
  ASSERT_NE(models, nullptr);
  EXPECT_EQ(tg->package(), "deltaserve.v1");
  EXPECT_EQ(models->package(), "deltaserve.v1");
  ASSERT_EQ(models->dependency_count(), 1);
  EXPECT_EQ(models->dependency(0), tg);
}

}  // namespace
}  // namespace deltaserve::v1
