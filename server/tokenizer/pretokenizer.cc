#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/regex_compat.h"
#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer::internal {

namespace {

absl::StatusOr<pcre2_code*> Compile(const std::string& pattern, uint32_t options, const SplitRule& rule,
                                    size_t index) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                   &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(
        absl::StrCat("pre_tokenizer split ", index, ": pattern /", rule.pattern,
                     "/ does not compile: ", reinterpret_cast<const char*>(message)));
  }
  // Without JIT (an unsupported CPU) pcre2_match interprets the pattern: slower, same matches.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return code;
}

}  // namespace

// One Split rule: its compiled pattern and what to do with the text it matches.
class RegexSplitter {
 public:
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(const SplitRule& rule, size_t index) {
    std::unique_ptr<RegexSplitter> splitter(new RegexSplitter(rule.behavior, rule.invert));
    if (!rule.is_regex) {
      absl::StatusOr<pcre2_code*> code = Compile(rule.pattern, PCRE2_UTF | PCRE2_LITERAL, rule, index);
      if (!code.ok()) return code.status();
      splitter->code_ = *code;
      return splitter;
    }
    const std::string common = AdaptPatternForPcre2(rule.pattern, /*unicode16_letters=*/false);
    const std::string exact = AdaptPatternForPcre2(rule.pattern, /*unicode16_letters=*/true);
    absl::StatusOr<pcre2_code*> code = Compile(common, PCRE2_UTF | PCRE2_UCP, rule, index);
    if (!code.ok()) return code.status();
    splitter->code_ = *code;
    if (exact != common) {
      code = Compile(exact, PCRE2_UTF | PCRE2_UCP, rule, index);
      if (!code.ok()) return code.status();
      splitter->code_unicode16_ = *code;
    }
    return splitter;
  }
  ~RegexSplitter() {
    pcre2_code_free(code_);
    pcre2_code_free(code_unicode16_);
  }
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // `unicode16`: the text holds code points that only the Unicode 16 form of the pattern classifies right.
  void Split(absl::string_view text, bool unicode16, pcre2_match_data* match,
             std::vector<absl::string_view>* out) const;

 private:
  struct Span {
    size_t begin;
    size_t end;
    bool is_match;
  };

  RegexSplitter(SplitBehavior behavior, bool invert) : behavior_(behavior), invert_(invert) {}

  // The next match at or after `start`, or nullopt.
  std::optional<std::pair<size_t, size_t>> Find(const pcre2_code* code, absl::string_view text, size_t start,
                                                pcre2_match_data* match) const;
  // Calls visit(begin, end, is_match) for the stretches of `text`, in order, covering all of it.
  template <typename Visit>
  void ForEachSpan(const pcre2_code* code, absl::string_view text, pcre2_match_data* match,
                   Visit visit) const;

  pcre2_code* code_ = nullptr;
  pcre2_code* code_unicode16_ = nullptr;  // null when the pattern uses no property that needs it
  SplitBehavior behavior_;
  bool invert_;
};

std::optional<std::pair<size_t, size_t>> RegexSplitter::Find(const pcre2_code* code, absl::string_view text,
                                                             size_t start, pcre2_match_data* match) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // The text was validated once; letting PCRE2 check it again on every call would be quadratic.
  int rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, match, nullptr);
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
      rc == PCRE2_ERROR_HEAPLIMIT) {
    // Pathological input (e.g. megabytes of one character class): retry with room to spare.
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 256 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
    pcre2_set_match_limit(context, UINT32_MAX);
    pcre2_set_depth_limit(context, UINT32_MAX);
    pcre2_set_heap_limit(context, UINT32_MAX);
    rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, match, context);
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
  }
  if (rc < 0) return std::nullopt;  // no match (or, past every limit, treated as none)
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
  return std::make_pair(static_cast<size_t>(ovector[0]), static_cast<size_t>(ovector[1]));
}

template <typename Visit>
void RegexSplitter::ForEachSpan(const pcre2_code* code, absl::string_view text, pcre2_match_data* match,
                                Visit visit) const {
  size_t prev = 0, search = 0;
  std::optional<size_t> last_match_end;
  while (search <= text.size()) {
    const std::optional<std::pair<size_t, size_t>> m = Find(code, text, search, match);
    if (!m.has_value()) break;
    const auto [begin, end] = *m;
    if (begin == end && last_match_end == end) {
      // As Rust's onig iterator: no empty match right where the previous match ended; step one character.
      if (search >= text.size()) break;
      size_t next = search;
      NextCodePoint(text, &next);
      search = next;
      continue;
    }
    if (prev != begin) visit(prev, begin, invert_);
    visit(begin, end, !invert_);
    prev = search = end;
    last_match_end = end;
  }
  if (prev != text.size()) visit(prev, text.size(), invert_);
}

void RegexSplitter::Split(absl::string_view text, bool unicode16, pcre2_match_data* match,
                          std::vector<absl::string_view>* out) const {
  if (text.empty()) return;
  const pcre2_code* code = unicode16 && code_unicode16_ != nullptr ? code_unicode16_ : code_;
  if (behavior_ == SplitBehavior::kIsolated) {  // every stretch is a piece: no need to collect them
    ForEachSpan(code, text, match, [&](size_t begin, size_t end, bool) {
      if (begin < end) out->push_back(text.substr(begin, end - begin));
    });
    return;
  }
  std::vector<Span> spans;
  ForEachSpan(code, text, match, [&](size_t begin, size_t end, bool is_match) {
    spans.push_back({begin, end, is_match});
  });
  // Each behavior decides which spans to drop or join, as SplitDelimiterBehavior does.
  std::vector<std::pair<size_t, size_t>> pieces;
  pieces.reserve(spans.size());
  bool previous_match = false;
  switch (behavior_) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) pieces.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) pieces.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty()) {
          pieces.back().second = s.end;
        } else {
          pieces.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) {
          pieces.back().first = it->begin;
        } else {
          pieces.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
  }
  for (const auto& [begin, end] : pieces) {
    if (begin < end) out->push_back(text.substr(begin, end - begin));
  }
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(const std::vector<SplitRule>& rules) {
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer);
  for (size_t i = 0; i < rules.size(); ++i) {
    absl::StatusOr<std::unique_ptr<RegexSplitter>> splitter = RegexSplitter::Create(rules[i], i);
    if (!splitter.ok()) return splitter.status();
    pre->splitters_.push_back(*std::move(splitter));
  }
  return pre;
}

PreTokenizer::~PreTokenizer() = default;

void PreTokenizer::Split(absl::string_view text, std::vector<absl::string_view>* pieces) const {
  if (text.empty()) return;
  if (splitters_.empty()) {
    pieces->push_back(text);
    return;
  }
  // Only the whole match is read, so one pair of offsets is enough.
  pcre2_match_data* match = pcre2_match_data_create(1, nullptr);
  std::vector<absl::string_view> current, next;
  const bool unicode16 = HasUnicode16Additions(text);
  splitters_[0]->Split(text, unicode16, match, splitters_.size() == 1 ? pieces : &current);
  for (size_t i = 1; i < splitters_.size(); ++i) {
    std::vector<absl::string_view>* target = i + 1 == splitters_.size() ? pieces : &next;
    for (const absl::string_view piece : current) splitters_[i]->Split(piece, unicode16, match, target);
    current.swap(next);
    next.clear();
  }
  pcre2_match_data_free(match);
}

}  // namespace deltaserve::tokenizer::internal
