// The BPE model of a byte-level tokenizer: vocab, merge ranks, and the merge loop that turns one
// pre-tokenized piece into ids, with a bounded, thread-safe cache of pieces already seen.
#ifndef DELTASERVE_SERVER_TOKENIZER_BPE_MODEL_H_
#define DELTASERVE_SERVER_TOKENIZER_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tokenizer/tokenizer_spec.h"

namespace deltaserve::tokenizer::internal {

class BpeModel {
 public:
  // Errors name the field: a merge whose tokens (or whose result) are not in model.vocab, an unknown
  // model.unk_token.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(const TokenizerSpec& spec);

  // Appends the ids for one piece of raw bytes (the byte-level spelling is implied: byte b is the vocab
  // token ByteLevelChar(b)). Safe to call from several threads at once.
  void Encode(absl::string_view piece, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(absl::string_view token) const;
  const absl::flat_hash_map<std::string, int32_t>& vocab() const { return vocab_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  using Ids = absl::InlinedVector<int32_t, 4>;

  // Pieces shorter than kMaxCachedPiece bytes are cached (as `tokenizers` does); a shard that fills up
  // is emptied, which keeps memory bounded and lets the cache follow the text.
  static constexpr size_t kMaxCachedPiece = 256;
  static constexpr size_t kShards = 16;
  static constexpr size_t kShardCapacity = 8192;
  // std::shared_mutex rather than absl::Mutex: Debian's Abseil is built with lock-order checking, which
  // took an eighth of the encode time.
  struct CacheShard {
    std::shared_mutex mu;
    absl::flat_hash_map<std::string, Ids> map;  // guarded by mu
  };

  BpeModel() = default;
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  void MergePiece(absl::string_view piece, Ids* out) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};  // -1 when the vocab lacks the byte's character
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  mutable std::array<CacheShard, kShards> cache_;
};

}  // namespace deltaserve::tokenizer::internal

#endif  // DELTASERVE_SERVER_TOKENIZER_BPE_MODEL_H_
