// The client's channel to a deltaserve server: plaintext or TLS (server verified against a CA bundle or
// the system roots; a client certificate for mTLS), and a bearer token sent as metadata on every call.
#ifndef DELTASERVE_CLIENT_CHANNEL_H_
#define DELTASERVE_CLIENT_CHANNEL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace deltaserve::client {

struct ChannelOptions {
  std::string target;    // host:port
  bool tls = false;      // implied by any of the three files
  std::string ca;        // PEM bundle the server's certificate must chain to ("" with tls: system roots)
  std::string cert;      // client certificate chain (PEM), for servers that require mTLS
  std::string key;       // its private key (PEM)
  std::string token;     // sent as "authorization: Bearer <token>" on every call; "" sends none
};

// Errors name the flag and the file (--tls-ca, --tls-cert, --tls-key) or the mismatch.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

}  // namespace deltaserve::client

#endif  // DELTASERVE_CLIENT_CHANNEL_H_
