#include "api/openai/http_server.h"

#include <civetweb.h>

#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/openai/translate.h"
#include "api/text_generation_service.h"
#include "tokenizer/assistant_output.h"

namespace deltaserve::api::openai {
namespace {

using json = nlohmann::json;

// Every response goes out through these, with a length or chunked, so keep-alive connections stay usable.
void SendHeaders(mg_connection* c, int status, const char* content_type, long long length,
                 const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  mg_response_header_start(c, status);
  mg_response_header_add(c, "Content-Type", content_type, -1);
  if (length >= 0) {
    mg_response_header_add(c, "Content-Length", std::to_string(length).c_str(), -1);
  } else {
    mg_response_header_add(c, "Transfer-Encoding", "chunked", -1);
    mg_response_header_add(c, "Cache-Control", "no-cache", -1);
  }
  for (const auto& [name, value] : extra) mg_response_header_add(c, name.c_str(), value.c_str(), -1);
  mg_response_header_send(c);
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

int SendJson(mg_connection* c, int status, const json& body,
             const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  const std::string s = Dump(body);
  SendHeaders(c, status, "application/json", static_cast<long long>(s.size()), extra);
  mg_write(c, s.data(), s.size());
  return status;
}

// An error naming the OpenAI parameter it is about. A message that starts with the gRPC field path
// ("sampling.max_tokens: ...") is rewritten to start with the parameter's name instead.
int SendError(mg_connection* c, Endpoint endpoint, const absl::Status& status, int64_t retry_after_ms = 0) {
  std::string message(status.message());
  const std::string param = ParamOf(endpoint, message);
  if (!param.empty()) {
    size_t end = message.find_first_of(" :");
    message = param + message.substr(end);
  }
  HttpError e = ToHttpError(absl::Status(status.code(), message), param);
  std::vector<std::pair<std::string, std::string>> extra;
  if (retry_after_ms > 0) extra.emplace_back("Retry-After", std::to_string((retry_after_ms + 999) / 1000));
  return SendJson(c, e.http_status, e.body, extra);
}

// Engine events of one request's choices (index, event), handed from the engine thread (which must not
// block) to the HTTP thread.
struct EventQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int, engine::TokenEvent>> events;
  void Push(int choice, const engine::TokenEvent& e) {
    {
      std::lock_guard<std::mutex> lock(mu);
      events.emplace_back(choice, e);
    }
    cv.notify_one();
  }
  std::pair<int, engine::TokenEvent> Pop() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !events.empty(); });
    std::pair<int, engine::TokenEvent> e = std::move(events.front());
    events.pop_front();
    return e;
  }
};

std::string TokenText(const tokenizer::Tokenizer* t, int32_t id) {
  if (t == nullptr) return absl::StrCat("<", id, ">");
  return t->Decode({id}).value_or("");
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
  return b;
}

// Chat logprobs entries ({"token", "logprob", "bytes", "top_logprobs"}) of `e`'s tokens.
void AppendChatLogprobs(const tokenizer::Tokenizer* t, const engine::TokenEvent& e, json* content) {
  for (const engine::SampleResult& r : e.logprobs) {
    const std::string tok = TokenText(t, r.token_id);
    json top = json::array();
    for (const engine::TokenLogprob& alt : r.top_logprobs) {
      const std::string a = TokenText(t, alt.token_id);
      top.push_back({{"token", a}, {"logprob", alt.logprob}, {"bytes", Bytes(a)}});
    }
    content->push_back(
        {{"token", tok}, {"logprob", r.logprob}, {"bytes", Bytes(tok)}, {"top_logprobs", top}});
  }
}

// Completions logprobs ({"tokens", "token_logprobs", "top_logprobs", "text_offset"}), appended to.
void AppendCompletionLogprobs(const tokenizer::Tokenizer* t, const engine::TokenEvent& e, size_t* offset,
                              json* lp) {
  for (const engine::SampleResult& r : e.logprobs) {
    const std::string tok = TokenText(t, r.token_id);
    (*lp)["tokens"].push_back(tok);
    (*lp)["token_logprobs"].push_back(r.logprob);
    json top = json::object();
    for (const engine::TokenLogprob& alt : r.top_logprobs) top[TokenText(t, alt.token_id)] = alt.logprob;
    (*lp)["top_logprobs"].push_back(top);
    (*lp)["text_offset"].push_back(*offset);
    *offset += tok.size();
  }
}

json EmptyCompletionLogprobs() {
  return {{"tokens", json::array()},
          {"token_logprobs", json::array()},
          {"top_logprobs", json::array()},
          {"text_offset", json::array()}};
}

// OpenAI tool_calls entries; ids are the request's id with the call's index.
json ToolCallsJson(const std::vector<tokenizer::ToolCall>& calls, const std::string& request_id) {
  json out = json::array();
  for (size_t k = 0; k < calls.size(); ++k) {
    out.push_back({{"index", k},
                   {"id", absl::StrCat("call_", request_id, "_", k)},
                   {"type", "function"},
                   {"function", {{"name", calls[k].name}, {"arguments", calls[k].arguments}}}});
  }
  return out;
}

// The status a finished request that did not end normally gets (it has no choice to return).
absl::Status EndStatus(const engine::TokenEvent& e) {
  if (e.reason == engine::FinishReason::kError)
    return absl::InternalError(e.error.ok() ? "engine error" : std::string(e.error.message()));
  if (absl::IsDeadlineExceeded(e.error)) return absl::DeadlineExceededError("deadline exceeded");
  return absl::UnavailableError("the server is shutting down and ended this request");
}

bool Abnormal(const engine::TokenEvent& e) {
  return e.reason == engine::FinishReason::kError || e.reason == engine::FinishReason::kCancelled;
}

// What a stream whose client went away counts as (nginx's "client closed request").
constexpr int kClientGone = 499;

// One API request's choices: `n` engine requests (seeds seed, seed + 1, ...) whose events are merged into
// one response, streamed or whole.
class Generation {
 public:
  Generation(mg_connection* c, const OpenAiRequest& req, PreparedRequest prepared)
      : c_(c), req_(req), prepared_(std::move(prepared)), created_(static_cast<int64_t>(std::time(nullptr))) {
    chat_ = req_.endpoint == Endpoint::kChatCompletions;
    // Tool calls are parsed out of the answer when the request offered tools (and did not say "none").
    parse_tool_calls_ = chat_ && req_.generate.chat().tools_json_size() > 0 && req_.tools_enabled;
    id_ = absl::StrCat(chat_ ? "chatcmpl-" : "cmpl-", prepared_.request_id);
  }

  int Run() {
    engine::Engine* engine = prepared_.model->engine;
    auto queue = std::make_shared<EventQueue>();
    for (int i = 0; i < req_.n; ++i) {
      engine::EngineRequest r = prepared_.engine_request;
      // Choices differ by seed; the first keeps the request's, so n = 1 is the single request.
      if (i > 0) r.params.seed = prepared_.seed + static_cast<uint64_t>(i);
      r.on_event = [queue, i](const engine::TokenEvent& e) { queue->Push(i, e); };
      absl::StatusOr<uint64_t> handle = engine->Submit(std::move(r));
      if (!handle.ok()) {
        CancelAll(*engine);  // their final events land in the queue, which the callbacks keep alive
        return SendError(c_, req_.endpoint, handle.status());
      }
      handles_.push_back(*handle);
    }
    choices_.resize(static_cast<size_t>(req_.n), Choice(parse_tool_calls_, req_.echo_prefix));
    return req_.stream ? Stream(*engine, *queue) : Whole(*engine, *queue);
  }

 private:
  // What one choice has produced so far.
  struct Choice {
    Choice(bool parse_tool_calls, const std::string& echo)
        : text(echo), offset(echo.size()), split(parse_tool_calls) {}
    std::string text;                            // whole responses: the answer (after any echo)
    json chat_lp = json::array();                // whole chat responses: logprobs content
    json comp_lp = EmptyCompletionLogprobs();    // completions: logprobs
    size_t offset;                               // completions: text_offset of the next token
    tokenizer::AssistantOutputStream split;      // streamed chat: reasoning / content / tool calls
    bool finished = false;
    engine::TokenEvent last;                     // the finishing event
  };

  const tokenizer::Tokenizer* tokenizer() const { return prepared_.model->tokenizer; }

  void CancelAll(engine::Engine& engine) {
    for (uint64_t h : handles_) engine.Cancel(h);  // finished handles are ignored
  }

  json Envelope(const char* object) const {
    return {{"id", id_}, {"object", object}, {"created", created_}, {"model", prepared_.model->name}};
  }

  // The prompt once, the completions of every choice.
  json Usage() const {
    int64_t completion = 0;
    for (const Choice& ch : choices_) completion += ch.last.completion_tokens;
    const int64_t prompt = choices_.front().last.prompt_tokens;
    return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  }

  int Whole(engine::Engine& engine, EventQueue& queue) {
    for (int left = req_.n; left > 0;) {
      auto [i, e] = queue.Pop();
      Choice& ch = choices_[static_cast<size_t>(i)];
      ch.text += e.text;
      if (req_.logprobs)
        chat_ ? AppendChatLogprobs(tokenizer(), e, &ch.chat_lp)
              : AppendCompletionLogprobs(tokenizer(), e, &ch.offset, &ch.comp_lp);
      if (!e.finished) continue;
      if (Abnormal(e)) {
        CancelAll(engine);
        return SendError(c_, req_.endpoint, EndStatus(e));
      }
      ch.finished = true;
      ch.last = std::move(e);
      --left;
    }
    json choices = json::array();
    for (size_t i = 0; i < choices_.size(); ++i) {
      const Choice& ch = choices_[i];
      json choice = {{"index", i}, {"finish_reason", FinishReasonJson(ToProtoFinishReason(ch.last.reason))}};
      if (chat_) {
        tokenizer::AssistantOutput split = tokenizer::ParseAssistantOutput(ch.text, parse_tool_calls_);
        json message = {{"role", "assistant"}, {"content", split.content}};
        if (split.reasoning.has_value()) message["reasoning_content"] = *split.reasoning;
        if (!split.tool_calls.empty()) {
          message["tool_calls"] = ToolCallsJson(split.tool_calls, ChoiceId(i));
          if (split.content.empty()) message["content"] = nullptr;
          choice["finish_reason"] = "tool_calls";
        }
        choice["message"] = message;
        choice["logprobs"] = req_.logprobs ? json{{"content", ch.chat_lp}} : json();
      } else {
        choice["text"] = ch.text;
        choice["logprobs"] = req_.logprobs ? ch.comp_lp : json();
      }
      choices.push_back(std::move(choice));
    }
    json body = Envelope(chat_ ? "chat.completion" : "text_completion");
    body["choices"] = std::move(choices);
    body["usage"] = Usage();
    return SendJson(c_, 200, body);
  }

  // Tool-call ids stay unique across choices.
  std::string ChoiceId(size_t i) const {
    return i == 0 ? prepared_.request_id : absl::StrCat(prepared_.request_id, "_", i);
  }

  // False when the client is gone.
  bool Send(const json& chunk) { return Event(Dump(chunk)); }
  bool Event(const std::string& data) {
    const std::string frame = absl::StrCat("data: ", data, "\n\n");
    return mg_send_chunk(c_, frame.data(), static_cast<unsigned>(frame.size())) > 0;
  }

  int Stream(engine::Engine& engine, EventQueue& queue) {
    SendHeaders(c_, 200, "text/event-stream", -1);
    const char* object = chat_ ? "chat.completion.chunk" : "text_completion";
    bool client_gone = false, failed = false;
    auto chunk = [&](size_t i, const json& delta_or_text, const json& logprobs, const json& finish) {
      json choice = {{"index", i}, {"logprobs", logprobs}, {"finish_reason", finish}};
      choice[chat_ ? "delta" : "text"] = delta_or_text;
      json c = Envelope(object);
      c["choices"] = json::array({choice});
      if (req_.include_usage) c["usage"] = nullptr;
      return c;
    };
    // A write that fails means the client left: every choice is cancelled, and the loop below only
    // drains their final events.
    auto send = [&](const json& c) {
      if (client_gone || Send(c)) return;
      client_gone = true;
      CancelAll(engine);
    };
    for (size_t i = 0; i < choices_.size(); ++i) {
      if (chat_)
        send(chunk(i, {{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
      else if (!req_.echo_prefix.empty())
        send(chunk(i, req_.echo_prefix, nullptr, nullptr));
    }
    // A chat delta of reasoning and/or content; an empty object when there is neither.
    auto chat_delta = [](const std::string& reasoning, const std::string& content) {
      json d = json::object();
      if (!reasoning.empty()) d["reasoning_content"] = reasoning;
      if (!content.empty()) d["content"] = content;
      return d;
    };
    for (int left = req_.n; left > 0;) {
      auto [index, e] = queue.Pop();
      const size_t i = static_cast<size_t>(index);
      Choice& ch = choices_[i];
      if (e.finished) --left;
      if (client_gone || failed) continue;
      if (!e.text.empty() || (req_.logprobs && !e.token_ids.empty())) {
        json lp = nullptr;
        if (req_.logprobs) {
          if (chat_) {
            json content = json::array();
            AppendChatLogprobs(tokenizer(), e, &content);
            lp = {{"content", content}};
          } else {
            lp = EmptyCompletionLogprobs();
            AppendCompletionLogprobs(tokenizer(), e, &ch.offset, &lp);
          }
        }
        json piece = json(e.text);
        if (chat_) {
          tokenizer::AssistantOutputStream::Delta d = ch.split.Push(e.text);
          piece = chat_delta(d.reasoning, d.content);
        }
        const bool empty = chat_ ? piece.empty() && lp.is_null() : false;
        if (!empty) send(chunk(i, piece, lp, nullptr));
      }
      if (!e.finished || client_gone) continue;
      if (Abnormal(e)) {
        // One choice failed: the response ends with the error; the others are cancelled.
        failed = true;
        CancelAll(engine);
        send(ToHttpError(EndStatus(e), "").body);
        continue;
      }
      ch.finished = true;
      json finish = FinishReasonJson(ToProtoFinishReason(e.reason));
      if (chat_) {
        tokenizer::AssistantOutput rest = ch.split.Finish();
        json d = chat_delta(rest.reasoning.value_or(""), rest.content);
        if (!rest.tool_calls.empty()) {
          d["tool_calls"] = ToolCallsJson(rest.tool_calls, ChoiceId(i));
          finish = "tool_calls";
        }
        if (!d.empty()) send(chunk(i, d, nullptr, nullptr));
      }
      send(chunk(i, chat_ ? json::object() : json(""), nullptr, finish));
      ch.last = std::move(e);
    }
    if (!client_gone) {
      if (!failed && req_.include_usage) {
        json u = Envelope(object);
        u["choices"] = json::array();
        u["usage"] = Usage();
        send(u);
      }
      if (!client_gone) {
        Event("[DONE]");
        mg_send_chunk(c_, "", 0);
      }
    }
    return client_gone ? kClientGone : 200;
  }

  mg_connection* c_;
  const OpenAiRequest& req_;
  PreparedRequest prepared_;
  int64_t created_;
  bool chat_ = true;
  bool parse_tool_calls_ = false;
  std::string id_;
  std::vector<uint64_t> handles_;
  std::vector<Choice> choices_;
};

// The gRPC code an HTTP status stands for, for the request metrics (kClientGone: CANCELLED).
grpc::StatusCode GrpcCodeOf(int http_status) {
  switch (http_status) {
    case 200:
      return grpc::StatusCode::OK;
    case 400:
    case 405:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case 401:
      return grpc::StatusCode::UNAUTHENTICATED;
    case 404:
      return grpc::StatusCode::NOT_FOUND;
    case 408:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case 413:
    case 429:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case 499:
      return grpc::StatusCode::CANCELLED;
    case 503:
      return grpc::StatusCode::UNAVAILABLE;
    default:
      return grpc::StatusCode::INTERNAL;
  }
}

int HandleRequest(mg_connection* conn, void* self) { return static_cast<HttpServer*>(self)->Handle(conn); }

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const ModelRegistry* registry,
                                                              const CallGate* gate, RequestObserver observer,
                                                              HttpServerOptions options) {
  if (options.port < 1 || options.port > 65535)
    return absl::InvalidArgumentError(absl::StrCat("--http-port: must be in [1, 65535], got ", options.port));
  std::unique_ptr<HttpServer> server(new HttpServer(registry, gate, std::move(observer), std::move(options)));
  const std::string listen = absl::StrCat(server->options_.host, ":", server->options_.port);
  const std::string threads = std::to_string(server->options_.threads);
  const char* opts[] = {"listening_ports",    listen.c_str(),      "num_threads",
                        threads.c_str(),      "enable_keep_alive", "yes",
                        "request_timeout_ms", "3600000",           nullptr};
  // civetweb refuses to start before its library is set up (prometheus-cpp's exposer may have done it).
  static std::once_flag init;
  std::call_once(init, [] { mg_init_library(0); });
  mg_callbacks callbacks{};
  mg_init_data init_data{&callbacks, nullptr, opts};
  unsigned code = 0;
  char why[256] = {};
  mg_error_data error{&code, why, sizeof(why)};
  server->ctx_ = mg_start2(&init_data, &error);
  if (server->ctx_ == nullptr)
    return absl::UnavailableError(absl::StrCat("--http-port: cannot serve on ", listen, ": ", why));
  mg_set_request_handler(server->ctx_, "/", &HandleRequest, server.get());
  mg_server_port ports[4] = {};
  if (mg_get_server_ports(server->ctx_, 4, ports) > 0) server->port_ = ports[0].port;
  return server;
}

HttpServer::~HttpServer() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int HttpServer::Handle(mg_connection* conn) {
  const char* method_name = nullptr;
  const int status = Serve(conn, &method_name);
  if (observer_ && method_name != nullptr) observer_(absl::StrCat("http.", method_name), GrpcCodeOf(status));
  return status;
}

int HttpServer::Serve(mg_connection* conn, const char** method_name) {
  const absl::Time arrived = absl::Now();
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string uri = info->local_uri ? info->local_uri : "";
  const std::string method = info->request_method ? info->request_method : "";
  Endpoint endpoint;
  const char* name;
  if (uri == "/health") {
    const bool draining = gate_ != nullptr && gate_->draining();
    return SendJson(conn, draining ? 503 : 200, {{"status", draining ? "shutting down" : "ok"}});
  } else if (uri == "/v1/models") {
    endpoint = Endpoint::kCompletions;
    name = "ListModels";
  } else if (uri == "/v1/chat/completions") {
    endpoint = Endpoint::kChatCompletions;
    name = "ChatCompletions";
  } else if (uri == "/v1/completions") {
    endpoint = Endpoint::kCompletions;
    name = "Completions";
  } else {
    return SendError(
        conn, Endpoint::kCompletions,
        absl::NotFoundError(absl::StrCat("no such endpoint: ", uri,
                                         " (/v1/chat/completions, /v1/completions, /v1/models, /health)")));
  }
  *method_name = name;
  const bool is_models = uri == "/v1/models";
  if (method != (is_models ? "GET" : "POST"))
    return SendJson(
        conn, 405,
        ToHttpError(absl::InvalidArgumentError(absl::StrCat(uri, " takes ", is_models ? "GET" : "POST")), "")
            .body);
  if (gate_ != nullptr) {
    const char* auth = mg_get_header(conn, "Authorization");
    const std::string authorization = auth ? auth : "";
    int64_t retry_ms = 0;
    absl::Status admitted = gate_->AdmitRequest(auth ? &authorization : nullptr, "header",
                                                absl::StrCat("ip:", info->remote_addr), name,
                                                /*drain_applies=*/!is_models, &retry_ms);
    if (!admitted.ok()) return SendError(conn, endpoint, admitted, retry_ms);
  }
  if (is_models) {
    json data = json::array();
    for (const ServedModel* m : registry_->models()) {
      if (m->engine == nullptr) continue;
      data.push_back({{"id", m->name},
                      {"object", "model"},
                      {"created", 0},
                      {"owned_by", "deltaserve"},
                      {"max_model_len", m->engine->max_model_len()},
                      // Not OpenAI's: lets a load generator draw random prompt ids (deltaserve-cli bench).
                      {"vocab_size", m->engine->model().config().vocab_size}});
    }
    return SendJson(conn, 200, {{"object", "list"}, {"data", data}});
  }
  // The body, within --max-request-bytes.
  const int64_t limit = options_.max_request_bytes;
  if (info->content_length > limit)
    return SendError(conn, endpoint,
                     absl::ResourceExhaustedError(absl::StrCat("request body of ", info->content_length,
                                                               " bytes, over --max-request-bytes ", limit)));
  std::string body;
  char buf[16384];
  for (int n; (n = mg_read(conn, buf, sizeof(buf))) > 0;) {
    body.append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(body.size()) > limit)
      return SendError(
          conn, endpoint,
          absl::ResourceExhaustedError(absl::StrCat("request body over --max-request-bytes ", limit)));
  }
  absl::StatusOr<OpenAiRequest> req = ParseRequest(endpoint, body);
  if (!req.ok()) return SendError(conn, endpoint, req.status());
  absl::StatusOr<std::optional<absl::Duration>> timeout = ParseRequestTimeout(mg_get_header(conn, kRequestTimeoutHeader));
  if (!timeout.ok()) return SendError(conn, endpoint, timeout.status());
  absl::StatusOr<PreparedRequest> prepared = PrepareGenerate(*registry_, req->generate);
  if (!prepared.ok()) return SendError(conn, endpoint, prepared.status());
  if (timeout->has_value()) prepared->engine_request.deadline = arrived + **timeout;
  return Generation(conn, *req, *std::move(prepared)).Run();
}

}  // namespace deltaserve::api::openai
