#include "api/parsed_request.h"

#include <google/protobuf/stubs/common.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace deltaserve::api {
namespace {

// Nested messages are walked at most this deep: a request is a few levels; the bound keeps a hostile
// message of nested groups from recursing without limit.
constexpr int kMaxDepth = 16;

// The path of the first string field under `type` in `fields` that is not UTF-8, or "".
std::string FirstNonUtf8Field(const google::protobuf::Descriptor& type,
                              const google::protobuf::UnknownFieldSet& fields, const std::string& prefix,
                              int depth) {
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const google::protobuf::FieldDescriptor* field = type.FindFieldByNumber(f.number());
    if (field == nullptr) continue;
    const std::string path = prefix + field->name();
    if (field->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
      // protobuf's own check, the one that refused the request
      if (!google::protobuf::internal::IsStructurallyValidUTF8(f.length_delimited())) return path;
    } else if (field->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE && depth < kMaxDepth) {
      google::protobuf::UnknownFieldSet inner;
      if (!inner.ParseFromString(f.length_delimited())) continue;
      std::string found = FirstNonUtf8Field(*field->message_type(), inner, path + ".", depth + 1);
      if (!found.empty()) return found;
    }
  }
  return "";
}

}  // namespace

grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* message) {
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(buffer);
    parsed = reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
  }
  if (parsed) {
    buffer->Clear();
    return grpc::Status::OK;
  }
  // Only a refused request pays for this copy of its bytes.
  std::string bytes;
  {
    grpc::ProtoBufferReader reader(buffer);
    const void* data = nullptr;
    int size = 0;
    while (reader.status().ok() && reader.Next(&data, &size))
      bytes.append(static_cast<const char*>(data), size);
  }
  buffer->Clear();
  message->Clear();
  return DescribeUnparsedRequest(*message->GetDescriptor(), bytes);
}

grpc::Status DescribeUnparsedRequest(const google::protobuf::Descriptor& type, absl::string_view bytes) {
  google::protobuf::UnknownFieldSet fields;
  if (fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    const std::string field = FirstNonUtf8Field(type, fields, "", 0);
    if (!field.empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat(field, ": not valid UTF-8 (string fields must hold UTF-8)"));
    }
  }
  return grpc::Status(
      grpc::StatusCode::INVALID_ARGUMENT,
      absl::StrCat("request: ", bytes.size(), " bytes that do not parse as ", type.full_name()));
}

}  // namespace deltaserve::api
