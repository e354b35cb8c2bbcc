#include "api/transport_security.h"

#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::api {
namespace {

absl::Status CheckPem(const std::string& flag, const std::string& path, absl::string_view block) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (!absl::StrContains(ss.str(), "-----BEGIN ") || !absl::StrContains(ss.str(), block))
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " holds no PEM ", block, " block"));
  return absl::OkStatus();
}

class DropReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                                    return p->name() == "proto_server_reflection";
                                  }),
                   plugins->end());
  }
};

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  if (files.cert.empty() || files.key.empty())
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together (--tls-client-ca needs both)");
  if (files.reload_interval_s < 1)
    return absl::InvalidArgumentError(absl::StrCat("--tls-reload-interval: must be >= 1 s, got ", files.reload_interval_s));
  if (absl::Status s = CheckPem("--tls-cert", files.cert, "CERTIFICATE"); !s.ok()) return s;
  if (absl::Status s = CheckPem("--tls-key", files.key, "PRIVATE KEY"); !s.ok()) return s;
  if (!files.client_ca.empty())
    if (absl::Status s = CheckPem("--tls-client-ca", files.client_ca, "CERTIFICATE"); !s.ok()) return s;
  // The provider re-reads the files every interval and hands new ones to new handshakes; connections
  // already up keep theirs.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.client_ca.empty() ? std::string() : files.client_ca,
      static_cast<unsigned int>(files.reload_interval_s));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (files.client_ca.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::unique_ptr<grpc::ServerBuilderOption> WithoutReflection() { return std::make_unique<DropReflection>(); }

}  // namespace deltaserve::api
