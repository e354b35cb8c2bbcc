// The OpenAI-compatible HTTP front end (deltaserve --http-port): /v1/chat/completions and /v1/completions
// (streamed as server-sent events or not), /v1/models and /health, on the gRPC services' engines,
// validation (api::PrepareGenerate) and call gate, so limits and codes cannot drift between the two.
#ifndef DELTASERVE_SERVER_API_OPENAI_HTTP_SERVER_H_
#define DELTASERVE_SERVER_API_OPENAI_HTTP_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "api/call_gate.h"
#include "api/models_service.h"

struct mg_context;
struct mg_connection;

namespace deltaserve::api::openai {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                           // must be set; 1-65535
  int64_t max_request_bytes = 24 << 20;   // bodies beyond: 413
  int threads = 64;                       // connections served at once (a stream holds one)
};

class HttpServer {
 public:
  // Starts listening; everything pointed to must outlive the server. `gate` may be null. `observer` (may be
  // empty) hears of every finished API request as "http.ChatCompletions", "http.Completions" or
  // "http.ListModels" with the gRPC code of its HTTP status (CANCELLED for a stream whose client left).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const ModelRegistry* registry, const CallGate* gate,
                                                           RequestObserver observer, HttpServerOptions options);
  ~HttpServer();  // stops: waits for the requests being served to end
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  // Request handling, one call per HTTP request (civetweb's worker threads); public for the C callback.
  int Handle(mg_connection* conn);

 private:
  HttpServer(const ModelRegistry* registry, const CallGate* gate, RequestObserver observer,
             HttpServerOptions options)
      : registry_(registry), gate_(gate), observer_(std::move(observer)), options_(std::move(options)) {}
  int Serve(mg_connection* conn, const char** method_name);

  const ModelRegistry* registry_;
  const CallGate* gate_;
  RequestObserver observer_;
  HttpServerOptions options_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace deltaserve::api::openai

#endif  // DELTASERVE_SERVER_API_OPENAI_HTTP_SERVER_H_
