#include "api/openai/translate.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace deltaserve::api::openai {
namespace {

using json = nlohmann::json;

absl::Status Bad(absl::string_view param, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(param, ": ", what));
}

absl::StatusOr<double> Number(const json& v, absl::string_view param) {
  if (!v.is_number()) return Bad(param, "must be a number");
  return v.get<double>();
}

// An integer within int32 (OpenAI's integers; the proto's fields are int32).
absl::StatusOr<int32_t> Int32(const json& v, absl::string_view param) {
  if (!v.is_number_integer()) return Bad(param, "must be an integer");
  if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())
                             : (v.get<int64_t>() > std::numeric_limits<int32_t>::max() ||
                                v.get<int64_t>() < std::numeric_limits<int32_t>::min()))
    return Bad(param, "out of the 32-bit integer range");
  return static_cast<int32_t>(v.get<int64_t>());
}

absl::StatusOr<bool> Bool(const json& v, absl::string_view param) {
  if (!v.is_boolean()) return Bad(param, "must be true or false");
  return v.get<bool>();
}

absl::StatusOr<std::string> String(const json& v, absl::string_view param) {
  if (!v.is_string()) return Bad(param, "must be a string");
  return v.get<std::string>();
}

// Message content: a string, null, or an array of {"type": "text", "text": ...} parts (joined).
absl::StatusOr<std::string> Content(const json& v, absl::string_view param) {
  if (v.is_null()) return std::string();
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) return Bad(param, "must be a string or an array of text parts");
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& part = v[i];
    const std::string p = absl::StrCat(param, "[", i, "]");
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      return Bad(p, "only {\"type\": \"text\", \"text\": ...} parts are supported");
    out += part["text"].get<std::string>();
  }
  return out;
}

// The sampling fields both endpoints share, into `s`.
absl::Status ParseSampling(const json& body, Endpoint endpoint, OpenAiRequest* out) {
  v1::SamplingParams* s = out->generate.mutable_sampling();
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (body.contains(name) && !body[name].is_null()) {
      absl::StatusOr<int32_t> v = Int32(body[name], name);
      if (!v.ok()) return v.status();
      s->set_max_tokens(*v);
    }
  }
  struct RealField {
    const char* name;
    void (v1::SamplingParams::*set)(double);
  };
  for (const RealField& f : {RealField{"temperature", &v1::SamplingParams::set_temperature},
                             RealField{"top_p", &v1::SamplingParams::set_top_p},
                             RealField{"min_p", &v1::SamplingParams::set_min_p},
                             RealField{"repetition_penalty", &v1::SamplingParams::set_repetition_penalty},
                             RealField{"presence_penalty", &v1::SamplingParams::set_presence_penalty},
                             RealField{"frequency_penalty", &v1::SamplingParams::set_frequency_penalty}}) {
    if (!body.contains(f.name) || body[f.name].is_null()) continue;
    absl::StatusOr<double> v = Number(body[f.name], f.name);
    if (!v.ok()) return v.status();
    (s->*f.set)(*v);
  }
  if (body.contains("top_k") && !body["top_k"].is_null()) {
    absl::StatusOr<int32_t> v = Int32(body["top_k"], "top_k");
    if (!v.ok()) return v.status();
    if (*v != -1) s->set_top_k(*v);  // -1: off, as in vLLM
  }
  if (body.contains("seed") && !body["seed"].is_null()) {
    const json& v = body["seed"];
    if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0))
      return Bad("seed", "must be a non-negative integer");
    s->set_seed(v.get<uint64_t>());
  }
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& v = body["stop"];
    if (v.is_string()) {
      s->add_stop(v.get<std::string>());
    } else if (v.is_array()) {
      for (size_t i = 0; i < v.size(); ++i) {
        absl::StatusOr<std::string> one = String(v[i], absl::StrCat("stop[", i, "]"));
        if (!one.ok()) return one.status();
        s->add_stop(*one);
      }
    } else {
      return Bad("stop", "must be a string or an array of strings");
    }
  }
  if (body.contains("ignore_eos")) {
    absl::StatusOr<bool> v = Bool(body["ignore_eos"], "ignore_eos");
    if (!v.ok()) return v.status();
    s->set_ignore_eos(*v);
  }
  if (body.contains("n") && !body["n"].is_null()) {
    absl::StatusOr<int32_t> n = Int32(body["n"], "n");
    if (!n.ok()) return n.status();
    if (*n < 1 || *n > kMaxChoices)
      return Bad("n", absl::StrCat("must be in [1, ", kMaxChoices, "], got ", *n));
    out->n = *n;
  }
  // logprobs: chat takes a boolean and top_logprobs (0-20); completions take the count itself.
  if (endpoint == Endpoint::kChatCompletions) {
    bool want = false;
    if (body.contains("logprobs") && !body["logprobs"].is_null()) {
      absl::StatusOr<bool> v = Bool(body["logprobs"], "logprobs");
      if (!v.ok()) return v.status();
      want = *v;
    }
    int32_t top = 0;
    if (body.contains("top_logprobs") && !body["top_logprobs"].is_null()) {
      absl::StatusOr<int32_t> v = Int32(body["top_logprobs"], "top_logprobs");
      if (!v.ok()) return v.status();
      if (!want) return Bad("top_logprobs", "needs \"logprobs\": true");
      top = *v;
    }
    if (want) s->set_logprobs(top);
    out->logprobs = want;
  } else if (body.contains("logprobs") && !body["logprobs"].is_null()) {
    absl::StatusOr<int32_t> v = Int32(body["logprobs"], "logprobs");
    if (!v.ok()) return v.status();
    s->set_logprobs(*v);
    out->logprobs = true;
  }
  if (body.contains("stream")) {
    absl::StatusOr<bool> v = Bool(body["stream"], "stream");
    if (!v.ok()) return v.status();
    out->stream = *v;
  }
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& o = body["stream_options"];
    if (!o.is_object()) return Bad("stream_options", "must be an object");
    if (!out->stream) return Bad("stream_options", "only with \"stream\": true");
    if (o.contains("include_usage")) {
      absl::StatusOr<bool> v = Bool(o["include_usage"], "stream_options.include_usage");
      if (!v.ok()) return v.status();
      out->include_usage = *v;
    }
  }
  return absl::OkStatus();
}

absl::Status ParseChat(const json& body, OpenAiRequest* out) {
  if (!body.contains("messages")) return Bad("messages", "required");
  const json& messages = body["messages"];
  if (!messages.is_array()) return Bad("messages", "must be an array");
  v1::ChatInput* chat = out->generate.mutable_chat();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string p = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Bad(p, "must be an object");
    v1::ChatMessage* cm = chat->add_messages();
    absl::StatusOr<std::string> role = String(m.contains("role") ? m["role"] : json(), p + ".role");
    if (!role.ok()) return role.status();
    cm->set_role(*role);
    absl::StatusOr<std::string> content = Content(m.contains("content") ? m["content"] : json(), p + ".content");
    if (!content.ok()) return content.status();
    cm->set_content(*content);
    if (m.contains("reasoning_content") && !m["reasoning_content"].is_null()) {
      absl::StatusOr<std::string> r = String(m["reasoning_content"], p + ".reasoning_content");
      if (!r.ok()) return r.status();
      cm->set_reasoning_content(*r);
    }
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      const json& calls = m["tool_calls"];
      if (!calls.is_array()) return Bad(p + ".tool_calls", "must be an array");
      for (size_t j = 0; j < calls.size(); ++j) {
        const std::string q = absl::StrCat(p, ".tool_calls[", j, "]");
        const json& c = calls[j];
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object())
          return Bad(q, "must be {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}");
        v1::ToolCall* tc = cm->add_tool_calls();
        absl::StatusOr<std::string> name = String(c["function"].value("name", json()), q + ".function.name");
        if (!name.ok()) return name.status();
        tc->set_name(*name);
        const json args = c["function"].value("arguments", json("{}"));
        tc->set_arguments(args.is_string() ? args.get<std::string>() : args.dump());
      }
    }
  }
  if (body.contains("tools") && !body["tools"].is_null()) {
    const json& tools = body["tools"];
    if (!tools.is_array()) return Bad("tools", "must be an array");
    for (const json& t : tools) chat->add_tools_json(t.dump());
  }
  if (body.contains("chat_template_kwargs") && !body["chat_template_kwargs"].is_null()) {
    const json& k = body["chat_template_kwargs"];
    if (!k.is_object()) return Bad("chat_template_kwargs", "must be an object");
    if (k.contains("enable_thinking")) {
      absl::StatusOr<bool> v = Bool(k["enable_thinking"], "chat_template_kwargs.enable_thinking");
      if (!v.ok()) return v.status();
      chat->set_enable_thinking(*v);
    }
  }
  if (body.contains("tool_choice") && !body["tool_choice"].is_null() && body["tool_choice"] != "auto" &&
      body["tool_choice"] != "none")
    return Bad("tool_choice", "only \"auto\" and \"none\" are supported");
  out->tools_enabled = !(body.contains("tool_choice") && body["tool_choice"] == "none");
  return absl::OkStatus();
}

absl::Status ParseCompletion(const json& body, OpenAiRequest* out) {
  if (!body.contains("prompt")) return Bad("prompt", "required");
  const json& p = body["prompt"];
  if (p.is_string()) {
    out->generate.set_prompt(p.get<std::string>());
  } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
    v1::TokenIds* ids = out->generate.mutable_token_ids();
    for (size_t i = 0; i < p.size(); ++i) {
      absl::StatusOr<int32_t> id = Int32(p[i], absl::StrCat("prompt[", i, "]"));
      if (!id.ok()) return id.status();
      ids->add_ids(*id);
    }
  } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    out->generate.set_prompt(p[0].get<std::string>());
  } else {
    return Bad("prompt", "must be a string, an array of token ids, or an array of one string");
  }
  if (body.contains("echo")) {
    absl::StatusOr<bool> echo = Bool(body["echo"], "echo");
    if (!echo.ok()) return echo.status();
    if (*echo) {
      if (out->generate.input_case() != v1::GenerateRequest::kPrompt)
        return Bad("echo", "supported for text prompts only");
      out->echo_prefix = out->generate.prompt();
    }
  }
  if (body.contains("suffix") && !body["suffix"].is_null()) return Bad("suffix", "not supported");
  if (body.contains("best_of") && !body["best_of"].is_null() && body["best_of"] != 1)
    return Bad("best_of", "only 1 is supported");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseRequest(Endpoint endpoint, const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("body", "not valid JSON");
  if (!j.is_object()) return Bad("body", "must be a JSON object");
  OpenAiRequest out;
  out.endpoint = endpoint;
  if (j.contains("model") && !j["model"].is_null()) {
    absl::StatusOr<std::string> model = String(j["model"], "model");
    if (!model.ok()) return model.status();
    out.generate.set_model(*model);
  }
  absl::Status st = endpoint == Endpoint::kChatCompletions ? ParseChat(j, &out) : ParseCompletion(j, &out);
  if (!st.ok()) return st;
  st = ParseSampling(j, endpoint, &out);
  if (!st.ok()) return st;
  return out;
}

std::string ParamOf(Endpoint endpoint, const std::string& message) {
  // The leading field path: "sampling.max_tokens: ..." or "sampling.top_k must be in ...".
  size_t end = 0;
  while (end < message.size() && (absl::ascii_isalnum(message[end]) || message[end] == '_' ||
                                  message[end] == '.' || message[end] == '-' || message[end] == '[' ||
                                  message[end] == ']'))
    ++end;
  absl::string_view rest = absl::string_view(message).substr(end);
  if (end == 0 || !(absl::StartsWith(rest, ": ") || absl::StartsWith(rest, " must "))) return "";
  absl::string_view path(message.data(), end);
  const bool chat = endpoint == Endpoint::kChatCompletions;
  if (path == "sampling.logprobs") return chat ? "top_logprobs" : "logprobs";
  if (absl::ConsumePrefix(&path, "sampling.")) return std::string(path);
  if (absl::ConsumePrefix(&path, "chat.messages")) return absl::StrCat("messages", path);
  if (absl::ConsumePrefix(&path, "chat.tools_json")) return absl::StrCat("tools", path);
  if (absl::ConsumePrefix(&path, "chat.")) return std::string(path);
  if (path == "input" || path == "chat") return chat ? "messages" : "prompt";
  if (absl::ConsumePrefix(&path, "token_ids.ids") || absl::ConsumePrefix(&path, "token_ids"))
    return absl::StrCat("prompt", path);
  return std::string(path);
}

absl::StatusOr<std::optional<absl::Duration>> ParseRequestTimeout(const char* value) {
  if (value == nullptr) return std::nullopt;
  double seconds = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(value), &seconds) || !std::isfinite(seconds) || seconds <= 0 ||
      seconds > 86400)
    return Bad(kRequestTimeoutHeader,
               absl::StrCat("must be a number of seconds in (0, 86400], got \"", absl::CEscape(value), "\""));
  return absl::Seconds(seconds);
}

HttpError ToHttpError(const absl::Status& status, const std::string& param) {
  HttpError e;
  std::string type = "server_error";
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      e.http_status = 400;
      type = "invalid_request_error";
      break;
    case absl::StatusCode::kUnauthenticated:
      e.http_status = 401;
      type = "authentication_error";
      break;
    case absl::StatusCode::kPermissionDenied:
      e.http_status = 403;
      type = "permission_error";
      break;
    case absl::StatusCode::kNotFound:
      e.http_status = 404;
      type = "not_found_error";
      break;
    case absl::StatusCode::kResourceExhausted:
      e.http_status = absl::StrContains(status.message(), "--max-request-bytes") ? 413 : 429;
      type = e.http_status == 413 ? "invalid_request_error" : "rate_limit_error";
      break;
    case absl::StatusCode::kUnavailable:
      e.http_status = 503;
      type = "service_unavailable_error";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 408;
      type = "timeout_error";
      break;
    default:
      e.http_status = 500;
  }
  e.body = {{"error",
             {{"message", std::string(status.message())},
              {"type", type},
              {"param", param.empty() ? json() : json(param)},
              {"code", e.http_status}}}};
  return e;
}

nlohmann::json FinishReasonJson(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CANCELLED:
      return "abort";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return nullptr;
  }
}

}  // namespace deltaserve::api::openai
