// The call gate's parts on their own: token files, the token comparison, client keys, the token bucket,
// and the transport security flags' validation. The gate over real calls: tests/e2e/test_security_e2e.py.
#include "api/call_gate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "api/transport_security.h"

namespace deltaserve::api {
namespace {

using ::testing::HasSubstr;

std::string TempFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(BearerTokens, FileSkipsCommentsAndBlankLines) {
  const std::string a(20, 'a'), b = "Zz09-_.~+/=" + std::string(10, 'b');
  auto tokens = LoadBearerTokens(TempFile("tokens_ok", "# clients\n\n  " + a + "  \n" + b + "\n"));
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_THAT(*tokens, ::testing::ElementsAre(a, b));
}

TEST(BearerTokens, FileErrorsNameTheLine) {
  EXPECT_THAT(LoadBearerTokens(TempFile("tokens_short", "# x\nshort\n")).status().message(),
              HasSubstr("tokens_short:2: the token has 5 characters; at least 16"));
  EXPECT_THAT(LoadBearerTokens(TempFile("tokens_space", std::string(20, 'a') + " b\n")).status().message(),
              HasSubstr(":1: a token is printable ASCII without spaces"));
  EXPECT_THAT(LoadBearerTokens(TempFile("tokens_empty", "# none\n\n")).status().message(), HasSubstr("holds no token"));
  EXPECT_THAT(LoadBearerTokens("/nonexistent/tokens").status().message(),
              HasSubstr("--auth-token-file: cannot read /nonexistent/tokens"));
}

TEST(BearerTokens, MatchesOnlyExactTokens) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<std::string> tokens;
    for (int i = 0; i < 3; ++i) {
      std::string t(16 + rng() % 16, 'x');
      for (char& c : t) c = static_cast<char>('!' + rng() % 90);
      tokens.push_back(t);
    }
    for (const std::string& t : tokens) {
      EXPECT_TRUE(MatchesAnyToken(tokens, t));
      EXPECT_FALSE(MatchesAnyToken(tokens, t.substr(0, t.size() - 1)));  // a prefix
      EXPECT_FALSE(MatchesAnyToken(tokens, t + "x"));                     // an extension
      std::string flipped = t;
      flipped[rng() % t.size()] ^= 1;
      EXPECT_FALSE(MatchesAnyToken(tokens, flipped));
    }
    EXPECT_FALSE(MatchesAnyToken(tokens, ""));
  }
  EXPECT_FALSE(MatchesAnyToken({}, "anything"));
}

TEST(CallGate, PeerKeyDropsThePort) {
  EXPECT_EQ(CallGate::PeerKey("ipv4:10.1.2.3:54321"), "ipv4:10.1.2.3");
  EXPECT_EQ(CallGate::PeerKey("ipv6:[::1]:40000"), "ipv6:[::1]");
  EXPECT_EQ(CallGate::PeerKey("unix:/run/ds.sock"), "unix:/run/ds.sock");
}

TEST(CallGate, TokenBucketAllowsBurstThenRate) {
  CallGateOptions o;
  o.rate_limit = 4;  // one token every 250 ms
  o.rate_burst = 2;
  CallGate gate(o);
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  EXPECT_EQ(gate.TakeToken("a", t0), 0);
  EXPECT_EQ(gate.TakeToken("a", t0), 0);
  EXPECT_EQ(gate.TakeToken("a", t0), 250);  // empty: the next token comes in 250 ms
  EXPECT_EQ(gate.TakeToken("b", t0), 0);    // another client has its own bucket
  EXPECT_EQ(gate.TakeToken("a", t0 + std::chrono::milliseconds(100)), 150);
  EXPECT_EQ(gate.TakeToken("a", t0 + std::chrono::milliseconds(260)), 0);
  EXPECT_EQ(gate.TakeToken("a", t0 + std::chrono::seconds(60)), 0);  // refilled to the burst, not beyond
  EXPECT_EQ(gate.TakeToken("a", t0 + std::chrono::seconds(60)), 0);
  EXPECT_GT(gate.TakeToken("a", t0 + std::chrono::seconds(60)), 0);
}

TEST(CallGate, DefaultBurstIsTheRate) {
  CallGateOptions o;
  o.rate_limit = 3;
  CallGate gate(o);
  const auto t0 = std::chrono::steady_clock::time_point{} + std::chrono::hours(1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(gate.TakeToken("a", t0), 0) << i;
  EXPECT_GT(gate.TakeToken("a", t0), 0);
}

TEST(TransportSecurity, NoFilesIsPlaintextAndBadFilesAreNamed) {
  EXPECT_TRUE(MakeServerCredentials({}).ok());
  TlsFiles only_cert;
  only_cert.cert = TempFile("cert_only.pem", "-----BEGIN CERTIFICATE-----\n");
  EXPECT_THAT(MakeServerCredentials(only_cert).status().message(), HasSubstr("--tls-cert and --tls-key go together"));
  TlsFiles missing;
  missing.cert = "/nonexistent/cert.pem";
  missing.key = "/nonexistent/key.pem";
  EXPECT_THAT(MakeServerCredentials(missing).status().message(), HasSubstr("--tls-cert: cannot read /nonexistent/cert.pem"));
  TlsFiles not_pem;
  not_pem.cert = TempFile("cert_ok.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  not_pem.key = TempFile("key_bad.pem", "not a key\n");
  EXPECT_THAT(MakeServerCredentials(not_pem).status().message(), HasSubstr("--tls-key: " + not_pem.key + " holds no PEM PRIVATE KEY block"));
  TlsFiles bad_interval = not_pem;
  bad_interval.reload_interval_s = 0;
  EXPECT_THAT(MakeServerCredentials(bad_interval).status().message(), HasSubstr("--tls-reload-interval"));
}

}  // namespace
}  // namespace deltaserve::api
