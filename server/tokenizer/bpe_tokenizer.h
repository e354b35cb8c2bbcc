// The Tokenizer implementation for byte-level BPE tokenizer.json files (Qwen3, Qwen3.5): added tokens
// first, then normalization, regex pre-tokenization and BPE; decoding through per-id byte strings.
#ifndef DELTASERVE_SERVER_TOKENIZER_BPE_TOKENIZER_H_
#define DELTASERVE_SERVER_TOKENIZER_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_spec.h"

namespace deltaserve::tokenizer::internal {

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(TokenizerSpec spec);

  std::vector<int32_t> Encode(absl::string_view text, bool parse_special = true) const override;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids,
                                     bool skip_special_tokens = false) const override;
  absl::StatusOr<std::string> DecodeBytes(const std::vector<int32_t>& ids,
                                          bool skip_special_tokens = false) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(entries_.size()); }
  std::optional<int32_t> TokenToId(absl::string_view token) const override;
  std::optional<std::string> IdToToken(int32_t id) const override;
  bool IsSpecial(int32_t id) const override;

 private:
  // What decoding needs per id, precomputed at load.
  struct Entry {
    std::string token;  // the spelling IdToToken returns
    std::string bytes;  // what the ByteLevel decoder makes of it
    bool assigned = false;
    bool special = false;
  };

  BpeTokenizer(Normalizer normalizer, std::unique_ptr<PreTokenizer> pre_tokenizer,
               std::unique_ptr<BpeModel> model, std::unique_ptr<AddedVocabulary> added)
      : normalizer_(std::move(normalizer)),
        pre_tokenizer_(std::move(pre_tokenizer)),
        model_(std::move(model)),
        added_(std::move(added)) {}
  void EncodeNormalized(absl::string_view text, bool parse_special, std::vector<int32_t>* ids) const;

  Normalizer normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<AddedVocabulary> added_;
  absl::flat_hash_map<std::string, int32_t> added_ids_;  // content -> id, looked up before the vocab
  std::vector<Entry> entries_;                           // indexed by id, up to the largest id
};

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_BPE_TOKENIZER_H_
