#include "api/text_generation_service.h"

#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "api/parsed_request.h"
#include "api/status_convert.h"
#include "tokenizer/chat_format.h"

namespace deltaserve::api {

namespace {

constexpr size_t kMaxRequestIdBytes = 128;
constexpr int kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;
constexpr int kMaxStopTokenIds = 64;
constexpr int32_t kMaxLogprobs = 20;

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status Range(absl::string_view field, absl::string_view range, double got) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be in ", range, ", got ", got));
}

absl::Status NoTokenizer(const ServedModel& m, absl::string_view field) {
  return absl::FailedPreconditionError(
      absl::StrCat(field, ": model \"", m.name, "\" has no tokenizer.json; send token ids instead"));
}

uint64_t FreshSeed() {
  static std::mutex mu;
  static std::mt19937_64 rng(
      std::random_device{}() ^
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::lock_guard<std::mutex> lock(mu);
  return rng();
}

std::string NewRequestId() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t prefix = FreshSeed() & 0xffffffffu;
  return absl::StrCat("ds-", absl::Hex(prefix, absl::kZeroPad8), "-", counter.fetch_add(1) + 1);
}

int64_t VocabSize(const ServedModel& m) { return m.engine->model().config().vocab_size; }
int64_t MaxModelLen(const ServedModel& m) { return m.engine->max_model_len(); }

absl::Status CheckIds(absl::string_view field, const google::protobuf::RepeatedField<int32_t>& ids,
                      int64_t vocab_size) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "] must be in [0, vocab_size ", vocab_size, "), got ", ids[i]));
    }
  }
  return absl::OkStatus();
}

// Renders a ChatInput to prompt text; errors name chat.* fields.
absl::StatusOr<std::string> RenderChatInput(const v1::ChatInput& chat) {
  if (chat.messages_size() == 0) return Invalid("chat.messages", "at least one message is required");
  std::vector<tokenizer::ChatMessage> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    const std::string path = absl::StrCat("chat.messages[", i, "]");
    if (m.role() != "system" && m.role() != "user" && m.role() != "assistant" && m.role() != "tool") {
      return Invalid(absl::StrCat(path, ".role"),
                     absl::StrCat("must be system, user, assistant or tool, got \"", m.role(), "\""));
    }
    tokenizer::ChatMessage out;
    out.role = m.role();
    out.content = m.content();
    if (m.has_reasoning_content()) {
      if (m.role() != "assistant")
        return Invalid(absl::StrCat(path, ".reasoning_content"), "assistant messages only");
      out.reasoning_content = m.reasoning_content();
    }
    if (m.tool_calls_size() > 0 && m.role() != "assistant")
      return Invalid(absl::StrCat(path, ".tool_calls"), "assistant messages only");
    for (int j = 0; j < m.tool_calls_size(); ++j) {
      if (m.tool_calls(j).name().empty())
        return Invalid(absl::StrCat(path, ".tool_calls[", j, "].name"), "empty; a function name is required");
      out.tool_calls.push_back({m.tool_calls(j).name(), m.tool_calls(j).arguments()});
    }
    messages.push_back(std::move(out));
  }
  tokenizer::ChatOptions options;
  options.enable_thinking = !chat.has_enable_thinking() || chat.enable_thinking();
  for (int i = 0; i < chat.tools_json_size(); ++i) {
    absl::StatusOr<std::string> dumped = tokenizer::PythonJsonDumps(chat.tools_json(i));
    if (!dumped.ok() || !absl::StartsWith(*dumped, "{")) {
      return Invalid(absl::StrCat("chat.tools_json[", i, "]"), "must be a JSON object");
    }
    options.tools_json.push_back(chat.tools_json(i));
  }
  absl::StatusOr<std::string> text = tokenizer::RenderChat(messages, options);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat("chat.", text.status().message()));
  }
  return text;
}

// Applies the request's sampling fields over the model's defaults, checking each against the proto's
// documented range. `prompt_len` decides max_tokens' room.
absl::StatusOr<engine::SamplingParams> ToSamplingParams(const ServedModel& m, const v1::SamplingParams& s,
                                                        int64_t prompt_len) {
  engine::SamplingParams p = m.defaults;
  const int64_t vocab = VocabSize(m);
  const int64_t max_len = MaxModelLen(m);
  if (s.has_temperature()) {
    if (!std::isfinite(s.temperature()) || s.temperature() < 0 || s.temperature() > 100)
      return Range("sampling.temperature", "[0, 100]", s.temperature());
    p.temperature = s.temperature();
  }
  if (s.has_top_k()) {
    if (s.top_k() < 0 || s.top_k() > vocab)
      return Range("sampling.top_k", absl::StrCat("[0, vocab_size ", vocab, "]"), s.top_k());
    p.top_k = s.top_k();
  }
  if (s.has_top_p()) {
    if (!(s.top_p() > 0 && s.top_p() <= 1)) return Range("sampling.top_p", "(0, 1]", s.top_p());
    p.top_p = s.top_p();
  }
  if (s.has_min_p()) {
    if (!(s.min_p() >= 0 && s.min_p() <= 1)) return Range("sampling.min_p", "[0, 1]", s.min_p());
    p.min_p = s.min_p();
  }
  if (s.has_repetition_penalty()) {
    if (!(std::isfinite(s.repetition_penalty()) && s.repetition_penalty() > 0))
      return Range("sampling.repetition_penalty", "(0, inf)", s.repetition_penalty());
    p.repetition_penalty = s.repetition_penalty();
  }
  if (!(s.presence_penalty() >= -2 && s.presence_penalty() <= 2))
    return Range("sampling.presence_penalty", "[-2, 2]", s.presence_penalty());
  p.presence_penalty = s.presence_penalty();
  if (!(s.frequency_penalty() >= -2 && s.frequency_penalty() <= 2))
    return Range("sampling.frequency_penalty", "[-2, 2]", s.frequency_penalty());
  p.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) p.seed = s.seed();
  if (s.has_max_tokens()) {
    if (s.max_tokens() < 1 || s.max_tokens() > max_len - 1)
      return Range("sampling.max_tokens",
                   absl::StrCat("[1, ", max_len - 1, "] (max_model_len ", max_len, " - 1)"), s.max_tokens());
    if (prompt_len + s.max_tokens() > max_len) {
      return Invalid("sampling.max_tokens", absl::StrCat("prompt tokens (", prompt_len, ") + max_tokens (",
                                                         s.max_tokens(), ") exceed max_model_len ", max_len));
    }
    p.max_new_tokens = s.max_tokens();
  } else {
    p.max_new_tokens = std::min<int64_t>(p.max_new_tokens, max_len - prompt_len);
  }
  if (s.stop_size() > kMaxStopStrings)
    return Invalid("sampling.stop",
                   absl::StrCat("at most ", kMaxStopStrings, " entries, got ", s.stop_size()));
  p.stop.clear();
  for (int i = 0; i < s.stop_size(); ++i) {
    if (s.stop(i).empty() || s.stop(i).size() > kMaxStopStringBytes)
      return Invalid(absl::StrCat("sampling.stop[", i, "]"),
                     absl::StrCat("must be 1 to ", kMaxStopStringBytes, " bytes, got ", s.stop(i).size()));
    p.stop.push_back(s.stop(i));
  }
  if (!p.stop.empty() && m.tokenizer == nullptr)
    return Invalid("sampling.stop",
                   "this model has no tokenizer, so stop strings cannot match; use stop_token_ids");
  if (s.stop_token_ids_size() > kMaxStopTokenIds)
    return Invalid("sampling.stop_token_ids",
                   absl::StrCat("at most ", kMaxStopTokenIds, " entries, got ", s.stop_token_ids_size()));
  absl::Status ids = CheckIds("sampling.stop_token_ids", s.stop_token_ids(), vocab);
  if (!ids.ok()) return ids;
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.ignore_eos = s.ignore_eos();
  p.logprobs = false;
  p.top_logprobs = 0;
  if (s.has_logprobs() && s.logprobs() != -1) {
    if (s.logprobs() < 0 || s.logprobs() > kMaxLogprobs)
      return Range("sampling.logprobs", "-1 (none) or [0, 20]", s.logprobs());
    p.logprobs = true;
    p.top_logprobs = s.logprobs();
  }
  return p;
}

void FillLogprobs(const std::vector<engine::SampleResult>& results, v1::GenerateResponse* r) {
  for (const engine::SampleResult& s : results) {
    v1::TokenLogprob* lp = r->add_logprobs();
    lp->set_token_id(s.token_id);
    lp->set_logprob(s.logprob);
    for (const engine::TokenLogprob& t : s.top_logprobs) {
      v1::TopLogprob* top = lp->add_top_logprobs();
      top->set_token_id(t.token_id);
      top->set_logprob(t.logprob);
    }
  }
}

// Streams one Generate call. The engine callback (engine thread) only appends to `pending_` under mu_
// and starts a write when none is in flight; OnWriteDone continues; the final event ends the call.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
                  const grpc::Status& parse_error, const ModelRegistry* registry, RequestObserver observer,
                  const CallGate* gate)
      : state_(std::make_shared<State>()), observer_(std::move(observer)) {
    state_->reactor = this;
    received_ = std::chrono::steady_clock::now();
    if (grpc::Status admitted = AdmitCall(gate, context, "Generate"); !admitted.ok()) {
      FinishNow(admitted);
      return;
    }
    if (!parse_error.ok()) {
      FinishNow(parse_error);
      return;
    }
    absl::StatusOr<PreparedRequest> prepared = PrepareGenerate(*registry, *request);
    if (!prepared.ok()) {
      FinishNow(ToGrpcStatus(prepared.status()));
      return;
    }
    engine_ = prepared->model->engine;
    state_->request_id = prepared->request_id;
    state_->seed = prepared->seed;
    state_->stop = prepared->engine_request.params.stop;
    state_->queue_offset =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - received_).count();
    const auto deadline = context->deadline();
    if (deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
      prepared->engine_request.deadline = absl::FromChrono(deadline);
    }
    std::shared_ptr<State> state = state_;
    prepared->engine_request.on_event = [state](const engine::TokenEvent& e) { OnEvent(state, e); };
    absl::StatusOr<uint64_t> handle = engine_->Submit(std::move(prepared->engine_request));
    if (!handle.ok()) {
      FinishNow(ToGrpcStatus(handle.status()));
      return;
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->handle = *handle;
    state_->submitted = true;
  }

  void OnCancel() override {
    uint64_t handle = 0;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->client_gone = true;
      if (!state_->submitted) return;
      handle = state_->handle;
    }
    engine_->Cancel(handle);  // the engine's final event then finishes the call
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      uint64_t handle = 0;
      bool cancel = false;
      {
        std::lock_guard<std::mutex> lock(state_->mu);
        if (!state_->client_gone && state_->submitted) {
          state_->client_gone = true;
          cancel = true;
          handle = state_->handle;
        }
      }
      if (cancel) engine_->Cancel(handle);
    }
    Pump(state_, /*write_done=*/true);
  }

  void OnDone() override {
    if (observer_) observer_("Generate", final_code_);
    delete this;
  }

 private:
  struct State {
    std::mutex mu;
    GenerateReactor* reactor = nullptr;  // valid until Finish; never touched after it
    std::string request_id;
    uint64_t seed = 0;
    std::vector<std::string> stop;
    double queue_offset = 0;
    uint64_t handle = 0;
    bool submitted = false;
    bool client_gone = false;  // cancelled, deadline passed or a write failed
    bool in_flight = false;
    bool finished = false;  // Finish called
    bool have_pending = false;
    v1::GenerateResponse pending;  // coalesced events not yet written
    bool final_seen = false;
    grpc::Status final_status;
    bool final_message = true;     // the final status comes after a message
    v1::GenerateResponse writing;  // the message of the write in flight
  };

  static void OnEvent(const std::shared_ptr<State>& s, const engine::TokenEvent& e) {
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->finished) return;
      v1::GenerateResponse& r = s->pending;
      s->have_pending = true;
      r.set_request_id(s->request_id);
      r.mutable_token_ids()->Add(e.token_ids.begin(), e.token_ids.end());
      r.mutable_text()->append(e.text);
      FillLogprobs(e.logprobs, &r);
      if (e.finished) {
        s->final_seen = true;
        r.set_finish_reason(ToProtoFinishReason(e.reason));
        if (e.reason == engine::FinishReason::kStop && !e.stop_reason.empty()) {
          bool is_string = false;
          for (const std::string& stop : s->stop) is_string |= stop == e.stop_reason;
          int32_t id = 0;
          if (!is_string && absl::StartsWith(e.stop_reason, "token ") &&
              absl::SimpleAtoi(absl::string_view(e.stop_reason).substr(6), &id)) {
            r.set_stop_token_id(id);
          } else {
            r.set_stop_string(e.stop_reason);
          }
        }
        v1::Usage* u = r.mutable_usage();
        u->set_prompt_tokens(static_cast<int32_t>(e.prompt_tokens));
        u->set_completion_tokens(static_cast<int32_t>(e.completion_tokens));
        u->set_time_to_first_token_seconds(
            e.completion_tokens > 0 ? e.time_to_first_token_seconds + s->queue_offset : 0);
        u->set_total_seconds(e.total_seconds + s->queue_offset);
        r.set_seed(s->seed);
        switch (e.reason) {
          case engine::FinishReason::kStop:
          case engine::FinishReason::kLength:
            s->final_status = grpc::Status::OK;
            break;
          case engine::FinishReason::kCancelled:
            if (s->client_gone || absl::IsDeadlineExceeded(e.error)) {
              // The client's own cancellation or deadline: no final message.
              s->final_message = false;
              s->final_status = absl::IsDeadlineExceeded(e.error)
                                    ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded")
                                    : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
            } else {
              s->final_status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                             "the server is shutting down and ended this request");
            }
            break;
          case engine::FinishReason::kError:
            s->final_status = grpc::Status(grpc::StatusCode::INTERNAL,
                                           e.error.ok() ? "engine error" : std::string(e.error.message()));
            break;
        }
      }
    }
    Pump(s, /*write_done=*/false);
  }

  // Starts the next write, or finishes the call, if nothing is in flight. Never holds mu while calling
  // into gRPC.
  static void Pump(const std::shared_ptr<State>& s, bool write_done) {
    GenerateReactor* reactor = nullptr;
    bool write = false;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (write_done) s->in_flight = false;
      if (s->in_flight || s->finished) return;
      reactor = s->reactor;
      if (s->have_pending && !(s->final_seen && !s->final_message) && !s->client_gone) {
        s->writing = std::move(s->pending);
        s->pending.Clear();
        s->have_pending = false;
        s->in_flight = true;
        write = true;
      } else if (s->final_seen) {
        s->finished = true;
        if (s->client_gone && s->final_status.ok()) {
          s->final_status = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
        }
      } else {
        return;
      }
    }
    if (write) {
      reactor->StartWrite(&s->writing);
    } else {
      reactor->final_code_ = s->final_status.error_code();
      reactor->Finish(s->final_status);
    }
  }

  void FinishNow(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->finished = true;
    }
    final_code_ = status.error_code();
    Finish(status);
  }

  std::shared_ptr<State> state_;
  RequestObserver observer_;
  engine::Engine* engine_ = nullptr;
  std::chrono::steady_clock::time_point received_;
  grpc::StatusCode final_code_ = grpc::StatusCode::OK;
};

}  // namespace

v1::FinishReason ToProtoFinishReason(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

absl::StatusOr<PreparedRequest> PrepareGenerate(const ModelRegistry& registry,
                                                const v1::GenerateRequest& request) {
  absl::StatusOr<ServedModel*> found = registry.Find(request.model(), "model", ModelRegistry::Kind::kText);
  if (!found.ok()) return found.status();
  ServedModel& m = **found;
  if (!m.ready.load()) {
    return absl::UnavailableError(
        absl::StrCat("model \"", m.name, "\" is not ready (loading or shutting down)"));
  }
  PreparedRequest out;
  out.model = &m;
  if (request.request_id().size() > kMaxRequestIdBytes)
    return Invalid("request_id",
                   absl::StrCat("at most ", kMaxRequestIdBytes, " bytes, got ", request.request_id().size()));
  for (char c : request.request_id()) {
    if (c < 0x20 || c > 0x7e) return Invalid("request_id", "only printable ASCII (0x20-0x7E) is allowed");
  }
  out.request_id = request.request_id().empty() ? NewRequestId() : request.request_id();

  std::vector<int32_t>& prompt = out.engine_request.prompt;
  const int64_t vocab = VocabSize(m);
  const int64_t max_len = MaxModelLen(m);
  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt:
      if (request.prompt().empty()) return Invalid("prompt", "empty; give some text");
      if (m.tokenizer == nullptr) return NoTokenizer(m, "prompt");
      prompt = m.tokenizer->Encode(request.prompt());
      break;
    case v1::GenerateRequest::kChat: {
      if (m.tokenizer == nullptr) return NoTokenizer(m, "chat");
      absl::StatusOr<std::string> text = RenderChatInput(request.chat());
      if (!text.ok()) return text.status();
      prompt = m.tokenizer->Encode(*text);
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return Invalid("token_ids.ids", "empty; give at least one token id");
      absl::Status st = CheckIds("token_ids.ids", ids, vocab);
      if (!st.ok()) return st;
      prompt.assign(ids.begin(), ids.end());
      break;
    }
    default:
      return Invalid("input", "exactly one of prompt, chat and token_ids is required");
  }
  if (prompt.empty()) return Invalid("input", "the prompt tokenizes to no tokens");
  if (static_cast<int64_t>(prompt.size()) > max_len - 1) {
    return Invalid("input", absl::StrCat("the prompt has ", prompt.size(), " tokens; max_model_len ", max_len,
                                         " allows at most ", max_len - 1));
  }
  absl::StatusOr<engine::SamplingParams> params =
      ToSamplingParams(m, request.sampling(), static_cast<int64_t>(prompt.size()));
  if (!params.ok()) return params.status();
  if (!params->seed.has_value()) params->seed = FreshSeed();
  out.seed = *params->seed;
  out.engine_request.params = *std::move(params);
  return out;
}

// The methods' indices in text_generation.proto's service (gRPC numbers them in declaration order).
enum TextGenerationMethod { kGenerateMethod = 0, kTokenizeMethod = 1, kDetokenizeMethod = 2 };

TextGenerationService::TextGenerationService(const ModelRegistry* registry, RequestObserver observer,
                                             const CallGate* gate)
    : registry_(registry), observer_(std::move(observer)), gate_(gate) {
  MarkMethodCallback(
      kGenerateMethod,
      new grpc::internal::CallbackServerStreamingHandler<ParsedRequest<v1::GenerateRequest>,
                                                         v1::GenerateResponse>(
          [this](grpc::CallbackServerContext* context, const ParsedRequest<v1::GenerateRequest>* request) {
            return Generate(context, &request->message, request->error);
          }));
  MarkMethodCallback(
      kTokenizeMethod,
      new grpc::internal::CallbackUnaryHandler<ParsedRequest<v1::TokenizeRequest>, v1::TokenizeResponse>(
          [this](grpc::CallbackServerContext* context, const ParsedRequest<v1::TokenizeRequest>* request,
                 v1::TokenizeResponse* response) {
            if (request->error.ok()) return Tokenize(context, &request->message, response);
            return FinishUnparsed(gate_, context, observer_, "Tokenize", request->error);
          }));
  MarkMethodCallback(
      kDetokenizeMethod,
      new grpc::internal::CallbackUnaryHandler<ParsedRequest<v1::DetokenizeRequest>, v1::DetokenizeResponse>(
          [this](grpc::CallbackServerContext* context, const ParsedRequest<v1::DetokenizeRequest>* request,
                 v1::DetokenizeResponse* response) {
            if (request->error.ok()) return Detokenize(context, &request->message, response);
            return FinishUnparsed(gate_, context, observer_, "Detokenize", request->error);
          }));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* TextGenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
    const grpc::Status& parse_error) {
  return new GenerateReactor(context, request, parse_error, registry_, observer_, gate_);
}

grpc::ServerUnaryReactor* TextGenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                          const v1::TokenizeRequest* request,
                                                          v1::TokenizeResponse* response) {
  if (grpc::Status st = AdmitCall(gate_, context, "Tokenize"); !st.ok())
    return FinishUnary(context, observer_, "Tokenize", st);
  absl::StatusOr<ServedModel*> found = registry_->Find(request->model(), "model", ModelRegistry::Kind::kText);
  if (!found.ok()) return FinishUnary(context, observer_, "Tokenize", ToGrpcStatus(found.status()));
  const ServedModel& m = **found;
  std::string text;
  switch (request->input_case()) {
    case v1::TokenizeRequest::kText:
      if (m.tokenizer == nullptr)
        return FinishUnary(context, observer_, "Tokenize", ToGrpcStatus(NoTokenizer(m, "text")));
      text = request->text();
      break;
    case v1::TokenizeRequest::kChat: {
      if (m.tokenizer == nullptr)
        return FinishUnary(context, observer_, "Tokenize", ToGrpcStatus(NoTokenizer(m, "chat")));
      absl::StatusOr<std::string> rendered = RenderChatInput(request->chat());
      if (!rendered.ok()) return FinishUnary(context, observer_, "Tokenize", ToGrpcStatus(rendered.status()));
      text = *rendered;
      response->set_chat_prompt(text);
      break;
    }
    default:
      return FinishUnary(context, observer_, "Tokenize",
                         ToGrpcStatus(Invalid("input", "exactly one of text and chat is required")));
  }
  for (int32_t id : m.tokenizer->Encode(text)) {
    response->add_token_ids(id);
    if (request->return_tokens()) response->add_tokens(m.tokenizer->IdToToken(id).value_or(""));
  }
  return FinishUnary(context, observer_, "Tokenize", grpc::Status::OK);
}

grpc::ServerUnaryReactor* TextGenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                            const v1::DetokenizeRequest* request,
                                                            v1::DetokenizeResponse* response) {
  if (grpc::Status st = AdmitCall(gate_, context, "Detokenize"); !st.ok())
    return FinishUnary(context, observer_, "Detokenize", st);
  absl::StatusOr<ServedModel*> found = registry_->Find(request->model(), "model", ModelRegistry::Kind::kText);
  if (!found.ok()) return FinishUnary(context, observer_, "Detokenize", ToGrpcStatus(found.status()));
  const ServedModel& m = **found;
  if (m.tokenizer == nullptr)
    return FinishUnary(context, observer_, "Detokenize", ToGrpcStatus(NoTokenizer(m, "token_ids")));
  if (request->token_ids_size() > MaxModelLen(m)) {
    return FinishUnary(
        context, observer_, "Detokenize",
        ToGrpcStatus(Invalid("token_ids", absl::StrCat("at most max_model_len ", MaxModelLen(m), " ids, got ",
                                                       request->token_ids_size()))));
  }
  absl::Status st = CheckIds("token_ids", request->token_ids(), VocabSize(m));
  if (!st.ok()) return FinishUnary(context, observer_, "Detokenize", ToGrpcStatus(st));
  std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  absl::StatusOr<std::string> text = m.tokenizer->Decode(ids, request->skip_special_tokens());
  if (!text.ok()) return FinishUnary(context, observer_, "Detokenize", ToGrpcStatus(text.status()));
  response->set_text(*text);
  return FinishUnary(context, observer_, "Detokenize", grpc::Status::OK);
}

}  // namespace deltaserve::api
