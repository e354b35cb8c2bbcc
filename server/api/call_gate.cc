#include "api/call_gate.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace deltaserve::api {

absl::StatusOr<std::vector<std::string>> LoadBearerTokens(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--auth-token-file: cannot read ", path));
  std::vector<std::string> tokens;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    absl::string_view t = absl::StripAsciiWhitespace(line);
    if (t.empty() || t.front() == '#') continue;
    const bool printable = std::all_of(t.begin(), t.end(), [](char c) { return c > ' ' && c < 127; });
    if (!printable)
      return absl::InvalidArgumentError(absl::StrCat("--auth-token-file: ", path, ":", lineno,
                                                     ": a token is printable ASCII without spaces"));
    if (t.size() < kMinBearerTokenBytes)
      return absl::InvalidArgumentError(absl::StrCat("--auth-token-file: ", path, ":", lineno, ": the token has ",
                                                     t.size(), " characters; at least ", kMinBearerTokenBytes));
    tokens.emplace_back(t);
  }
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("--auth-token-file: ", path, " holds no token"));
  return tokens;
}

bool MatchesAnyToken(const std::vector<std::string>& tokens, absl::string_view presented) {
  unsigned matched = 0;
  for (const std::string& t : tokens) {
    // Walk the stored token whatever the presented one holds; any difference (length included) sets diff.
    unsigned diff = static_cast<unsigned>(t.size() ^ presented.size());
    for (size_t i = 0; i < t.size(); ++i) {
      const unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
      diff |= static_cast<unsigned>(static_cast<unsigned char>(t[i]) ^ p);
    }
    matched |= static_cast<unsigned>(diff == 0);
  }
  return matched != 0;
}

CallGate::CallGate(CallGateOptions options) : options_(std::move(options)) {
  if (options_.rate_limit > 0 && options_.rate_burst <= 0) options_.rate_burst = std::max(1.0, options_.rate_limit);
}

std::string CallGate::PeerKey(absl::string_view peer) {
  // "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/path": drop the trailing port of ip peers.
  if (absl::StartsWith(peer, "ipv4:") || absl::StartsWith(peer, "ipv6:")) {
    const size_t colon = peer.rfind(':');
    if (colon != absl::string_view::npos && colon > 5) return std::string(peer.substr(0, colon));
  }
  return std::string(peer);
}

int64_t CallGate::TakeToken(const std::string& key, std::chrono::steady_clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  // Idle clients' buckets are full again: forget them so the map cannot grow without bound.
  if (buckets_.size() > 10000) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      const double idle = std::chrono::duration<double>(now - it->second.last).count();
      it = it->second.tokens + idle * options_.rate_limit >= options_.rate_burst ? buckets_.erase(it) : std::next(it);
    }
  }
  auto [it, fresh] = buckets_.try_emplace(key);
  Bucket& b = it->second;
  if (fresh) {
    b.tokens = options_.rate_burst;
  } else {
    const double dt = std::max(0.0, std::chrono::duration<double>(now - b.last).count());
    b.tokens = std::min(options_.rate_burst, b.tokens + dt * options_.rate_limit);
  }
  b.last = now;
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
    return 0;
  }
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil((1.0 - b.tokens) / options_.rate_limit * 1000.0)));
}

absl::Status CallGate::AdmitRequest(const std::string* authorization, absl::string_view carrier,
                                    const std::string& client_key, absl::string_view method, bool drain_applies,
                                    int64_t* retry_after_ms) const {
  if (!options_.bearer_tokens.empty()) {
    if (authorization == nullptr)
      return absl::UnauthenticatedError(
          absl::StrCat(method, ": no credentials: send ", carrier, " \"authorization: Bearer <token>\""));
    absl::string_view value = *authorization;
    if (!absl::ConsumePrefix(&value, "Bearer ") || !MatchesAnyToken(options_.bearer_tokens, value))
      return absl::UnauthenticatedError(
          absl::StrCat(method, ": the bearer token in ", carrier, " \"authorization\" is not accepted"));
  }
  if (drain_applies && draining())
    return absl::UnavailableError(absl::StrCat(method, ": the server is shutting down; retry on another replica"));
  if (options_.rate_limit > 0) {
    const int64_t wait_ms = TakeToken(client_key, std::chrono::steady_clock::now());
    if (wait_ms > 0) {
      if (retry_after_ms != nullptr) *retry_after_ms = wait_ms;
      return absl::ResourceExhaustedError(absl::StrCat(method, ": over the limit of ", options_.rate_limit,
                                                       " calls/s per client (--rate-limit); retry in ", wait_ms,
                                                       " ms"));
    }
  }
  return absl::OkStatus();
}

grpc::Status CallGate::Admit(grpc::CallbackServerContext* context, absl::string_view method,
                             bool drain_applies) const {
  std::string authorization;
  bool presented = false;
  if (!options_.bearer_tokens.empty()) {
    const auto& md = context->client_metadata();
    auto it = md.find("authorization");
    if (it != md.end()) {
      authorization.assign(it->second.data(), it->second.size());
      presented = true;
    }
  }
  int64_t wait_ms = 0;
  absl::Status st = AdmitRequest(presented ? &authorization : nullptr, "metadata",
                                 options_.rate_limit > 0 ? PeerKey(context->peer()) : std::string(), method,
                                 drain_applies, &wait_ms);
  if (st.ok()) return grpc::Status::OK;
  if (wait_ms > 0) {
    context->AddTrailingMetadata("retry-after-ms", std::to_string(wait_ms));
    context->AddTrailingMetadata("grpc-retry-pushback-ms", std::to_string(wait_ms));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

}  // namespace deltaserve::api
