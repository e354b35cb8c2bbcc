// deltaserve.v1.TextGeneration over the callback API: validates requests field by field, submits them to
// the model's engine and streams its token events back (Generate), and tokenizes/detokenizes (unary).
#ifndef DELTASERVE_SERVER_API_TEXT_GENERATION_SERVICE_H_
#define DELTASERVE_SERVER_API_TEXT_GENERATION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "api/models_service.h"
#include "deltaserve/v1/text_generation.grpc.pb.h"
#include "engine/engine.h"

namespace deltaserve::api {

// A validated Generate request, ready for Engine::Submit (on_event left empty).
struct PreparedRequest {
  ServedModel* model = nullptr;
  std::string request_id;
  engine::EngineRequest engine_request;
  uint64_t seed = 0;  // the seed in force (the request's, or a fresh one drawn here)
};

// Validates `request` against the served models: NOT_FOUND for an unknown model, UNAVAILABLE for one not
// ready, FAILED_PRECONDITION for text input to a model without a tokenizer, INVALID_ARGUMENT naming the
// field (as the proto writes it) otherwise. Exposed for tests.
absl::StatusOr<PreparedRequest> PrepareGenerate(const ModelRegistry& registry,
                                                const v1::GenerateRequest& request);

// The contract's finish reason for the engine's (both front ends report it).
v1::FinishReason ToProtoFinishReason(engine::FinishReason reason);

class TextGenerationService final : public v1::TextGeneration::CallbackService {
 public:
  // `gate` (may be null: every call admitted) is asked first by every method. Requests arrive as
  // ParsedRequest (api/parsed_request.h): one that does not parse gets INVALID_ARGUMENT after the gate.
  TextGenerationService(const ModelRegistry* registry, RequestObserver observer = nullptr,
                        const CallGate* gate = nullptr);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override {
    return Generate(context, request, grpc::Status::OK);
  }
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;

 private:
  // Generate for a request that did not parse (`parse_error` not OK) or did.
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request,
                                                           const grpc::Status& parse_error);

  const ModelRegistry* registry_;
  RequestObserver observer_;
  const CallGate* gate_;
};

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_TEXT_GENERATION_SERVICE_H_
