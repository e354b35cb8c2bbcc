#include "tokenizer/assistant_output.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace deltaserve::tokenizer {
namespace {

constexpr char kThinkOpen[] = "<think>";
constexpr char kThinkClose[] = "</think>";
constexpr char kToolOpen[] = "<tool_call>";
constexpr char kToolClose[] = "</tool_call>";

constexpr size_t Len(const char* s) { return absl::string_view(s).size(); }

absl::string_view StripNewlines(absl::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

absl::string_view RStripNewlines(absl::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

absl::string_view LStripNewlines(absl::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}

// The length of the longest suffix of `s` that is a proper prefix of `tag`: text that may still become
// the tag once more arrives.
size_t PartialTagSuffix(absl::string_view s, absl::string_view tag) {  // tag: one of the constants
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (tag.substr(0, n) == s.substr(s.size() - n)) return n;
  return 0;
}

// {"name": "...", "arguments": ...} as a ToolCall; nullopt when it is not one.
std::optional<ToolCall> ParseToolCallJson(absl::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("name") || !j["name"].is_string())
    return std::nullopt;
  ToolCall call;
  call.name = j["name"].get<std::string>();
  if (!j.contains("arguments")) {
    call.arguments = "{}";
  } else if (j["arguments"].is_string()) {
    call.arguments = j["arguments"].get<std::string>();
  } else {
    call.arguments = j["arguments"].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  return call;
}

// Moves the <tool_call> blocks that parse out of `text` into `calls`, with the newlines around each (the
// format's); the rest is the content. A block that does not parse stays, newlines and all.
std::string SplitToolCalls(absl::string_view text, std::vector<ToolCall>* calls) {
  std::string content;
  while (true) {
    const size_t open = text.find(kToolOpen);
    if (open == absl::string_view::npos) break;
    const size_t body = open + Len(kToolOpen);
    const size_t close = text.find(kToolClose, body);
    const absl::string_view inner =
        text.substr(body, close == absl::string_view::npos ? text.npos : close - body);
    std::optional<ToolCall> call = ParseToolCallJson(absl::StripAsciiWhitespace(inner));
    const size_t end = close == absl::string_view::npos ? text.size() : close + Len(kToolClose);
    if (call.has_value()) {
      const absl::string_view head = RStripNewlines(text.substr(0, open));
      content.append(head.data(), head.size());
      calls->push_back(*std::move(call));
      text = LStripNewlines(text.substr(end));
    } else {
      content.append(text.data(), end);
      text.remove_prefix(end);
    }
  }
  content.append(text.data(), text.size());
  return content;
}

}  // namespace

AssistantOutput ParseAssistantOutput(absl::string_view text, bool parse_tool_calls) {
  AssistantOutput out;
  absl::string_view rest = text;
  absl::string_view lead = absl::StripLeadingAsciiWhitespace(text);
  if (absl::ConsumePrefix(&lead, kThinkOpen)) {
    const size_t close = lead.find(kThinkClose);
    if (close == absl::string_view::npos) {
      out.reasoning = std::string(StripNewlines(lead));
      return out;
    }
    out.reasoning = std::string(StripNewlines(lead.substr(0, close)));
    rest = LStripNewlines(lead.substr(close + Len(kThinkClose)));
  }
  out.content = parse_tool_calls ? SplitToolCalls(rest, &out.tool_calls) : std::string(rest);
  return out;
}

AssistantOutputStream::Delta AssistantOutputStream::Push(absl::string_view text) {
  pending_.append(text.data(), text.size());
  return Drain(/*final=*/false);
}

AssistantOutputStream::Delta AssistantOutputStream::Drain(bool final) {
  Delta d;
  while (true) {
    switch (mode_) {
      case Mode::kStart: {
        absl::string_view lead = absl::StripLeadingAsciiWhitespace(pending_);
        if (absl::StartsWith(lead, kThinkOpen)) {
          pending_ = std::string(lead.substr(Len(kThinkOpen)));
          mode_ = Mode::kReasoning;
          continue;
        }
        if (!final && (lead.empty() || absl::StartsWith(kThinkOpen, lead))) return d;  // undecided
        mode_ = Mode::kContent;
        continue;
      }
      case Mode::kReasoning: {
        // Newlines around the reasoning are the format's: dropped at its start, held back at its end
        // until more text shows they were inside it.
        if (!reasoning_started_) {
          pending_ = std::string(LStripNewlines(pending_));
          if (pending_.empty()) return d;
        }
        const size_t close = pending_.find(kThinkClose);
        if (close != std::string::npos) {
          d.reasoning += std::string(RStripNewlines(absl::string_view(pending_).substr(0, close)));
          pending_.erase(0, close + Len(kThinkClose));
          mode_ = Mode::kContent;
          strip_content_start_ = true;
          continue;
        }
        size_t keep = final ? 0 : PartialTagSuffix(pending_, kThinkClose);
        while (keep < pending_.size() && pending_[pending_.size() - keep - 1] == '\n') ++keep;
        if (final) keep = pending_.size() - RStripNewlines(pending_).size();
        d.reasoning += pending_.substr(0, pending_.size() - keep);
        reasoning_started_ = reasoning_started_ || pending_.size() > keep;
        pending_.erase(0, final ? pending_.size() : pending_.size() - keep);
        return d;
      }
      case Mode::kContent: {
        if (strip_content_start_) {  // the newlines after "</think>"
          pending_ = std::string(LStripNewlines(pending_));
          if (pending_.empty() && !final) return d;
          strip_content_start_ = false;
        }
        if (parse_tool_calls_) {
          const size_t open = pending_.find(kToolOpen);
          if (open != std::string::npos) {
            // The newlines before the block go with it if it parses (Finish decides).
            const size_t cut = RStripNewlines(absl::string_view(pending_).substr(0, open)).size();
            d.content += pending_.substr(0, cut);
            pending_.erase(0, cut);
            mode_ = Mode::kToolCalls;
            continue;
          }
        }
        size_t keep = final || !parse_tool_calls_ ? 0 : PartialTagSuffix(pending_, kToolOpen);
        if (!final && parse_tool_calls_) {  // newlines that may precede a block
          while (keep < pending_.size() && pending_[pending_.size() - keep - 1] == '\n') ++keep;
        }
        d.content += pending_.substr(0, pending_.size() - keep);
        pending_.erase(0, pending_.size() - keep);
        return d;
      }
      case Mode::kToolCalls:
        return d;  // held until Finish
    }
  }
}

AssistantOutput AssistantOutputStream::Finish() {
  AssistantOutput out;
  Delta d = Drain(/*final=*/true);
  if (mode_ == Mode::kToolCalls) {
    d.content += SplitToolCalls(pending_, &out.tool_calls);
    pending_.clear();
  }
  if (!d.reasoning.empty()) out.reasoning = std::move(d.reasoning);
  out.content = std::move(d.content);
  return out;
}

}  // namespace deltaserve::tokenizer
