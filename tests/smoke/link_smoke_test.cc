// Proves that one binary links LibTorch (the PyTorch wheel) with Debian's gRPC, protobuf and
// prometheus-cpp and that all of them work together: a gRPC call whose handler computes with ATen,
// and a Prometheus scrape of a counter the handler bumps. libtorch_cpu bundles its own protobuf
// symbols, so a clash would show here first.
#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "smoke/smoke.grpc.pb.h"

namespace {

class SummerService final : public deltaserve::smoke::Summer::Service {
 public:
  explicit SummerService(prometheus::Counter* calls) : calls_(calls) {}
  grpc::Status Sum(grpc::ServerContext*, const deltaserve::smoke::SumRequest* req,
                   deltaserve::smoke::SumReply* reply) override {
    at::Tensor t = at::empty({req->values_size()}, at::kFloat);
    for (int i = 0; i < req->values_size(); ++i) t[i] = req->values(i);
    reply->set_sum(t.sum().item<float>());
    reply->set_device(t.device().str());
    calls_->Increment();
    return grpc::Status::OK;
  }

 private:
  prometheus::Counter* calls_;
};

// civetweb cannot bind port 0, so ask the kernel for a free port first.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
}

TEST(LinkSmoke, GrpcProtobufTorchAndPrometheusInOneProcess) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& family = prometheus::BuildCounter().Name("smoke_calls_total").Help("calls").Register(*registry);
  auto& calls = family.Add({});
  const int free_port = FreePort();
  ASSERT_GT(free_port, 0);
  prometheus::Exposer exposer("127.0.0.1:" + std::to_string(free_port));
  exposer.RegisterCollectable(registry);
  ASSERT_FALSE(exposer.GetListeningPorts().empty());
  const int metrics_port = exposer.GetListeningPorts().front();

  SummerService service(&calls);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);

  auto stub = deltaserve::smoke::Summer::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  deltaserve::smoke::SumRequest req;
  for (float v : {1.5f, 2.25f, -0.75f, 7.0f}) req.add_values(v);
  deltaserve::smoke::SumReply reply;
  grpc::ClientContext ctx;
  grpc::Status st = stub->Sum(&ctx, req, &reply);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FLOAT_EQ(reply.sum(), 10.0f);
  EXPECT_EQ(reply.device(), "cpu");

  const std::string scrape = HttpGet(metrics_port, "/metrics");
  EXPECT_NE(scrape.find("smoke_calls_total 1"), std::string::npos) << scrape;
  server->Shutdown();
}

}  // namespace
