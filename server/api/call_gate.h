// Who may call, and when: bearer tokens (--auth-token-file), the drain (UNAVAILABLE from the start of a
// shutdown) and an optional per-client rate limit. Every method of every deltaserve service asks Admit first.
#ifndef DELTASERVE_SERVER_API_CALL_GATE_H_
#define DELTASERVE_SERVER_API_CALL_GATE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::api {

// Tokens at least this long (a 128-bit secret in hex is 32): shorter ones are guessable.
inline constexpr size_t kMinBearerTokenBytes = 16;

// The tokens of a token file: one per line; blank lines and lines starting with '#' skipped; each at
// least kMinBearerTokenBytes of printable ASCII without spaces. Errors name the file and the line.
absl::StatusOr<std::vector<std::string>> LoadBearerTokens(const std::string& path);

// True when `presented` equals one of `tokens`. Every token is compared in full whatever matched before,
// and each comparison takes time depending on the stored token's length only, not on where it differs.
bool MatchesAnyToken(const std::vector<std::string>& tokens, absl::string_view presented);

struct CallGateOptions {
  std::vector<std::string> bearer_tokens;  // empty: no authentication
  double rate_limit = 0;                   // calls/s per client address; 0: unlimited
  double rate_burst = 0;                   // bucket size; 0: max(1, rate_limit)
};

class CallGate {
 public:
  explicit CallGate(CallGateOptions options);

  // OK, or: UNAUTHENTICATED (no or a wrong "authorization: Bearer <token>" metadata entry), UNAVAILABLE
  // (draining, when `drain_applies`: methods that do work; the Models service keeps answering, with
  // ready = false), RESOURCE_EXHAUSTED with trailing metadata "retry-after-ms" and "grpc-retry-pushback-ms"
  // (the client's rate is over the limit). `method` names the call in messages.
  grpc::Status Admit(grpc::CallbackServerContext* context, absl::string_view method, bool drain_applies = true) const;

  // The same verdict for any transport (the HTTP front end): `authorization` is the presented
  // "authorization" value (null when absent), `carrier` names where it goes ("metadata", "header") in
  // messages, `client_key` keys the rate limit. On RESOURCE_EXHAUSTED `*retry_after_ms` is set.
  absl::Status AdmitRequest(const std::string* authorization, absl::string_view carrier,
                            const std::string& client_key, absl::string_view method, bool drain_applies,
                            int64_t* retry_after_ms) const;

  void StartDrain() { draining_.store(true); }
  bool draining() const { return draining_.load(); }

  // The client key of a peer string ("ipv4:1.2.3.4:5678" -> "ipv4:1.2.3.4"): calls from one host share
  // a bucket whatever their connection.
  static std::string PeerKey(absl::string_view peer);

  // The rate limit alone, for a client key at time `now`: 0 when the call may go, else the milliseconds
  // until it may (exposed for tests; Admit uses it).
  int64_t TakeToken(const std::string& key, std::chrono::steady_clock::time_point now) const;

 private:
  struct Bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point last;
  };
  CallGateOptions options_;
  std::atomic<bool> draining_{false};
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, Bucket> buckets_;
};

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_CALL_GATE_H_
