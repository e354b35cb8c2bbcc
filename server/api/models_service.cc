#include "api/models_service.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "api/parsed_request.h"
#include "api/status_convert.h"
#include "deltaserve/kernels/recurrent_state.h"
#include "deltaserve/kernels/tri_inverse.h"

namespace deltaserve::api {

namespace {
constexpr int32_t kMaxLogprobs = 20;

std::string DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return c10::toString(t);
  }
}
}  // namespace

absl::StatusOr<ServedModel*> ModelRegistry::Find(absl::string_view name, absl::string_view field,
                                                 Kind kind) const {
  // Echo at most kMaxEchoedNameBytes of a name in errors: a huge name must not make a huge status (gRPC
  // turns a status over its metadata limit into RESOURCE_EXHAUSTED, hiding the real answer).
  const std::string shown =
      name.size() <= kMaxEchoedNameBytes
          ? std::string(name)
          : absl::StrCat(name.substr(0, kMaxEchoedNameBytes), "... (", name.size(), " bytes)");
  auto matches = [kind](const ServedModel* m) {
    return kind == Kind::kAny || (kind == Kind::kText ? m->engine != nullptr : m->vision != nullptr);
  };
  const char* wanted = kind == Kind::kVision ? "vision detection" : "text generation";
  if (name.empty()) {
    for (ServedModel* m : models_)
      if (matches(m)) return m;
    return absl::UnavailableError(absl::StrCat("no ", kind == Kind::kAny ? "" : wanted, " model is served"));
  }
  std::vector<std::string> names;
  for (ServedModel* m : models_) {
    if (m->name == name) {
      if (matches(m)) return m;
      return absl::InvalidArgumentError(absl::StrCat(field, ": \"", shown, "\" is a ",
                                                     m->engine ? "text generation" : "vision detection",
                                                     " model; this method needs a ", wanted, " model"));
    }
    names.push_back(m->name);
  }
  return absl::NotFoundError(
      absl::StrCat(field, ": \"", shown, "\" is not a served model; served: ", absl::StrJoin(names, ", ")));
}

namespace {
void FillVisionModelInfo(const ServedModel& model, v1::ModelInfo* info) {
  const models::padre::PadreConfig& c = model.vision->model().config();
  info->set_name(model.name);
  info->set_kind(v1::MODEL_KIND_VISION_DETECTION);
  info->set_architecture(c.mixer == models::padre::Mixer::kPadre ? "PadreDetector"
                                                                 : "PadreDetector(softmax)");
  info->set_dtype("float32");
  info->set_device(model.vision->model().options().device.str());
  info->set_ready(model.ready.load());
  info->set_num_layers(static_cast<int32_t>(c.num_layers));
  info->set_hidden_size(static_cast<int32_t>(c.hidden_size));
  info->mutable_limits()->set_max_queued_requests(static_cast<int32_t>(model.vision->options().max_queue));
  v1::VisionInfo* v = info->mutable_vision();
  v->set_mixer(c.mixer == models::padre::Mixer::kPadre ? "padre" : "softmax");
  v->set_input_size(static_cast<int32_t>(c.image_size));
  v->set_max_batch_size(static_cast<int32_t>(model.vision->options().max_batch));
  for (const std::string& name : c.class_names) v->add_class_names(name);
}
}  // namespace

void FillModelInfo(const ServedModel& model, v1::ModelInfo* info) {
  if (model.vision) return FillVisionModelInfo(model, info);
  const models::qwen35::Qwen35Config& c = model.engine->model().config();
  const models::qwen35::ModelOptions& o = model.engine->model().options();
  info->set_name(model.name);
  info->set_kind(v1::MODEL_KIND_TEXT_GENERATION);
  info->set_architecture(c.architecture);
  info->set_dtype(DtypeName(o.dtype));
  info->set_device(o.device.str());
  info->set_ready(model.ready.load());
  info->set_num_layers(static_cast<int32_t>(c.num_hidden_layers));
  int32_t linear = 0, full = 0;
  for (models::qwen35::LayerType t : c.layer_types) {
    (t == models::qwen35::LayerType::kLinearAttention ? linear : full)++;
  }
  info->mutable_layer_types()->set_linear_attention(linear);
  info->mutable_layer_types()->set_full_attention(full);
  info->set_hidden_size(static_cast<int32_t>(c.hidden_size));
  info->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  info->set_max_model_len(static_cast<int32_t>(model.engine->max_model_len()));
  info->set_max_num_seqs(static_cast<int32_t>(model.engine->max_num_seqs()));
  info->set_inverse_method(kernels::ResolveTriInverseMethod(o.inverse_method, o.device.is_cuda()));
  info->set_state_dtype(kernels::StateDtypeName(o.state_dtype));
  v1::ModelLimits* limits = info->mutable_limits();
  limits->set_max_prompt_tokens(static_cast<int32_t>(model.engine->max_model_len() - 1));
  limits->set_max_new_tokens(static_cast<int32_t>(model.engine->max_model_len() - 1));
  limits->set_max_logprobs(kMaxLogprobs);
  limits->set_max_queued_requests(static_cast<int32_t>(model.engine_options.max_queue));
  const engine::SamplingParams& d = model.defaults;
  v1::SamplingParams* s = info->mutable_default_sampling();
  s->set_temperature(d.temperature);
  s->set_top_k(static_cast<int32_t>(d.top_k));
  s->set_top_p(d.top_p);
  s->set_min_p(d.min_p);
  s->set_repetition_penalty(d.repetition_penalty);
  s->set_presence_penalty(d.presence_penalty);
  s->set_frequency_penalty(d.frequency_penalty);
  s->set_max_tokens(static_cast<int32_t>(d.max_new_tokens));
  s->set_logprobs(-1);
  for (int32_t id : d.eos_token_ids) info->add_eos_token_ids(id);
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, const RequestObserver& observer,
                                      absl::string_view method, const grpc::Status& status) {
  if (observer) observer(method, status.error_code());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

grpc::Status AdmitCall(const CallGate* gate, grpc::CallbackServerContext* context, absl::string_view method,
                       bool drain_applies) {
  return gate == nullptr ? grpc::Status::OK : gate->Admit(context, method, drain_applies);
}

grpc::ServerUnaryReactor* FinishUnparsed(const CallGate* gate, grpc::CallbackServerContext* context,
                                         const RequestObserver& observer, absl::string_view method,
                                         const grpc::Status& parse_error, bool drain_applies) {
  grpc::Status admitted = AdmitCall(gate, context, method, drain_applies);
  return FinishUnary(context, observer, method, admitted.ok() ? parse_error : admitted);
}

// The methods' indices in models.proto's service (gRPC numbers them in declaration order).
enum ModelsMethod { kListModelsMethod = 0, kGetModelMethod = 1 };

ModelsService::ModelsService(const ModelRegistry* registry, RequestObserver observer, const CallGate* gate)
    : registry_(registry), observer_(std::move(observer)), gate_(gate) {
  MarkMethodCallback(
      kListModelsMethod,
      new grpc::internal::CallbackUnaryHandler<ParsedRequest<v1::ListModelsRequest>, v1::ListModelsResponse>(
          [this](grpc::CallbackServerContext* context, const ParsedRequest<v1::ListModelsRequest>* request,
                 v1::ListModelsResponse* response) {
            if (request->error.ok()) return ListModels(context, &request->message, response);
            return FinishUnparsed(gate_, context, observer_, "ListModels", request->error,
                                  /*drain_applies=*/false);
          }));
  MarkMethodCallback(
      kGetModelMethod,
      new grpc::internal::CallbackUnaryHandler<ParsedRequest<v1::GetModelRequest>, v1::ModelInfo>(
          [this](grpc::CallbackServerContext* context, const ParsedRequest<v1::GetModelRequest>* request,
                 v1::ModelInfo* response) {
            if (request->error.ok()) return GetModel(context, &request->message, response);
            return FinishUnparsed(gate_, context, observer_, "GetModel", request->error,
                                  /*drain_applies=*/false);
          }));
}

grpc::ServerUnaryReactor* ModelsService::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest*,
                                                    v1::ListModelsResponse* response) {
  // Through a drain the Models service keeps answering (each model's ready is false): how clients see it.
  if (grpc::Status st = AdmitCall(gate_, context, "ListModels", /*drain_applies=*/false); !st.ok())
    return FinishUnary(context, observer_, "ListModels", st);
  for (ServedModel* m : registry_->models()) FillModelInfo(*m, response->add_models());
  if (!registry_->models().empty()) response->set_default_model(registry_->models().front()->name);
  return FinishUnary(context, observer_, "ListModels", grpc::Status::OK);
}

grpc::ServerUnaryReactor* ModelsService::GetModel(grpc::CallbackServerContext* context,
                                                  const v1::GetModelRequest* request,
                                                  v1::ModelInfo* response) {
  if (grpc::Status st = AdmitCall(gate_, context, "GetModel", /*drain_applies=*/false); !st.ok())
    return FinishUnary(context, observer_, "GetModel", st);
  absl::StatusOr<ServedModel*> m = registry_->Find(request->name(), "name");
  if (!m.ok()) return FinishUnary(context, observer_, "GetModel", ToGrpcStatus(m.status()));
  FillModelInfo(**m, response);
  return FinishUnary(context, observer_, "GetModel", grpc::Status::OK);
}

}  // namespace deltaserve::api
