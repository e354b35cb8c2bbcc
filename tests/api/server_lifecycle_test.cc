// The gRPC API under pressure and at shutdown, each test on its own small server (one or two slots):
// a full admission queue refuses at once with RESOURCE_EXHAUSTED and loses nothing already admitted;
// shutdown lets streams in flight finish within the grace, ends the rest with CANCELLED + UNAVAILABLE,
// and refuses new requests with UNAVAILABLE.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "api/local_server.h"
#include "model/golden.h"

namespace deltaserve::api {
namespace {

using ::testing::HasSubstr;
using testing::GreedyRequest;
using testing::LocalServer;
using testing::RunStream;
using testing::StreamResult;

constexpr auto kLong = std::chrono::seconds(120);

class ServerLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override { golden_ = std::make_unique<deltaserve::testing::Golden>(deltaserve::testing::ReadGolden("flat_untied")); }
  std::unique_ptr<deltaserve::testing::Golden> golden_;
};

// Opens a stream and waits for its first message, so the request is known to hold a slot.
struct OpenStream {
  OpenStream(const std::shared_ptr<grpc::Channel>& channel, const v1::GenerateRequest& req)
      : stub(v1::TextGeneration::NewStub(channel)) {
    ctx.set_deadline(std::chrono::system_clock::now() + kLong);
    reader = stub->Generate(&ctx, req);
  }
  bool ReadFirst() { return reader->Read(&first); }
  StreamResult Drain() {
    StreamResult r;
    r.tokens.assign(first.token_ids().begin(), first.token_ids().end());
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      r.tokens.insert(r.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
      r.responses.push_back(resp);
    }
    r.status = reader->Finish();
    return r;
  }
  std::unique_ptr<v1::TextGeneration::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  v1::GenerateResponse first;
};

TEST_F(ServerLifecycleTest, FullQueueRefusesAtOnceAndKeepsTheQueued) {
  engine::EngineOptions options;
  options.max_queue = 1;
  LocalServer server(golden_->dir, /*slots=*/1, 512, options);
  ASSERT_TRUE(server.ok());
  OpenStream running(server.channel(), GreedyRequest(golden_->greedy_prompt, 300));
  ASSERT_TRUE(running.ReadFirst());
  // The only slot is taken: the next request waits in the queue (its stream stays open, silent).
  auto queued = std::async(std::launch::async, [&] {
    return RunStream(server.channel(), GreedyRequest(golden_->greedy_prompt, 5), kLong);
  });
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (server.engine().stats().waiting < 1 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(server.engine().stats().waiting, 1);

  const auto t0 = std::chrono::steady_clock::now();
  StreamResult refused = RunStream(server.channel(), GreedyRequest(golden_->greedy_prompt, 5), kLong);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("queue"));
  EXPECT_TRUE(refused.responses.empty());
  // "At once": long before the running stream (300 tokens) could have freed the slot.
  EXPECT_EQ(server.engine().stats().waiting, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));

  running.ctx.TryCancel();
  EXPECT_EQ(running.Drain().status.error_code(), grpc::StatusCode::CANCELLED);
  StreamResult served = queued.get();
  EXPECT_TRUE(served.status.ok()) << served.status.error_message();
  EXPECT_EQ(served.tokens.size(), 5u);
}

TEST_F(ServerLifecycleTest, ShutdownLetsStreamsInFlightFinishWithinTheGrace) {
  LocalServer server(golden_->dir, /*slots=*/2, 512, engine::EngineOptions{});
  ASSERT_TRUE(server.ok());
  const int n = 24;
  OpenStream a(server.channel(), GreedyRequest(golden_->greedy_prompt, n));
  OpenStream b(server.channel(), GreedyRequest(golden_->prompts[0].ids, n));
  ASSERT_TRUE(a.ReadFirst());
  ASSERT_TRUE(b.ReadFirst());
  std::thread stopper([&] { server.engine().Shutdown(absl::Seconds(60)); });
  // Once shutting down, admission is closed.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  StreamResult late;
  do {
    late = RunStream(server.channel(), GreedyRequest(golden_->greedy_prompt, 2), kLong);
  } while (late.status.ok() && std::chrono::steady_clock::now() < until);
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  for (OpenStream* s : {&a, &b}) {
    StreamResult r = s->Drain();
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens.size(), static_cast<size_t>(n));
    ASSERT_FALSE(r.responses.empty());
    EXPECT_EQ(r.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  }
  stopper.join();
}

TEST_F(ServerLifecycleTest, ShutdownPastTheGraceCancelsWithAFinalMessage) {
  LocalServer server(golden_->dir, /*slots=*/2, 512, engine::EngineOptions{});
  ASSERT_TRUE(server.ok());
  OpenStream a(server.channel(), GreedyRequest(golden_->greedy_prompt, 400));
  ASSERT_TRUE(a.ReadFirst());
  server.engine().Shutdown(absl::ZeroDuration());
  StreamResult r = a.Drain();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  ASSERT_FALSE(r.responses.empty());
  EXPECT_EQ(r.responses.back().finish_reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_LT(r.tokens.size(), 400u);
  EXPECT_EQ(server.engine().stats().running, 0);
}

}  // namespace
}  // namespace deltaserve::api
