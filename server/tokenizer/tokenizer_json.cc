#include "tokenizer/tokenizer_json.h"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace deltaserve::tokenizer::internal {
namespace {

using Json = nlohmann::json;

// The regex ByteLevel(use_regex=true) splits with: GPT-2's.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

absl::Status Unsupported(absl::string_view field, absl::string_view problem) {
  return absl::UnimplementedError(absl::StrCat(field, ": ", problem));
}

const Json* Member(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

// A missing or null member reads as `fallback`.
absl::StatusOr<bool> GetBool(const Json& object, const char* key, absl::string_view path, bool fallback) {
  const Json* v = Member(object, key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_boolean()) return Invalid(absl::StrCat(path, ".", key), "must be true or false");
  return v->get<bool>();
}

absl::StatusOr<std::optional<std::string>> GetOptionalString(const Json& object, const char* key,
                                                             absl::string_view path) {
  const Json* v = Member(object, key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (!v->is_string()) return Invalid(absl::StrCat(path, ".", key), "must be a string or null");
  return std::optional<std::string>(v->get<std::string>());
}

absl::StatusOr<std::string> GetType(const Json& object, absl::string_view path) {
  if (!object.is_object()) return Invalid(path, "must be an object");
  const Json* type = Member(object, "type");
  if (type == nullptr) return Invalid(absl::StrCat(path, ".type"), "is missing");
  if (!type->is_string()) return Invalid(absl::StrCat(path, ".type"), "must be a string");
  return type->get<std::string>();
}

// Decoding keeps a table indexed by id, so an absurd id would be an absurd allocation; real vocabularies
// stay far below the bound.
constexpr int64_t kMaxId = int64_t{1} << 24;

absl::StatusOr<int32_t> GetId(const Json& v, absl::string_view path) {
  if (!v.is_number_integer()) return Invalid(path, "must be an integer id");
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id >= kMaxId) return Invalid(path, absl::StrCat("id ", id, " is out of range [0, 2^24)"));
  return static_cast<int32_t>(id);
}

absl::Status ParseNormalizer(const Json& j, const std::string& path, TokenizerSpec* spec) {
  if (j.is_null()) return absl::OkStatus();
  absl::StatusOr<std::string> type = GetType(j, path);
  if (!type.ok()) return type.status();
  if (*type == "NFC") {
    spec->normalizers.push_back(NormalizationForm::kNFC);
  } else if (*type == "NFD") {
    spec->normalizers.push_back(NormalizationForm::kNFD);
  } else if (*type == "NFKC") {
    spec->normalizers.push_back(NormalizationForm::kNFKC);
  } else if (*type == "NFKD") {
    spec->normalizers.push_back(NormalizationForm::kNFKD);
  } else if (*type == "Sequence") {
    const Json* list = Member(j, "normalizers");
    if (list == nullptr || !list->is_array()) return Invalid(path + ".normalizers", "must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      absl::Status s = ParseNormalizer((*list)[i], absl::StrCat(path, ".normalizers[", i, "]"), spec);
      if (!s.ok()) return s;
    }
  } else {
    return Unsupported(path + ".type", absl::StrCat("normalizer '", *type,
                                                    "' is not supported (NFC, NFD, NFKC, NFKD, Sequence)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitBehavior> ParseBehavior(const Json& object, const std::string& path) {
  const Json* v = Member(object, "behavior");
  if (v == nullptr || !v->is_string()) return Invalid(path + ".behavior", "must be a string");
  const std::string b = v->get<std::string>();
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return Invalid(path + ".behavior", absl::StrCat("unknown behavior '", b, "'"));
}

// Flattens Sequence pre-tokenizers into `spec->splits`; sets *byte_level once a ByteLevel step is seen,
// which must be the last step: the BPE model then sees bytes, which is all deltaserve implements.
absl::Status ParsePreTokenizer(const Json& j, const std::string& path, TokenizerSpec* spec,
                               bool* byte_level) {
  absl::StatusOr<std::string> type = GetType(j, path);
  if (!type.ok()) return type.status();
  if (*type == "Sequence") {
    const Json* list = Member(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) return Invalid(path + ".pretokenizers", "must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      absl::Status s =
          ParsePreTokenizer((*list)[i], absl::StrCat(path, ".pretokenizers[", i, "]"), spec, byte_level);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (*byte_level) return Unsupported(path, "a pre-tokenizer after ByteLevel is not supported");
  if (*type == "Split") {
    SplitRule rule;
    const Json* pattern = Member(j, "pattern");
    const Json* regex = pattern != nullptr && pattern->is_object() ? Member(*pattern, "Regex") : nullptr;
    const Json* literal = pattern != nullptr && pattern->is_object() ? Member(*pattern, "String") : nullptr;
    if (regex != nullptr && regex->is_string()) {
      rule.pattern = regex->get<std::string>();
    } else if (literal != nullptr && literal->is_string()) {
      rule.pattern = literal->get<std::string>();
      rule.is_regex = false;
    } else {
      return Invalid(path + ".pattern", R"(must be {"Regex": "..."} or {"String": "..."})");
    }
    absl::StatusOr<SplitBehavior> behavior = ParseBehavior(j, path);
    if (!behavior.ok()) return behavior.status();
    rule.behavior = *behavior;
    absl::StatusOr<bool> invert = GetBool(j, "invert", path, false);
    if (!invert.ok()) return invert.status();
    rule.invert = *invert;
    spec->splits.push_back(std::move(rule));
    return absl::OkStatus();
  }
  if (*type == "ByteLevel") {
    absl::StatusOr<bool> prefix = GetBool(j, "add_prefix_space", path, false);
    if (!prefix.ok()) return prefix.status();
    if (*prefix) return Unsupported(path + ".add_prefix_space", "true is not supported");
    absl::StatusOr<bool> use_regex = GetBool(j, "use_regex", path, true);
    if (!use_regex.ok()) return use_regex.status();
    if (*use_regex) spec->splits.push_back(SplitRule{kGpt2Pattern, true, SplitBehavior::kIsolated, false});
    *byte_level = true;
    return absl::OkStatus();
  }
  return Unsupported(path + ".type", absl::StrCat("pre-tokenizer '", *type,
                                                  "' is not supported (Split, ByteLevel, Sequence)"));
}

absl::Status ParseModel(const Json& model, TokenizerSpec* spec) {
  if (!model.is_object()) return Invalid("model", "must be an object");
  if (const Json* type = Member(model, "type"); type != nullptr && *type != "BPE") {
    return Unsupported("model.type", absl::StrCat("model ", type->dump(), " is not supported (BPE)"));
  }
  const Json* vocab = Member(model, "vocab");
  if (vocab == nullptr) return Invalid("model.vocab", "is missing");
  if (!vocab->is_object()) return Invalid("model.vocab", "must be an object of token: id");
  spec->vocab.reserve(vocab->size());
  for (const auto& [token, id] : vocab->items()) {
    absl::StatusOr<int32_t> parsed = GetId(id, absl::StrCat("model.vocab[\"", token, "\"]"));
    if (!parsed.ok()) return parsed.status();
    spec->vocab.emplace_back(token, *parsed);
  }
  const Json* merges = Member(model, "merges");
  if (merges == nullptr) return Invalid("model.merges", "is missing");
  if (!merges->is_array()) return Invalid("model.merges", "must be an array");
  spec->merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& m = (*merges)[i];
    if (m.is_string()) {
      // The legacy form, a merges.txt line: "a b"; a "#version" header line is skipped.
      const std::string line = m.get<std::string>();
      if (line.rfind("#version", 0) == 0) continue;
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      if (parts.size() != 2) {
        return Invalid(absl::StrCat("model.merges[", i, "]"),
                       absl::StrCat("\"", line, "\" is not two tokens"));
      }
      spec->merges.emplace_back(std::move(parts[0]), std::move(parts[1]));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec->merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return Invalid(absl::StrCat("model.merges[", i, "]"), "must be \"a b\" or [\"a\", \"b\"]");
    }
  }
  absl::StatusOr<bool> ignore_merges = GetBool(model, "ignore_merges", "model", false);
  if (!ignore_merges.ok()) return ignore_merges.status();
  spec->ignore_merges = *ignore_merges;
  absl::StatusOr<bool> fuse_unk = GetBool(model, "fuse_unk", "model", false);
  if (!fuse_unk.ok()) return fuse_unk.status();
  spec->fuse_unk = *fuse_unk;
  absl::StatusOr<std::optional<std::string>> unk = GetOptionalString(model, "unk_token", "model");
  if (!unk.ok()) return unk.status();
  spec->unk_token = *unk;

  absl::StatusOr<bool> byte_fallback = GetBool(model, "byte_fallback", "model", false);
  if (!byte_fallback.ok()) return byte_fallback.status();
  if (*byte_fallback) return Unsupported("model.byte_fallback", "true is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    absl::StatusOr<std::optional<std::string>> affix = GetOptionalString(model, key, "model");
    if (!affix.ok()) return affix.status();
    if (affix->has_value() && !(*affix)->empty()) {
      return Unsupported(absl::StrCat("model.", key), "a non-empty value is not supported");
    }
  }
  if (const Json* dropout = Member(model, "dropout"); dropout != nullptr && !dropout->is_null()) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      return Unsupported("model.dropout", "BPE dropout is not supported");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const Json& list, TokenizerSpec* spec) {
  if (list.is_null()) return absl::OkStatus();
  if (!list.is_array()) return Invalid("added_tokens", "must be an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string path = absl::StrCat("added_tokens[", i, "]");
    const Json& t = list[i];
    if (!t.is_object()) return Invalid(path, "must be an object");
    AddedToken token;
    const Json* id = Member(t, "id");
    if (id == nullptr) return Invalid(path + ".id", "is missing");
    absl::StatusOr<int32_t> parsed = GetId(*id, path + ".id");
    if (!parsed.ok()) return parsed.status();
    token.id = *parsed;
    const Json* content = Member(t, "content");
    if (content == nullptr || !content->is_string()) return Invalid(path + ".content", "must be a string");
    token.content = content->get<std::string>();
    // Defaults are AddedToken's in `tokenizers`: only `normalized` starts true.
    struct Flag {
      const char* key;
      bool* field;
      bool fallback;
    };
    for (const Flag& f :
         {Flag{"single_word", &token.single_word, false}, Flag{"lstrip", &token.lstrip, false},
          Flag{"rstrip", &token.rstrip, false}, Flag{"normalized", &token.normalized, true},
          Flag{"special", &token.special, false}}) {
      absl::StatusOr<bool> v = GetBool(t, f.key, path, f.fallback);
      if (!v.ok()) return v.status();
      *f.field = *v;
    }
    spec->added_tokens.push_back(std::move(token));
  }
  return absl::OkStatus();
}

absl::Status CheckByteLevelOrNull(const Json* j, const char* field, bool null_ok) {
  if (j == nullptr || j->is_null()) {
    if (null_ok) return absl::OkStatus();
    return Unsupported(field, "must be ByteLevel (tokens are decoded as bytes)");
  }
  absl::StatusOr<std::string> type = GetType(*j, field);
  if (!type.ok()) return type.status();
  if (*type != "ByteLevel") {
    return Unsupported(absl::StrCat(field, ".type"),
                       absl::StrCat("'", *type, "' is not supported (ByteLevel)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenizerSpec> ParseTokenizerJson(absl::string_view json) {
  Json root;
  try {
    root = Json::parse(json.begin(), json.end());
  } catch (const Json::exception& e) {
    // nlohmann reports the line, column and what it read there. Not parse_error alone: a number out of
    // double's range ("4e493") is an out_of_range exception (found by tests/fuzz/fuzz_tokenizer_json).
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return absl::InvalidArgumentError("the top level must be a JSON object");

  TokenizerSpec spec;
  const Json* model = Member(root, "model");
  if (model == nullptr) return Invalid("model", "is missing");
  if (absl::Status s = ParseModel(*model, &spec); !s.ok()) return s;
  if (const Json* added = Member(root, "added_tokens"); added != nullptr) {
    if (absl::Status s = ParseAddedTokens(*added, &spec); !s.ok()) return s;
  }
  if (const Json* normalizer = Member(root, "normalizer"); normalizer != nullptr) {
    if (absl::Status s = ParseNormalizer(*normalizer, "normalizer", &spec); !s.ok()) return s;
  }
  bool byte_level = false;
  if (const Json* pre = Member(root, "pre_tokenizer"); pre != nullptr && !pre->is_null()) {
    if (absl::Status s = ParsePreTokenizer(*pre, "pre_tokenizer", &spec, &byte_level); !s.ok()) return s;
  }
  if (!byte_level) {
    return Unsupported("pre_tokenizer",
                       "must end with ByteLevel (deltaserve implements byte-level BPE only)");
  }
  if (absl::Status s = CheckByteLevelOrNull(Member(root, "decoder"), "decoder", false); !s.ok()) return s;
  // A ByteLevel post-processor only trims offsets; others (templates) would add tokens to every encoding.
  if (absl::Status s = CheckByteLevelOrNull(Member(root, "post_processor"), "post_processor", true);
      !s.ok()) {
    return s;
  }
  return spec;
}

}  // namespace deltaserve::tokenizer::internal
