// See openai_bench_target.h. HTTP through civetweb's client API: one connection per request
// (Connection: close), the server-sent events split at blank lines.
#include "client/openai_bench_target.h"

#include <civetweb.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace deltaserve::client {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One HTTP exchange. Closed on destruction.
class HttpCall {
 public:
  ~HttpCall() {
    if (conn_ != nullptr) mg_close_connection(conn_);
  }

  // Connects, sends the request and waits for the status line and headers; the error names the step.
  absl::Status Start(const std::string& host, int port, const std::string& method, const std::string& path,
                     const std::string& token, const std::string& body, int timeout_ms) {
    char err[256] = {};
    conn_ = mg_connect_client(host.c_str(), port, /*use_ssl=*/0, err, sizeof(err));
    if (conn_ == nullptr) return absl::UnavailableError(absl::StrCat("cannot connect to ", host, ":", port, ": ", err));
    std::string head = absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: ", host, ":", port,
                                    "\r\nConnection: close\r\nAccept: */*\r\n");
    if (!token.empty()) absl::StrAppend(&head, "Authorization: Bearer ", token, "\r\n");
    if (!body.empty() || method == "POST")
      absl::StrAppend(&head, "Content-Type: application/json\r\nContent-Length: ", body.size(), "\r\n");
    absl::StrAppend(&head, "\r\n", body);
    if (mg_write(conn_, head.data(), head.size()) != static_cast<int>(head.size()))
      return absl::UnavailableError(absl::StrCat("sending ", method, " ", path, " failed"));
    if (mg_get_response(conn_, err, sizeof(err), timeout_ms) < 0)
      return absl::UnavailableError(absl::StrCat("no response to ", method, " ", path, ": ", err));
    status_ = mg_get_response_info(conn_)->status_code;
    return absl::OkStatus();
  }

  int status() const { return status_; }

  // Up to `max` bytes of the body; 0 at its end, negative on error.
  int Read(char* buf, size_t max) { return mg_read(conn_, buf, max); }

  std::string ReadAll() {
    std::string out;
    char buf[8192];
    for (int n; (n = Read(buf, sizeof(buf))) > 0;) out.append(buf, static_cast<size_t>(n));
    return out;
  }

 private:
  mg_connection* conn_ = nullptr;
  int status_ = 0;
};

// The message of an OpenAI-shaped error body, or the body itself.
std::string ErrorText(int status, const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("error")) {
    const json& e = j["error"];
    if (e.is_object() && e.contains("message") && e["message"].is_string())
      return absl::StrCat("HTTP ", status, ": ", e["message"].get<std::string>());
    if (e.is_string()) return absl::StrCat("HTTP ", status, ": ", e.get<std::string>());
  }
  return absl::StrCat("HTTP ", status, ": ", body.substr(0, 300));
}

int IntOr(const json& j, const char* key, int fallback) {
  return j.is_object() && j.contains(key) && j[key].is_number_integer() ? j[key].get<int>() : fallback;
}

// Whether a streamed chunk carries generated text (as vLLM's benchmark counts them): the first choice's
// `text` (completions) or `delta.content` (chat) is not empty. Finish and usage chunks do not.
bool CarriesText(const json& chunk) {
  if (!chunk.contains("choices") || !chunk["choices"].is_array() || chunk["choices"].empty()) return false;
  const json& c = chunk["choices"][0];
  auto nonempty = [](const json& o, const char* key) {
    return o.is_object() && o.contains(key) && o[key].is_string() && !o[key].get_ref<const std::string&>().empty();
  };
  return nonempty(c, "text") || (c.contains("delta") && nonempty(c["delta"], "content"));
}

class OpenAiBenchTarget : public BenchTarget {
 public:
  OpenAiBenchTarget(OpenAiTargetOptions options, std::string host, int port)
      : o_(std::move(options)), host_(std::move(host)), port_(port) {}

  absl::StatusOr<ServedModel> Describe(const std::string& name) override {
    HttpCall call;
    if (absl::Status s = call.Start(host_, port_, "GET", "/v1/models", o_.token, "", 10000); !s.ok()) return s;
    const std::string body = call.ReadAll();
    if (call.status() != 200) {
      const std::string text = ErrorText(call.status(), body);
      return call.status() == 401 ? absl::UnauthenticatedError(text) : absl::UnavailableError(text);
    }
    json list = json::parse(body, nullptr, false);
    if (!list.is_object() || !list.contains("data") || !list["data"].is_array() || list["data"].empty())
      return absl::UnavailableError(absl::StrCat("GET /v1/models: no models in ", body.substr(0, 200)));
    const json* entry = nullptr;
    for (const json& m : list["data"])
      if (name.empty() || (m.contains("id") && m["id"] == name)) {
        entry = &m;
        break;
      }
    if (entry == nullptr) return absl::NotFoundError(absl::StrCat("the server does not serve model \"", name, "\""));
    ServedModel m;
    m.name = entry->value("id", std::string());
    // deltaserve reports vocab_size and max_model_len; llama-server reports meta.n_vocab; vLLM max_model_len.
    const json meta = entry->contains("meta") ? (*entry)["meta"] : json();
    m.vocab_size = o_.vocab_size > 0 ? o_.vocab_size : IntOr(*entry, "vocab_size", IntOr(meta, "n_vocab", 0));
    m.max_model_len = o_.max_model_len > 0 ? o_.max_model_len : IntOr(*entry, "max_model_len", 0);
    if (m.vocab_size <= 0)
      return absl::FailedPreconditionError(
          absl::StrCat("GET /v1/models does not report model \"", m.name, "\"'s vocabulary size; pass --vocab-size"));
    if (m.max_model_len <= 0) m.max_model_len = 1 << 20;  // llama-server: its slots' context bounds it
    return m;
  }

  RequestRecord Run(const BenchRequest& request, double timeout) override {
    json body = {{"model", request.model},       {"prompt", request.prompt_ids},
                 {"max_tokens", request.max_tokens}, {"temperature", request.temperature},
                 {"seed", request.seed & 0x7fffffffULL}, {"ignore_eos", true},
                 {"stream", true},               {"stream_options", {{"include_usage", true}}}};
    RequestRecord r;
    r.prompt_tokens = static_cast<int>(request.prompt_ids.size());
    const Clock::time_point start = Clock::now();
    const int timeout_ms = static_cast<int>(std::min(timeout * 1000.0, 2e9));
    HttpCall call;
    absl::Status s = call.Start(host_, port_, "POST", o_.endpoint, o_.token, body.dump(), timeout_ms);
    if (s.ok() && call.status() != 200) s = absl::UnavailableError(ErrorText(call.status(), call.ReadAll()));
    if (!s.ok()) {
      r.e2e = Seconds(Clock::now() - start);
      r.error = std::string(s.message());
      return r;
    }
    Clock::time_point last = start;
    int chunks = 0, usage_tokens = -1;
    bool done = false;
    std::string pending;
    char buf[8192];
    // Handles one `data:` payload; false ends the stream with r.error set.
    auto on_data = [&](absl::string_view data) {
      if (data == "[DONE]") {
        done = true;
        return true;
      }
      json j = json::parse(data, nullptr, false);
      if (!j.is_object()) {
        r.error = absl::StrCat("a streamed event is not JSON: ", data.substr(0, 200));
        return false;
      }
      if (j.contains("error")) {
        r.error = ErrorText(200, std::string(data));
        return false;
      }
      if (CarriesText(j)) {
        const Clock::time_point now = Clock::now();
        if (chunks == 0) {
          r.ttft = Seconds(now - start);
        } else {
          r.itl.push_back(Seconds(now - last));
        }
        last = now;
        ++chunks;
      }
      if (j.contains("usage") && j["usage"].is_object()) usage_tokens = IntOr(j["usage"], "completion_tokens", -1);
      if (usage_tokens < 0 && j.contains("timings")) usage_tokens = IntOr(j["timings"], "predicted_n", -1);
      return true;
    };
    bool failed = false;
    for (int n; !done && !failed && (n = call.Read(buf, sizeof(buf))) > 0;) {
      pending.append(buf, static_cast<size_t>(n));
      // Events end at a blank line; each `data:` line of an event is handled on its own.
      for (size_t end; !failed && (end = pending.find("\n\n")) != std::string::npos;) {
        absl::string_view event(pending.data(), end);
        for (absl::string_view line : absl::StrSplit(event, '\n')) {
          line = absl::StripSuffix(line, "\r");
          if (absl::ConsumePrefix(&line, "data:") && !on_data(absl::StripLeadingAsciiWhitespace(line))) {
            failed = true;
            break;
          }
        }
        pending.erase(0, end + 2);
      }
    }
    r.e2e = Seconds(Clock::now() - start);
    r.output_tokens = usage_tokens >= 0 ? usage_tokens : chunks;
    if (!failed && !done) r.error = "the stream ended without data: [DONE]";
    r.ok = !failed && done;
    return r;
  }

  std::string Label() const override { return absl::StrCat("openai http://", host_, ":", port_, o_.endpoint); }

 private:
  OpenAiTargetOptions o_;
  std::string host_;
  int port_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BenchTarget>> MakeOpenAiBenchTarget(const OpenAiTargetOptions& options) {
  absl::string_view server = options.server;
  absl::ConsumePrefix(&server, "http://");
  server = absl::StripSuffix(server, "/");
  const size_t colon = server.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 || !absl::SimpleAtoi(server.substr(colon + 1), &port) ||
      port <= 0 || port > 65535)
    return absl::InvalidArgumentError(
        absl::StrCat("--server: \"", options.server, "\" is not host:port (plain HTTP, e.g. localhost:8000)"));
  if (options.endpoint.empty() || options.endpoint[0] != '/')
    return absl::InvalidArgumentError(absl::StrCat("--openai-endpoint: \"", options.endpoint, "\" is not a path"));
  static std::once_flag init;
  std::call_once(init, [] { mg_init_library(0); });
  return std::make_unique<OpenAiBenchTarget>(options, std::string(server.substr(0, colon)), port);
}

}  // namespace deltaserve::client
