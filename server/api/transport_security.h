// The gRPC listener's transport security from the server's flags: plain, TLS, or mutual TLS, with the
// certificate files re-read when they change (no restart, running streams untouched); and reflection off.
#ifndef DELTASERVE_SERVER_API_TRANSPORT_SECURITY_H_
#define DELTASERVE_SERVER_API_TRANSPORT_SECURITY_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/server_builder_option.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace deltaserve::api {

struct TlsFiles {
  std::string cert;       // --tls-cert: the server's certificate chain (PEM)
  std::string key;        // --tls-key: its private key (PEM)
  std::string client_ca;  // --tls-client-ca: CA bundle that client certificates must chain to (mTLS)
  int reload_interval_s = 10;  // how often the files are checked for changes
  bool enabled() const { return !cert.empty() || !key.empty() || !client_ca.empty(); }
};

// Insecure credentials when no file is named; else TLS (mTLS with a client CA: clients without a
// certificate signed by it fail the handshake). The files must exist and hold PEM blocks now; errors
// name the flag and the file. Renewed files are picked up within reload_interval_s.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files);

// A ServerBuilder option that drops the gRPC reflection plugin (which registers itself in every server
// of a process that links it): for --reflection=false.
std::unique_ptr<grpc::ServerBuilderOption> WithoutReflection();

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_TRANSPORT_SECURITY_H_
