// The gRPC API end to end on a golden random checkpoint: streamed greedy tokens equal transformers',
// concurrent streams equal solo runs, client cancellation frees the slot, bad requests are refused with
// the right code and field, Tokenize without a tokenizer is FAILED_PRECONDITION, ListModels lists it.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "api/models_service.h"
#include "api/text_generation_service.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"
#include "engine/generation_config.h"
#include "model/golden.h"

namespace deltaserve::api {
namespace {

using ::testing::HasSubstr;
using deltaserve::testing::Golden;
using deltaserve::testing::ReadGolden;

constexpr int64_t kSlots = 4;

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    golden_ = new Golden(ReadGolden("flat_untied"));
    models::qwen35::ModelOptions mo;
    mo.max_seqs = kSlots;
    mo.max_model_len = 512;
    auto model = models::qwen35::Qwen35Model::Load(golden_->dir, mo);
    ASSERT_TRUE(model.ok()) << model.status();
    const int64_t vocab = (*model)->config().vocab_size;
    auto engine = engine::Engine::Start(*std::move(model), nullptr, engine::EngineOptions{});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = engine->release();
    served_ = new ServedModel;
    served_->name = "golden";
    served_->engine = engine_;
    auto gen = engine::LoadGenerationConfig(golden_->dir);
    ASSERT_TRUE(gen.ok()) << gen.status();
    served_->defaults = engine::DefaultSamplingParams(*gen, vocab);
    registry_ = new ModelRegistry({served_});
    text_ = new TextGenerationService(registry_);
    models_ = new ModelsService(registry_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(text_);
    builder.RegisterService(models_);
    server_ = builder.BuildAndStart().release();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    channel_ = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  static void TearDownTestSuite() {
    if (engine_) engine_->Shutdown(absl::ZeroDuration());
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    delete server_;
    delete channel_;
    delete text_;
    delete models_;
    delete registry_;
    delete served_;
    delete engine_;
    delete golden_;
  }

  struct Result {
    grpc::Status status;
    std::vector<int32_t> tokens;
    std::vector<v1::GenerateResponse> responses;
  };

  static Result Generate(const v1::GenerateRequest& request, int seconds = 120) {
    auto stub = v1::TextGeneration::NewStub(*channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    auto reader = stub->Generate(&ctx, request);
    Result r;
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      r.tokens.insert(r.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
      r.responses.push_back(resp);
    }
    r.status = reader->Finish();
    return r;
  }

  static v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
    v1::GenerateRequest req;
    req.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
    req.mutable_sampling()->set_temperature(0);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.mutable_sampling()->set_ignore_eos(true);
    return req;
  }

  static inline Golden* golden_ = nullptr;
  static inline engine::Engine* engine_ = nullptr;
  static inline ServedModel* served_ = nullptr;
  static inline ModelRegistry* registry_ = nullptr;
  static inline TextGenerationService* text_ = nullptr;
  static inline ModelsService* models_ = nullptr;
  static inline grpc::Server* server_ = nullptr;
  static inline std::shared_ptr<grpc::Channel>* channel_ = nullptr;
};

TEST_F(ServerTest, GreedyStreamEqualsGolden) {
  const int n = static_cast<int>(golden_->greedy_tokens.size());
  v1::GenerateRequest req = Greedy(golden_->greedy_prompt, n);
  req.set_request_id("greedy-1");
  Result r = Generate(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, golden_->greedy_tokens);
  ASSERT_FALSE(r.responses.empty());
  for (const auto& resp : r.responses) EXPECT_EQ(resp.request_id(), "greedy-1");
  for (size_t i = 0; i + 1 < r.responses.size(); ++i)
    EXPECT_EQ(r.responses[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
  const v1::GenerateResponse& last = r.responses.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), static_cast<int>(golden_->greedy_prompt.size()));
  EXPECT_EQ(last.usage().completion_tokens(), n);
  EXPECT_TRUE(last.has_seed());
}

TEST_F(ServerTest, ConcurrentStreamsEqualSolo) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) {
    // Distinct prompts of different lengths: golden prompts, some cut short.
    const auto& ids = golden_->prompts[i % golden_->prompts.size()].ids;
    const int64_t len = std::max<int64_t>(1, static_cast<int64_t>(ids.size()) - i / 2);
    std::vector<int32_t> p(ids.begin(), ids.begin() + len);
    prompts.push_back(p);
  }
  std::vector<std::vector<int32_t>> solo;
  for (const auto& p : prompts) {
    Result r = Generate(Greedy(p, 12));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    solo.push_back(r.tokens);
  }
  std::vector<std::future<Result>> futures;
  for (const auto& p : prompts) futures.push_back(std::async(std::launch::async, [p] { return Generate(Greedy(p, 12)); }));
  for (size_t i = 0; i < futures.size(); ++i) {
    Result r = futures[i].get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens, solo[i]) << "stream " << i;
  }
}

TEST_F(ServerTest, CancelFreesTheSlot) {
  // Fill every slot with long streams, read one message of each, cancel them all.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>> readers;
  auto stub = v1::TextGeneration::NewStub(*channel_);
  for (int i = 0; i < kSlots; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub->Generate(contexts.back().get(), Greedy(golden_->greedy_prompt, 400)));
    v1::GenerateResponse resp;
    ASSERT_TRUE(readers.back()->Read(&resp));
  }
  for (auto& c : contexts) c->TryCancel();
  for (auto& r : readers) {
    v1::GenerateResponse resp;
    while (r->Read(&resp)) {
    }
    EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The engine frees the slots within a step.
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (engine_->stats().running > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(engine_->stats().running, 0);
  Result next = Generate(Greedy(golden_->greedy_prompt, 4), 60);
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.tokens.size(), 4u);
}

TEST_F(ServerTest, InvalidArgumentsNameTheField) {
  v1::GenerateRequest empty;
  empty.mutable_token_ids();
  Result r = Generate(empty);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("token_ids.ids"));
  EXPECT_TRUE(r.responses.empty());

  v1::GenerateRequest none;
  r = Generate(none);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("input"));

  v1::GenerateRequest temp = Greedy(golden_->greedy_prompt, 4);
  temp.mutable_sampling()->set_temperature(-1);
  r = Generate(temp);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("sampling.temperature"));

  v1::GenerateRequest unknown = Greedy(golden_->greedy_prompt, 4);
  unknown.set_model("no-such-model");
  r = Generate(unknown);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(r.status.error_message(), HasSubstr("golden"));

  v1::GenerateRequest too_many = Greedy(golden_->greedy_prompt, 100000);
  r = Generate(too_many);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("sampling.max_tokens"));

  v1::GenerateRequest no_room = Greedy(golden_->greedy_prompt, 511);
  r = Generate(no_room);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("max_model_len"));

  v1::GenerateRequest bad_id = Greedy({1, 2, 1 << 30}, 4);
  r = Generate(bad_id);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("token_ids.ids[2]"));

  v1::GenerateRequest long_id = Greedy(golden_->greedy_prompt, 4);
  long_id.set_request_id(std::string(129, 'x'));
  r = Generate(long_id);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("request_id"));
}

TEST_F(ServerTest, TokenizeWithoutTokenizerIsFailedPrecondition) {
  auto stub = v1::TextGeneration::NewStub(*channel_);
  grpc::ClientContext ctx;
  v1::TokenizeRequest req;
  req.set_text("hello");
  v1::TokenizeResponse resp;
  grpc::Status st = stub->Tokenize(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("tokenizer"));
}

TEST_F(ServerTest, ListModelsListsTheModel) {
  auto stub = v1::Models::NewStub(*channel_);
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  ASSERT_TRUE(stub->ListModels(&ctx, v1::ListModelsRequest(), &resp).ok());
  ASSERT_EQ(resp.models_size(), 1);
  EXPECT_EQ(resp.default_model(), "golden");
  const v1::ModelInfo& m = resp.models(0);
  EXPECT_EQ(m.name(), "golden");
  EXPECT_EQ(m.kind(), v1::MODEL_KIND_TEXT_GENERATION);
  EXPECT_EQ(m.max_model_len(), 512);
  EXPECT_EQ(m.max_num_seqs(), kSlots);
  EXPECT_EQ(m.limits().max_new_tokens(), 511);
  EXPECT_TRUE(m.ready());
  EXPECT_EQ(m.layer_types().linear_attention() + m.layer_types().full_attention(), m.num_layers());

  grpc::ClientContext ctx2;
  v1::GetModelRequest get;
  get.set_name("nope");
  v1::ModelInfo info;
  EXPECT_EQ(stub->GetModel(&ctx2, get, &info).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace deltaserve::api
