#include "tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace deltaserve::tokenizer {

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view tokenizer_json) {
  absl::StatusOr<internal::TokenizerSpec> spec = internal::ParseTokenizerJson(tokenizer_json);
  if (!spec.ok()) return spec.status();
  absl::StatusOr<std::unique_ptr<internal::BpeTokenizer>> tokenizer =
      internal::BpeTokenizer::Create(*std::move(spec));
  if (!tokenizer.ok()) return tokenizer.status();
  return std::unique_ptr<Tokenizer>(*std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& tokenizer_json_path) {
  std::ifstream in(tokenizer_json_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(tokenizer_json_path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(tokenizer_json_path, ": read failed"));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = FromJson(contents.str());
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(tokenizer_json_path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

namespace internal {

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(TokenizerSpec spec) {
  absl::StatusOr<Normalizer> normalizer = Normalizer::Create(spec.normalizers);
  if (!normalizer.ok()) return normalizer.status();
  absl::StatusOr<std::unique_ptr<PreTokenizer>> pre_tokenizer = PreTokenizer::Create(spec.splits);
  if (!pre_tokenizer.ok()) return pre_tokenizer.status();
  absl::StatusOr<std::unique_ptr<BpeModel>> model = BpeModel::Create(spec);
  if (!model.ok()) return model.status();

  // `tokenizers` ignores added tokens with empty content. Tokens with normalized=true are matched, and
  // decoded, in their normalized spelling.
  std::vector<AddedToken> added;
  std::vector<std::string> normalized_contents;
  for (AddedToken& token : spec.added_tokens) {
    if (token.content.empty()) continue;
    std::string normalized;
    if (!token.normalized || !normalizer->Normalize(token.content, &normalized)) normalized = token.content;
    normalized_contents.push_back(std::move(normalized));
    added.push_back(std::move(token));
  }

  int32_t max_id = -1;
  for (const auto& [token, id] : spec.vocab) max_id = std::max(max_id, id);
  for (const AddedToken& token : added) max_id = std::max(max_id, token.id);
  std::vector<Entry> entries(static_cast<size_t>(max_id) + 1);
  for (const auto& [token, id] : spec.vocab) {
    Entry& e = entries[id];
    if (e.assigned) continue;  // an id listed twice keeps one spelling
    e.token = token;
    e.assigned = true;
  }
  absl::flat_hash_map<std::string, int32_t> added_ids;
  absl::flat_hash_set<std::string> special_contents;
  for (size_t i = 0; i < added.size(); ++i) {
    Entry& e = entries[added[i].id];
    e.token = normalized_contents[i];
    e.assigned = true;
    added_ids[added[i].content] = added[i].id;
    if (added[i].special) special_contents.insert(added[i].content);
  }
  for (Entry& e : entries) {
    if (!e.assigned) continue;
    e.bytes = DecodeByteLevelToken(e.token);
    // Decoding skips by spelling, as `tokenizers` does: any id spelled like a special token is special.
    e.special = special_contents.contains(e.token);
  }

  std::unique_ptr<BpeTokenizer> tokenizer(
      new BpeTokenizer(*std::move(normalizer), *std::move(pre_tokenizer), *std::move(model),
                       std::make_unique<AddedVocabulary>(std::move(added), normalized_contents)));
  tokenizer->added_ids_ = std::move(added_ids);
  tokenizer->entries_ = std::move(entries);
  return tokenizer;
}

std::vector<int32_t> BpeTokenizer::Encode(absl::string_view text, bool parse_special) const {
  // A Python str is always valid; bytes that are not UTF-8 get the treatment decoding gives them.
  std::string repaired;
  if (!IsValidUtf8(text)) {
    repaired = Utf8Lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 4);
  std::vector<TextSegment> segments;
  added_->Split(text, /*normalized_pass=*/false, /*skip_special=*/!parse_special, &segments);
  std::string normalized;
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else if (normalizer_.Normalize(segment.text, &normalized)) {
      EncodeNormalized(normalized, parse_special, &ids);
    } else {
      EncodeNormalized(segment.text, parse_special, &ids);
    }
  }
  return ids;
}

void BpeTokenizer::EncodeNormalized(absl::string_view text, bool parse_special,
                                    std::vector<int32_t>* ids) const {
  std::vector<TextSegment> segments;
  added_->Split(text, /*normalized_pass=*/true, /*skip_special=*/!parse_special, &segments);
  std::vector<absl::string_view> pieces;
  for (const TextSegment& segment : segments) {
    if (segment.id >= 0) {
      ids->push_back(segment.id);
      continue;
    }
    pieces.clear();
    pre_tokenizer_->Split(segment.text, &pieces);
    for (const absl::string_view piece : pieces) model_->Encode(piece, ids);
  }
}

absl::StatusOr<std::string> BpeTokenizer::DecodeBytes(const std::vector<int32_t>& ids,
                                                      bool skip_special_tokens) const {
  std::string out;
  for (const int32_t id : ids) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is negative"));
    // Ids the tokenizer has no entry for (a model's padded vocabulary rows) decode to nothing, as in
    // Hugging Face tokenizers: a model can generate them, and its own output must always decode.
    if (static_cast<size_t>(id) >= entries_.size() || !entries_[id].assigned) continue;
    const Entry& e = entries_[id];
    if (skip_special_tokens && e.special) continue;
    out += e.bytes;
  }
  return out;
}

absl::StatusOr<std::string> BpeTokenizer::Decode(const std::vector<int32_t>& ids,
                                                 bool skip_special_tokens) const {
  absl::StatusOr<std::string> bytes = DecodeBytes(ids, skip_special_tokens);
  if (!bytes.ok()) return bytes.status();
  if (IsValidUtf8(*bytes)) return bytes;
  return Utf8Lossy(*bytes);
}

std::optional<int32_t> BpeTokenizer::TokenToId(absl::string_view token) const {
  const auto it = added_ids_.find(token);
  if (it != added_ids_.end()) return it->second;
  return model_->TokenToId(token);
}

std::optional<std::string> BpeTokenizer::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= entries_.size() || !entries_[id].assigned) return std::nullopt;
  return entries_[id].token;
}

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < entries_.size() && entries_[id].special;
}

}  // namespace internal
}  // namespace deltaserve::tokenizer
