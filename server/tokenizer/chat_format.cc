#include "tokenizer/chat_format.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::tokenizer {
namespace {

// Ordered, because the template's tojson keeps the order of the keys as given, and the model was trained
// on schemas written in the author's order.
using Json = nlohmann::ordered_json;

constexpr absl::string_view kToolsHeader =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr absl::string_view kToolsFooter =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

// Python's str.strip/lstrip/rstrip with the argument '\n', as the template calls them.
absl::string_view LStripNewlines(absl::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
absl::string_view RStripNewlines(absl::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}
absl::string_view StripNewlines(absl::string_view s) { return RStripNewlines(LStripNewlines(s)); }

// Python's float repr: the shortest digits that round-trip, in fixed notation when the decimal exponent
// is in [-4, 16), otherwise d.ddde+XX with at least two exponent digits; integral values keep ".0".
std::string PythonFloatRepr(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  const std::string sci(buf, r.ptr);  // e.g. "-2.5e-07"
  std::string sign, digits;
  size_t pos = 0;
  if (sci[pos] == '-') {
    sign = "-";
    ++pos;
  }
  const size_t e = sci.find('e', pos);
  for (size_t i = pos; i < e; ++i) {
    if (sci[i] != '.') digits.push_back(sci[i]);
  }
  const int exponent = std::stoi(sci.substr(e + 1));
  const int decpt = exponent + 1;  // digits before the decimal point
  const int n = static_cast<int>(digits.size());
  if (exponent >= -4 && exponent < 16) {
    if (decpt <= 0) return absl::StrCat(sign, "0.", std::string(-decpt, '0'), digits);
    if (decpt >= n) return absl::StrCat(sign, digits, std::string(decpt - n, '0'), ".0");
    return absl::StrCat(sign, digits.substr(0, decpt), ".", digits.substr(decpt));
  }
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return absl::StrCat(sign, digits.substr(0, 1), n > 1 ? "." : "", n > 1 ? digits.substr(1) : "", exp_buf);
}

// json.dumps with ensure_ascii=False escapes only the quote, the backslash and control characters.
void AppendPythonString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned char>(c));
          *out += esc;
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void AppendPythonJson(const Json& j, std::string* out) {
  switch (j.type()) {
    case Json::value_t::null:
      *out += "null";
      break;
    case Json::value_t::boolean:
      *out += j.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::number_integer:
      *out += std::to_string(j.get<int64_t>());
      break;
    case Json::value_t::number_unsigned:
      *out += std::to_string(j.get<uint64_t>());
      break;
    case Json::value_t::number_float:
      *out += PythonFloatRepr(j.get<double>());
      break;
    case Json::value_t::string:
      AppendPythonString(j.get_ref<const std::string&>(), out);
      break;
    case Json::value_t::array: {
      out->push_back('[');
      bool first = true;
      for (const Json& item : j) {
        if (!first) *out += ", ";
        first = false;
        AppendPythonJson(item, out);
      }
      out->push_back(']');
      break;
    }
    case Json::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, value] : j.items()) {
        if (!first) *out += ", ";
        first = false;
        AppendPythonString(key, out);
        *out += ": ";
        AppendPythonJson(value, out);
      }
      out->push_back('}');
      break;
    }
    default:  // binary and discarded values cannot come from parsing text
      *out += "null";
      break;
  }
}

absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view what) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not valid JSON: ", e.what()));
  }
}

std::string PythonDumps(const Json& j) {
  std::string out;
  AppendPythonJson(j, &out);
  return out;
}

std::string MessagePath(size_t i, absl::string_view field) {
  return absl::StrCat("messages[", i, "].", field);
}

bool IsKnownRole(absl::string_view role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

absl::Status ValidateMessage(size_t i, const ChatMessage& m) {
  if (!IsKnownRole(m.role)) {
    return absl::InvalidArgumentError(absl::StrCat(MessagePath(i, "role"), ": unknown role \"", m.role,
                                                   "\" (expected system, user, assistant or tool)"));
  }
  if (m.role != "assistant" && !m.tool_calls.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(MessagePath(i, "tool_calls"), ": only assistant messages ",
                                                   "carry tool calls (this one is ", m.role, ")"));
  }
  if (m.role != "assistant" && m.reasoning_content.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(MessagePath(i, "reasoning_content"), ": only assistant ",
                                                   "messages carry reasoning (this one is ", m.role, ")"));
  }
  return absl::OkStatus();
}

void AppendAssistant(const ChatMessage& m, bool after_last_query, bool is_last, std::string* out) {
  absl::string_view content = m.content;
  absl::string_view reasoning;
  if (m.reasoning_content.has_value()) {
    reasoning = *m.reasoning_content;
  } else if (absl::StrContains(content, "</think>")) {
    // content.split('</think>')[-1] and [0]: after the last, before the first.
    const absl::string_view whole = content;
    content = LStripNewlines(whole.substr(whole.rfind("</think>") + 8));
    absl::string_view before = RStripNewlines(whole.substr(0, whole.find("</think>")));
    const size_t open = before.rfind("<think>");
    if (open != absl::string_view::npos) before = before.substr(open + 7);
    reasoning = LStripNewlines(before);
  }
  // Reasoning is shown only for turns after the last real user query (the current agentic step); older
  // turns drop it, which is how Qwen3 was trained to see history.
  if (after_last_query && (is_last || !reasoning.empty())) {
    absl::StrAppend(out, "<|im_start|>assistant\n<think>\n", StripNewlines(reasoning), "\n</think>\n\n",
                    LStripNewlines(content));
  } else {
    absl::StrAppend(out, "<|im_start|>assistant\n", content);
  }
  for (size_t j = 0; j < m.tool_calls.size(); ++j) {
    if (j > 0 || !content.empty()) out->push_back('\n');
    absl::StrAppend(out, "<tool_call>\n{\"name\": \"", m.tool_calls[j].name,
                    "\", \"arguments\": ", m.tool_calls[j].arguments, "}\n</tool_call>");
  }
  *out += "<|im_end|>\n";
}

absl::StatusOr<ToolCall> ParseToolCall(const Json& j, const std::string& path) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": must be an object"));
  // The template unwraps "function" only when it is truthy; a bare {"name", "arguments"} is used as is.
  const Json* call = &j;
  std::string call_path = path;
  auto function = j.find("function");
  if (function != j.end() && !function->is_null() && !function->empty() &&
      !(function->is_boolean() && !function->get<bool>())) {
    if (!function->is_object())
      return absl::InvalidArgumentError(absl::StrCat(path, ".function: must be an object"));
    call = &*function;
    call_path = absl::StrCat(path, ".function");
  }
  ToolCall out;
  auto name = call->find("name");
  if (name == call->end()) return absl::InvalidArgumentError(absl::StrCat(call_path, ".name: is missing"));
  if (!name->is_string())
    return absl::InvalidArgumentError(absl::StrCat(call_path, ".name: must be a string"));
  out.name = name->get<std::string>();
  auto args = call->find("arguments");
  // The template's tojson fails on an undefined value.
  if (args == call->end())
    return absl::InvalidArgumentError(absl::StrCat(call_path, ".arguments: is missing"));
  // A string is JSON text already and is copied; anything else goes through tojson.
  out.arguments = args->is_string() ? args->get<std::string>() : PythonDumps(*args);
  return out;
}

absl::StatusOr<ChatMessage> ParseMessage(const Json& j, size_t i) {
  const std::string path = absl::StrCat("messages[", i, "]");
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": must be an object"));
  ChatMessage m;
  auto role = j.find("role");
  if (role == j.end()) return absl::InvalidArgumentError(absl::StrCat(path, ".role: is missing"));
  if (!role->is_string()) return absl::InvalidArgumentError(absl::StrCat(path, ".role: must be a string"));
  m.role = role->get<std::string>();
  if (!IsKnownRole(m.role)) return ValidateMessage(i, m);
  // The template concatenates content as a string for every role, so a missing, null or structured
  // content makes it fail; it is an error here as well rather than a guess.
  auto content = j.find("content");
  if (content == j.end()) return absl::InvalidArgumentError(absl::StrCat(path, ".content: is missing"));
  if (content->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(path,
                                                   ".content: is null (the template needs a string; use "
                                                   "\"\" for a tool-call-only message)"));
  }
  if (!content->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".content: must be a string (content parts are not supported by the template)"));
  }
  m.content = content->get<std::string>();
  auto reasoning = j.find("reasoning_content");
  if (reasoning != j.end() && !reasoning->is_null()) {
    if (!reasoning->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".reasoning_content: must be a string or null"));
    }
    m.reasoning_content = reasoning->get<std::string>();
  }
  auto calls = j.find("tool_calls");
  if (calls != j.end() && !calls->is_null()) {
    if (!calls->is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".tool_calls: must be an array or null"));
    }
    for (size_t k = 0; k < calls->size(); ++k) {
      absl::StatusOr<ToolCall> call = ParseToolCall((*calls)[k], absl::StrCat(path, ".tool_calls[", k, "]"));
      if (!call.ok()) return call.status();
      m.tool_calls.push_back(*std::move(call));
    }
  }
  absl::Status valid = ValidateMessage(i, m);
  if (!valid.ok()) return valid;
  return m;
}

}  // namespace

absl::StatusOr<std::string> PythonJsonDumps(absl::string_view json) {
  absl::StatusOr<Json> j = ParseJson(json, "json");
  if (!j.ok()) return j.status();
  return PythonDumps(*j);
}

absl::StatusOr<std::string> RenderChat(const std::vector<ChatMessage>& messages, const ChatOptions& options) {
  // transformers refuses an empty conversation before the template runs (which would fail on messages[0]).
  if (messages.empty()) {
    return absl::InvalidArgumentError("messages: is empty (a conversation needs at least one message)");
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    absl::Status valid = ValidateMessage(i, messages[i]);
    if (!valid.ok()) return valid;
  }
  std::string out;
  const bool first_is_system = messages[0].role == "system";
  if (!options.tools_json.empty()) {
    out += "<|im_start|>system\n";
    if (first_is_system) absl::StrAppend(&out, messages[0].content, "\n\n");
    absl::StrAppend(&out, kToolsHeader);
    for (size_t t = 0; t < options.tools_json.size(); ++t) {
      absl::StatusOr<Json> tool = ParseJson(options.tools_json[t], absl::StrCat("tools[", t, "]"));
      if (!tool.ok()) return tool.status();
      // transformers accepts a schema only as a dict (or a Python function it converts).
      if (!tool->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat("tools[", t, "]: must be a JSON object"));
      }
      absl::StrAppend(&out, "\n", PythonDumps(*tool));
    }
    absl::StrAppend(&out, kToolsFooter);
  } else if (first_is_system) {
    absl::StrAppend(&out, "<|im_start|>system\n", messages[0].content, "<|im_end|>\n");
  }

  // The last user message that is a real query, not tool output a client sent back as a user turn. If
  // there is none, the template's default is the last index.
  size_t last_query = messages.size() - 1;
  for (size_t k = messages.size(); k-- > 0;) {
    const ChatMessage& m = messages[k];
    if (m.role == "user" &&
        !(absl::StartsWith(m.content, "<tool_response>") && absl::EndsWith(m.content, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }

  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool is_last = i + 1 == messages.size();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    } else if (m.role == "assistant") {
      AppendAssistant(m, i > last_query, is_last, &out);
    } else if (m.role == "tool") {
      // Consecutive tool results share one user turn.
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      absl::StrAppend(&out, "\n<tool_response>\n", m.content, "\n</tool_response>");
      if (is_last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!options.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(absl::string_view json) {
  absl::StatusOr<Json> root = ParseJson(json, "messages");
  if (!root.ok()) return root.status();
  if (!root->is_array()) return absl::InvalidArgumentError("messages: must be a JSON array of messages");
  std::vector<ChatMessage> messages;
  messages.reserve(root->size());
  for (size_t i = 0; i < root->size(); ++i) {
    absl::StatusOr<ChatMessage> m = ParseMessage((*root)[i], i);
    if (!m.ok()) return m.status();
    messages.push_back(*std::move(m));
  }
  return messages;
}

absl::StatusOr<std::vector<std::string>> ParseChatTools(absl::string_view json) {
  absl::StatusOr<Json> root = ParseJson(json, "tools");
  if (!root.ok()) return root.status();
  if (!root->is_array()) return absl::InvalidArgumentError("tools: must be a JSON array of tool schemas");
  std::vector<std::string> tools;
  for (const Json& tool : *root) tools.push_back(tool.dump());
  return tools;
}

}  // namespace deltaserve::tokenizer
