#include "client/channel.h"

#include <grpcpp/support/client_interceptor.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace deltaserve::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Adds the bearer token to every call's initial metadata. An interceptor rather than call credentials:
// gRPC sends call credentials over TLS only, and a token behind a TLS-terminating proxy or mesh is common.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string* header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA))
      methods->GetSendInitialMetadata()->insert({"authorization", *header_});
    methods->Proceed();
  }

 private:
  const std::string* header_;
};

class BearerTokenFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenFactory(std::string token) : header_("Bearer " + std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(&header_);
  }

 private:
  std::string header_;  // lives as long as the channel, which owns this factory
};

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& o) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (o.tls || !o.ca.empty() || !o.cert.empty() || !o.key.empty()) {
    if (o.cert.empty() != o.key.empty()) return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
    grpc::SslCredentialsOptions ssl;
    if (!o.ca.empty()) {
      absl::StatusOr<std::string> ca = ReadFile("--tls-ca", o.ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!o.cert.empty()) {
      absl::StatusOr<std::string> cert = ReadFile("--tls-cert", o.cert);
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadFile("--tls-key", o.key);
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  }
  if (o.token.empty()) return grpc::CreateChannel(o.target, creds);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerTokenFactory>(o.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(o.target, creds, grpc::ChannelArguments(),
                                                                 std::move(interceptors));
}

}  // namespace deltaserve::client
