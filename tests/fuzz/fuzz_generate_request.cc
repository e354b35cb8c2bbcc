// A Generate request from outside, as the bytes gRPC hands the service: parsed as the service parses it
// (api::ParseRequest), then validated as the service validates it (api::PrepareGenerate) against the
// shipped model served with a short max_model_len. Whatever the bytes: no crash, a refusal is one of the
// documented codes with a message, and an accepted request holds only what the engine may be given
// (in-vocabulary ids, a prompt and output that fit, sampling parameters the sampler accepts).
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>

#include "api/parsed_request.h"
#include "api/text_generation_service.h"
#include "engine/engine.h"
#include "engine/generation_config.h"
#include "runner/model_runner.h"
#include "runner/sampler.h"
#include "tokenizer/tokenizer.h"

namespace api = deltaserve::api;
namespace engine = deltaserve::engine;

namespace {

constexpr int64_t kMaxModelLen = 256;  // short, so the length limits are within the fuzzer's reach

void Require(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "fuzz_generate_request: violated: %s\n", what);
  std::abort();
}

struct Served {
  std::unique_ptr<engine::Engine> engine;
  std::unique_ptr<deltaserve::tokenizer::Tokenizer> tokenizer;
  api::ServedModel model;
  std::unique_ptr<api::ModelRegistry> registry;
};

void DiscardProtobufLog(google::protobuf::LogLevel, const char*, int, const std::string&) {}

Served& TheModel() {
  static Served* served = [] {
    // protobuf logs a line for every string field that is not UTF-8: most of the fuzzer's inputs.
    google::protobuf::SetLogHandler(&DiscardProtobufLog);
    const std::string dir = DELTASERVE_FUZZ_MODEL_DIR;
    deltaserve::runner::RunnerOptions ro;
    ro.max_seqs = 1;
    ro.max_model_len = kMaxModelLen;
    auto runner = deltaserve::runner::ModelRunner::Load(dir, deltaserve::models::qwen35::ModelOptions{}, ro);
    Require(runner.ok(), "the shipped model loads");
    const int64_t vocab = (*runner)->model().config().vocab_size;
    auto* s = new Served();
    auto started = engine::Engine::Start(*std::move(runner), nullptr, engine::EngineOptions{});
    Require(started.ok(), "the engine starts");
    s->engine = *std::move(started);
    auto tok = deltaserve::tokenizer::Tokenizer::FromFile(dir + "/tokenizer.json");
    Require(tok.ok(), "the shipped tokenizer loads");
    s->tokenizer = *std::move(tok);
    auto gen = engine::LoadGenerationConfig(dir);
    Require(gen.ok(), "generation_config.json loads");
    s->model.name = "qwen35-small";
    s->model.engine = s->engine.get();
    s->model.tokenizer = s->tokenizer.get();
    s->model.defaults = engine::DefaultSamplingParams(*gen, vocab);
    s->registry = std::make_unique<api::ModelRegistry>(std::vector<api::ServedModel*>{&s->model});
    return s;  // never destroyed: the engine's threads outlive the fuzzing loop
  }();
  return *served;
}

// What became of the inputs, printed at exit: a run whose inputs all fail to parse tests little.
struct Outcomes {
  long unparsed = 0, refused = 0, accepted = 0;
  ~Outcomes() {
    std::fprintf(stderr, "fuzz_generate_request: %ld unparsed, %ld refused by validation, %ld accepted\n", unparsed,
                 refused, accepted);
  }
} outcomes;

// Field-level mutation through protobuf reflection: one field of the message (at any depth) set to a value
// at or beyond a limit the validation checks, a repeated field grown or cut, or a field cleared. Byte
// mutations alone mostly break the wire format and never reach the validation behind the parser.
class FieldMutator {
 public:
  explicit FieldMutator(unsigned seed) : rng_(seed) {}

  void Mutate(google::protobuf::Message* m, int depth = 0) {
    const google::protobuf::Descriptor* d = m->GetDescriptor();
    const google::protobuf::Reflection* r = m->GetReflection();
    const google::protobuf::FieldDescriptor* f = d->field(static_cast<int>(rng_() % d->field_count()));
    using FD = google::protobuf::FieldDescriptor;
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE && depth < 4 && rng_() % 4 != 0) {
      if (f->is_repeated()) {
        const int n = r->FieldSize(*m, f);
        return Mutate(n == 0 || rng_() % 3 == 0 ? r->AddMessage(m, f) : r->MutableRepeatedMessage(m, f, Pick(n)),
                      depth + 1);
      }
      return Mutate(r->MutableMessage(m, f), depth + 1);
    }
    if (rng_() % 6 == 0) return r->ClearField(m, f);
    if (f->is_repeated()) {
      const int n = r->FieldSize(*m, f);
      if (n > 0 && rng_() % 3 == 0) return r->RemoveLast(m, f);
      for (int k = 1 + Pick(rng_() % 8 == 0 ? 300 : 3); k > 0; --k) AddValue(m, r, f);
      return;
    }
    SetValue(m, r, f);
  }

 private:
  int Pick(int n) { return static_cast<int>(rng_() % static_cast<uint64_t>(n)); }

  int64_t Integer() {
    static const int64_t kValues[] = {0, 1, -1, 2, 5, 20, 21, 255, 256, 8191, 8192, 100000, INT32_MAX, INT32_MIN,
                                      INT64_MAX, INT64_MIN};
    return rng_() % 4 == 0 ? static_cast<int64_t>(rng_()) : kValues[Pick(sizeof(kValues) / sizeof(kValues[0]))];
  }
  double Real() {
    static const double kValues[] = {0.0, -0.0, 1e-6, 1e-5, 0.5, 1.0, 1.5, 2.0, 100.0, -1.0, -2.0, 1e300,
                                     std::numeric_limits<double>::infinity(),
                                     -std::numeric_limits<double>::infinity(),
                                     std::numeric_limits<double>::quiet_NaN(),
                                     std::numeric_limits<double>::denorm_min()};
    return kValues[Pick(sizeof(kValues) / sizeof(kValues[0]))];
  }
  std::string Text() {
    static const char* const kValues[] = {"", " ", "qwen35-small", "user", "assistant", "system", "tool",
                                          "<|im_end|>", "<think>", "{}", "{\"type\":\"function\"}", "\xc3\xa9",
                                          "\xf0\x9f\x98\x80", "a\nb"};
    std::string t = kValues[Pick(sizeof(kValues) / sizeof(kValues[0]))];
    if (rng_() % 4 == 0) t = std::string(static_cast<size_t>(Pick(3000)), static_cast<char>(0x20 + rng_() % 95));
    return t;
  }
  void SetValue(google::protobuf::Message* m, const google::protobuf::Reflection* r,
                const google::protobuf::FieldDescriptor* f) {
    using FD = google::protobuf::FieldDescriptor;
    switch (f->cpp_type()) {
      case FD::CPPTYPE_INT32: return r->SetInt32(m, f, static_cast<int32_t>(Integer()));
      case FD::CPPTYPE_INT64: return r->SetInt64(m, f, Integer());
      case FD::CPPTYPE_UINT32: return r->SetUInt32(m, f, static_cast<uint32_t>(Integer()));
      case FD::CPPTYPE_UINT64: return r->SetUInt64(m, f, static_cast<uint64_t>(Integer()));
      case FD::CPPTYPE_DOUBLE: return r->SetDouble(m, f, Real());
      case FD::CPPTYPE_FLOAT: return r->SetFloat(m, f, static_cast<float>(Real()));
      case FD::CPPTYPE_BOOL: return r->SetBool(m, f, rng_() % 2);
      case FD::CPPTYPE_ENUM: return r->SetEnumValue(m, f, static_cast<int>(Integer() % 8));
      case FD::CPPTYPE_STRING: return r->SetString(m, f, Text());
      case FD::CPPTYPE_MESSAGE: return r->ClearField(m, f);
    }
  }
  void AddValue(google::protobuf::Message* m, const google::protobuf::Reflection* r,
                const google::protobuf::FieldDescriptor* f) {
    using FD = google::protobuf::FieldDescriptor;
    switch (f->cpp_type()) {
      case FD::CPPTYPE_INT32: return r->AddInt32(m, f, static_cast<int32_t>(Integer()));
      case FD::CPPTYPE_INT64: return r->AddInt64(m, f, Integer());
      case FD::CPPTYPE_UINT32: return r->AddUInt32(m, f, static_cast<uint32_t>(Integer()));
      case FD::CPPTYPE_UINT64: return r->AddUInt64(m, f, static_cast<uint64_t>(Integer()));
      case FD::CPPTYPE_DOUBLE: return r->AddDouble(m, f, Real());
      case FD::CPPTYPE_FLOAT: return r->AddFloat(m, f, static_cast<float>(Real()));
      case FD::CPPTYPE_BOOL: return r->AddBool(m, f, rng_() % 2);
      case FD::CPPTYPE_ENUM: return r->AddEnumValue(m, f, static_cast<int>(Integer() % 8));
      case FD::CPPTYPE_STRING: return r->AddString(m, f, Text());
      case FD::CPPTYPE_MESSAGE: r->AddMessage(m, f); return;
    }
  }

  std::mt19937_64 rng_;
};

}  // namespace

// libFuzzer's hook (tests/fuzz/replay_main.cc offers the same): three times in four a field-level change
// of a parsed request, else libFuzzer's own byte mutation.
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);
extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  deltaserve::v1::GenerateRequest request;
  if (seed % 4 == 0 || !request.ParseFromArray(data, static_cast<int>(size)))
    return LLVMFuzzerMutate(data, size, max_size);
  FieldMutator(seed).Mutate(&request);
  const std::string bytes = request.SerializeAsString();
  if (bytes.size() > max_size) return LLVMFuzzerMutate(data, size, max_size);
  std::memcpy(data, bytes.data(), bytes.size());
  return bytes.size();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Served& served = TheModel();
  grpc::Slice slice(data, size);
  grpc::ByteBuffer buffer(&slice, 1);
  deltaserve::v1::GenerateRequest request;
  grpc::Status parsed = api::ParseRequest(&buffer, &request);
  if (!parsed.ok()) {
    Require(parsed.error_code() == grpc::StatusCode::INVALID_ARGUMENT, "a parse failure is INVALID_ARGUMENT");
    Require(!parsed.error_message().empty(), "a parse failure says why");
    ++outcomes.unparsed;
    return 0;
  }
  absl::StatusOr<api::PreparedRequest> prepared = api::PrepareGenerate(*served.registry, request);
  if (!prepared.ok()) {
    const absl::StatusCode code = prepared.status().code();
    Require(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kNotFound ||
                code == absl::StatusCode::kFailedPrecondition,
            "a refusal is INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION");
    Require(!prepared.status().message().empty(), "a refusal says why");
    ++outcomes.refused;
    return 0;
  }
  const int64_t vocab = served.engine->model().config().vocab_size;
  const engine::EngineRequest& r = prepared->engine_request;
  Require(!r.prompt.empty(), "an accepted prompt has tokens");
  for (int32_t id : r.prompt) Require(id >= 0 && id < vocab, "an accepted prompt is in the vocabulary");
  Require(static_cast<int64_t>(r.prompt.size()) < kMaxModelLen, "an accepted prompt leaves room for a token");
  Require(r.params.max_new_tokens >= 1, "an accepted request generates at least one token");
  Require(static_cast<int64_t>(r.prompt.size()) + r.params.max_new_tokens <= kMaxModelLen,
          "prompt + max_tokens fit max_model_len");
  Require(deltaserve::engine::ValidateSamplingParams(r.params, vocab).ok(), "accepted sampling parameters are valid");
  Require(prepared->model == &served.model, "the request is for the served model");
  ++outcomes.accepted;
  return 0;
}
