// The served-model record shared by the gRPC services (engine, tokenizer, defaults, readiness), and the
// deltaserve.v1.Models service that reports each model's configuration and limits.
#ifndef DELTASERVE_SERVER_API_MODELS_SERVICE_H_
#define DELTASERVE_SERVER_API_MODELS_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "api/call_gate.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "engine/engine.h"
#include "engine/vision_batcher.h"
#include "runner/sampler.h"
#include "tokenizer/tokenizer.h"

namespace deltaserve::api {

// One served model: a text model (engine set) or a detector (vision set). Everything pointed to must
// outlive the services.
struct ServedModel {
  std::string name;
  engine::Engine* engine = nullptr;
  engine::VisionBatcher* vision = nullptr;
  const tokenizer::Tokenizer* tokenizer = nullptr;  // null: token ids only
  engine::SamplingParams defaults;                  // DefaultSamplingParams(generation config)
  engine::EngineOptions engine_options;
  std::atomic<bool> ready{true};  // false from the start of a shutdown: requests get UNAVAILABLE
};

// Called once per finished RPC with the method name ("Generate", ...) and its status code; for metrics.
using RequestObserver = std::function<void(absl::string_view method, grpc::StatusCode code)>;

// Finishes a unary call with `status` and reports it to `observer` (may be empty); both services end
// every unary method through it.
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, const RequestObserver& observer,
                                      absl::string_view method, const grpc::Status& status);

// `gate`'s verdict on the call (OK when gate is null): the first thing every service method asks.
grpc::Status AdmitCall(const CallGate* gate, grpc::CallbackServerContext* context, absl::string_view method,
                       bool drain_applies = true);

// Finishes a unary call whose request did not parse (api/parsed_request.h): with the gate's verdict when
// it refuses (a caller it refuses learns nothing of its bytes), else with `parse_error`.
grpc::ServerUnaryReactor* FinishUnparsed(const CallGate* gate, grpc::CallbackServerContext* context,
                                         const RequestObserver& observer, absl::string_view method,
                                         const grpc::Status& parse_error, bool drain_applies = true);

// Longest part of a requested model name that errors repeat.
inline constexpr size_t kMaxEchoedNameBytes = 128;

// The served models in startup order (the first is the default); the name lookup every service uses.
class ModelRegistry {
 public:
  explicit ModelRegistry(std::vector<ServedModel*> models) : models_(std::move(models)) {}
  enum class Kind { kAny, kText, kVision };
  // Empty name: the first model of `kind` (the default). Unknown: NOT_FOUND naming `field` and listing
  // the served names; a model of another kind: INVALID_ARGUMENT saying what it is.
  absl::StatusOr<ServedModel*> Find(absl::string_view name, absl::string_view field = "model",
                                    Kind kind = Kind::kAny) const;
  const std::vector<ServedModel*>& models() const { return models_; }

 private:
  std::vector<ServedModel*> models_;
};

// Fills `info` from the model's loaded config, options and engine limits.
void FillModelInfo(const ServedModel& model, v1::ModelInfo* info);

class ModelsService final : public v1::Models::CallbackService {
 public:
  // `gate` (may be null: every call admitted) is asked first by every method. Requests arrive as
  // ParsedRequest (api/parsed_request.h): one that does not parse gets INVALID_ARGUMENT after the gate.
  ModelsService(const ModelRegistry* registry, RequestObserver observer = nullptr,
                const CallGate* gate = nullptr);

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context, const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) override;

 private:
  const ModelRegistry* registry_;
  RequestObserver observer_;
  const CallGate* gate_;
};

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_MODELS_SERVICE_H_
