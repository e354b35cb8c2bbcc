// Requests that reach the service even when their bytes do not parse, so that the caller gets
// INVALID_ARGUMENT naming the field instead of gRPC's bare UNIMPLEMENTED.
#ifndef DELTASERVE_SERVER_API_PARSED_REQUEST_H_
#define DELTASERVE_SERVER_API_PARSED_REQUEST_H_

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/string_view.h"

namespace deltaserve::api {

// A request message and what became of parsing it. gRPC 1.51's callback API answers a request it cannot
// parse with UNIMPLEMENTED and an empty message before any service code runs; the services register
// their methods over this type instead (ParsedRequest's SerializationTraits never fail), so the
// method itself answers, after the call gate.
template <class Message>
struct ParsedRequest {
  Message message;
  grpc::Status error;  // OK: `message` holds the request; else INVALID_ARGUMENT naming the problem
};

// Parses `buffer` into `message` (and empties `buffer`, as gRPC's own deserializer does). On failure
// `message` is cleared and the status is DescribeUnparsedRequest's.
grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* message);

// Why `bytes` do not parse as `type`: INVALID_ARGUMENT naming the first string field (as a path such as
// "sampling.stop") that holds invalid UTF-8, or saying the bytes are not protobuf wire data at all.
grpc::Status DescribeUnparsedRequest(const google::protobuf::Descriptor& type, absl::string_view bytes);

}  // namespace deltaserve::api

namespace grpc {

template <class Message>
class SerializationTraits<deltaserve::api::ParsedRequest<Message>, void> {
 public:
  static Status Deserialize(ByteBuffer* buffer, deltaserve::api::ParsedRequest<Message>* request) {
    request->error = deltaserve::api::ParseRequest(buffer, &request->message);
    return Status::OK;  // the method answers a parse error itself
  }
};

}  // namespace grpc

#endif  // DELTASERVE_SERVER_API_PARSED_REQUEST_H_
