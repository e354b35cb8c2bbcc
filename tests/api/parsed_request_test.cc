// ParseRequest / DescribeUnparsedRequest (api/parsed_request.h): what a request gRPC cannot parse is told,
// field by field, on messages built here and then broken byte by byte.
#include "api/parsed_request.h"

#include <gmock/gmock.h>
#include <grpcpp/support/byte_buffer.h>
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "deltaserve/v1/models.pb.h"
#include "deltaserve/v1/text_generation.pb.h"

namespace deltaserve::api {
namespace {

using ::testing::HasSubstr;

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// Replaces the first occurrence of `marker` (a string the test put in a field) with two bytes that are
// never UTF-8, keeping the length, so the wire structure stays valid.
std::string BreakUtf8(std::string bytes, const std::string& marker) {
  size_t at = bytes.find(marker);
  EXPECT_NE(at, std::string::npos) << marker;
  bytes[at] = '\xff';
  bytes[at + 1] = '\xfe';
  return bytes;
}

TEST(ParsedRequest, AWellFormedRequestParsesAndTheBufferIsEmptied) {
  v1::GenerateRequest sent;
  sent.set_model("qwen35-small");
  sent.set_prompt("hello, world");
  sent.mutable_sampling()->add_stop("\n\n");
  sent.mutable_sampling()->set_temperature(0.5f);
  grpc::ByteBuffer buffer = Buffer(sent.SerializeAsString());
  v1::GenerateRequest got;
  grpc::Status st = ParseRequest(&buffer, &got);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(got.SerializeAsString(), sent.SerializeAsString());
  EXPECT_EQ(buffer.Length(), 0u);
}

TEST(ParsedRequest, InvalidUtf8IsNamedByItsFieldPath) {
  struct Case {
    std::string bytes;
    std::string path;
  };
  v1::GenerateRequest top;
  top.set_model("MODELNAME");
  top.set_prompt("PROMPTTEXT");
  v1::GenerateRequest nested;
  nested.set_prompt("fine");
  nested.mutable_sampling()->add_stop("ok");
  nested.mutable_sampling()->add_stop("STOPSTRING");
  v1::GetModelRequest get;
  get.set_name("SOMENAME");
  const Case cases[] = {
      {BreakUtf8(top.SerializeAsString(), "MODELNAME"), "model"},
      {BreakUtf8(top.SerializeAsString(), "PROMPTTEXT"), "prompt"},
      {BreakUtf8(nested.SerializeAsString(), "STOPSTRING"), "sampling.stop"},
      {BreakUtf8(get.SerializeAsString(), "SOMENAME"), "name"},
  };
  for (const Case& c : cases) {
    const bool is_get = c.path == "name";
    v1::GenerateRequest generate;
    v1::GetModelRequest get_model;
    google::protobuf::Message* message = is_get ? static_cast<google::protobuf::Message*>(&get_model) : &generate;
    grpc::ByteBuffer buffer = Buffer(c.bytes);
    grpc::Status st = ParseRequest(&buffer, message);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.path;
    EXPECT_THAT(st.error_message(), ::testing::StartsWith(c.path + ": not valid UTF-8")) << c.path;
    EXPECT_EQ(message->ByteSizeLong(), 0u) << "a refused request leaves the message cleared";
    EXPECT_EQ(buffer.Length(), 0u);
  }
}

TEST(ParsedRequest, BytesThatAreNotProtobufSayWhatTheyShouldHaveBeen) {
  // ("\x05" "ab": a hex escape would swallow the letters.)
  for (const std::string bytes : {std::string("\xff", 1), std::string("\x0a\x05" "ab", 4), std::string("\x08", 1)}) {
    v1::GenerateRequest got;
    grpc::ByteBuffer buffer = Buffer(bytes);
    grpc::Status st = ParseRequest(&buffer, &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("do not parse as deltaserve.v1.GenerateRequest"));
    EXPECT_THAT(st.error_message(), HasSubstr(std::to_string(bytes.size()) + " bytes"));
  }
}

TEST(ParsedRequest, RandomBytesEitherParseOrAreRefusedWithAStatus) {
  // Whatever arrives, the outcome agrees with protobuf's own parser, and never crashes.
  std::mt19937 rng(std::random_device{}());
  for (int i = 0; i < 2000; ++i) {
    std::string bytes(rng() % 64, '\0');
    for (char& b : bytes) b = static_cast<char>(rng());
    v1::GenerateRequest reference;
    const bool parses = reference.ParseFromString(bytes);
    v1::GenerateRequest got;
    grpc::ByteBuffer buffer = Buffer(bytes);
    grpc::Status st = ParseRequest(&buffer, &got);
    ASSERT_EQ(st.ok(), parses) << st.error_message();
    if (!parses) {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    }
  }
}

}  // namespace
}  // namespace deltaserve::api
