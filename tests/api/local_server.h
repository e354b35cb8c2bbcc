// Test harness: a golden checkpoint served by a real engine and gRPC server on a loopback port, with a
// channel to it and a helper that runs one Generate stream to the end.
#ifndef DELTASERVE_TESTS_API_LOCAL_SERVER_H_
#define DELTASERVE_TESTS_API_LOCAL_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "api/models_service.h"
#include "api/text_generation_service.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"
#include "engine/engine.h"
#include "runner/model_runner.h"
#include "engine/generation_config.h"

namespace deltaserve::api::testing {

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::vector<v1::GenerateResponse> responses;
};

inline StreamResult RunStream(const std::shared_ptr<grpc::Channel>& channel, const v1::GenerateRequest& request,
                              std::chrono::milliseconds timeout) {
  auto stub = v1::TextGeneration::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  auto reader = stub->Generate(&ctx, request);
  StreamResult r;
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    r.tokens.insert(r.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
    r.responses.push_back(resp);
  }
  r.status = reader->Finish();
  return r;
}

inline v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_tokens) {
  v1::GenerateRequest req;
  req.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  req.mutable_sampling()->set_temperature(0);
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_ignore_eos(true);
  return req;
}

// Owns everything a served model needs, torn down in the right order (server, then engine).
class LocalServer {
 public:
  // Loads the checkpoint at `dir` with `slots` sequences of `max_model_len`, serves it as "golden".
  // `configure` (optional) may adjust the engine options once the model is loaded (e.g. attach metrics).
  using Configure = std::function<void(const models::qwen35::Qwen35Model&, engine::EngineOptions&)>;
  LocalServer(const std::string& dir, int64_t slots, int64_t max_model_len, engine::EngineOptions options,
              const Configure& configure = nullptr) {
    runner::RunnerOptions ro;
    ro.max_seqs = slots;
    ro.max_model_len = max_model_len;
    auto model = runner::ModelRunner::Load(dir, models::qwen35::ModelOptions{}, ro);
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return;
    const int64_t vocab = (*model)->model().config().vocab_size;
    if (configure) configure((*model)->model(), options);
    auto engine = engine::Engine::Start(*std::move(model), nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return;
    engine_ = *std::move(engine);
    served_.name = "golden";
    served_.engine = engine_.get();
    auto gen = engine::LoadGenerationConfig(dir);
    EXPECT_TRUE(gen.ok()) << gen.status();
    if (gen.ok()) served_.defaults = engine::DefaultSamplingParams(*gen, vocab);
    registry_ = std::make_unique<ModelRegistry>(std::vector<ServedModel*>{&served_});
    text_ = std::make_unique<TextGenerationService>(registry_.get());
    models_ = std::make_unique<ModelsService>(registry_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(text_.get());
    builder.RegisterService(models_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    EXPECT_NE(port, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  }
  ~LocalServer() {
    if (engine_) engine_->Shutdown(absl::ZeroDuration());
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  bool ok() const { return server_ != nullptr; }
  engine::Engine& engine() { return *engine_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  std::unique_ptr<engine::Engine> engine_;
  ServedModel served_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<TextGenerationService> text_;
  std::unique_ptr<ModelsService> models_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

}  // namespace deltaserve::api::testing

#endif  // DELTASERVE_TESTS_API_LOCAL_SERVER_H_
