// The OpenAI-compatible HTTP API's request and response shapes, translated to and from the gRPC contract
// (deltaserve.v1.GenerateRequest) so both front ends share one validation (api::PrepareGenerate).
#ifndef DELTASERVE_SERVER_API_OPENAI_TRANSLATE_H_
#define DELTASERVE_SERVER_API_OPENAI_TRANSLATE_H_

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "deltaserve/v1/text_generation.pb.h"

namespace deltaserve::api::openai {

enum class Endpoint { kChatCompletions, kCompletions };

// What the response needs beyond the GenerateRequest.
struct OpenAiRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  v1::GenerateRequest generate;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // chat: logprobs; completions: logprobs > 0
  std::string echo_prefix;     // completions with echo: the prompt text returned before the completion
  bool tools_enabled = true;   // chat: false with "tool_choice": "none" (tool calls stay in the content)
  int n = 1;                   // choices: one engine request each (seeds seed, seed + 1, ...)
};

// The most choices one request may ask for (`n`); each holds a batch slot while it runs.
inline constexpr int kMaxChoices = 16;

// Parses a /v1/chat/completions or /v1/completions body. INVALID_ARGUMENT messages start with the
// OpenAI parameter's name ("temperature: must be a number"), as every error of this API does.
absl::StatusOr<OpenAiRequest> ParseRequest(Endpoint endpoint, const std::string& body);

// The header that bounds a request's time, as gRPC's deadline does: seconds from its arrival, after which
// it ends with 408 (or, streamed, an error event) and frees its slot.
inline constexpr char kRequestTimeoutHeader[] = "X-Request-Timeout";
// The header's value (may be null: no header, no limit). INVALID_ARGUMENT naming the header unless it is
// a positive number of seconds up to a day.
absl::StatusOr<std::optional<absl::Duration>> ParseRequestTimeout(const char* value);

// The OpenAI parameter a validation message is about: the message's leading field path (as
// PrepareGenerate writes it, "sampling.max_tokens: ...") in the API's names ("max_tokens"); "" if none.
std::string ParamOf(Endpoint endpoint, const std::string& message);

// An error as the API answers it: the HTTP status for the code (400, 401, 404, 413, 429, 503, 500) and
// the body {"error": {"message", "type", "param", "code"}}.
struct HttpError {
  int http_status = 500;
  nlohmann::json body;
};
HttpError ToHttpError(const absl::Status& status, const std::string& param);

// "stop" / "length" (null while running) from the gRPC finish reason.
nlohmann::json FinishReasonJson(v1::FinishReason reason);

}  // namespace deltaserve::api::openai

#endif  // DELTASERVE_SERVER_API_OPENAI_TRANSLATE_H_
