#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <mutex>
#include <shared_mutex>

#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/byte_level.h"

namespace deltaserve::tokenizer::internal {

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(const TokenizerSpec& spec) {
  std::unique_ptr<BpeModel> model(new BpeModel);
  model->vocab_.reserve(spec.vocab.size());
  for (const auto& [token, id] : spec.vocab) model->vocab_.emplace(token, id);
  for (int b = 0; b < 256; ++b) {
    const auto it = model->vocab_.find(ByteLevelChar(static_cast<uint8_t>(b)));
    model->byte_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
  }
  model->merges_.reserve(spec.merges.size());
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [left, right] = spec.merges[i];
    const auto l = model->vocab_.find(left);
    const auto r = model->vocab_.find(right);
    const auto merged = model->vocab_.find(absl::StrCat(left, right));
    for (const auto& [it, what] : {std::make_pair(l, left), std::make_pair(r, right)}) {
      if (it == model->vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.merges[", i, "]: token \"", what, "\" is not in model.vocab"));
      }
    }
    if (merged == model->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", i, "]: the merged token \"", left,
                                                     right, "\" is not in model.vocab"));
    }
    // A pair listed twice keeps its last rank, as `tokenizers` (which collects the list into a map) does.
    model->merges_[PairKey(l->second, r->second)] = Merge{static_cast<int32_t>(i), merged->second};
  }
  model->ignore_merges_ = spec.ignore_merges;
  model->fuse_unk_ = spec.fuse_unk;
  if (spec.unk_token.has_value()) {
    const auto it = model->vocab_.find(*spec.unk_token);
    if (it == model->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.unk_token: \"", *spec.unk_token, "\" is not in model.vocab"));
    }
    model->unk_id_ = it->second;
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(absl::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::Encode(absl::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (piece.size() == 1 && !ignore_merges_) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(piece[0])];
    if (id >= 0) {
      ids->push_back(id);
    } else if (unk_id_ >= 0) {
      ids->push_back(unk_id_);
    }
    return;
  }
  Ids result;
  if (piece.size() >= kMaxCachedPiece) {
    MergePiece(piece, &result);
    ids->insert(ids->end(), result.begin(), result.end());
    return;
  }
  // High hash bits pick the shard, so that the shard's own table (which uses the low bits) stays spread.
  CacheShard& shard = cache_[(absl::Hash<absl::string_view>{}(piece) >> 48) % kShards];
  {
    std::shared_lock lock(shard.mu);
    const auto it = shard.map.find(piece);
    if (it != shard.map.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  MergePiece(piece, &result);
  ids->insert(ids->end(), result.begin(), result.end());
  std::unique_lock lock(shard.mu);
  if (shard.map.size() >= kShardCapacity) shard.map.clear();
  shard.map.emplace(piece, std::move(result));
}

void BpeModel::MergePiece(absl::string_view piece, Ids* out) const {
  if (ignore_merges_) {
    const auto it = vocab_.find(BytesToByteLevel(piece));
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  // A queued merge of the symbol at `pos` with its right neighbour.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.clear();
  heap.clear();

  // One symbol per byte. A byte missing from the vocab becomes unk_token (runs fused when fuse_unk),
  // or is dropped when there is none, as in `tokenizers`.
  auto add = [&](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, true});
  };
  bool unk_pending = false;
  for (const char ch : piece) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(ch)];
    if (id >= 0) {
      if (unk_pending) add(unk_id_);
      unk_pending = false;
      add(id);
    } else if (unk_id_ >= 0) {
      if (unk_pending && !fuse_unk_) add(unk_id_);
      unk_pending = true;
    }
  }
  if (unk_pending) add(unk_id_);
  if (symbols.empty()) return;

  // Lowest rank first, then leftmost: a min-heap on (rank, pos).
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto push_pair = [&](int32_t pos) {
    const Symbol& s = symbols[pos];
    if (s.next < 0) return;
    const auto it = merges_.find(PairKey(s.id, symbols[s.next].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& s = symbols[top.pos];
    if (!s.alive || s.next < 0) continue;
    // An entry is stale once either side has merged with something else since it was queued.
    const auto it = merges_.find(PairKey(s.id, symbols[s.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    Symbol& right = symbols[s.next];
    right.alive = false;
    s.id = top.new_id;
    s.next = right.next;
    if (s.next >= 0) symbols[s.next].prev = top.pos;
    if (s.prev >= 0) push_pair(s.prev);
    push_pair(top.pos);
  }
  // The first symbol only ever grows rightwards, so it is alive and starts the chain.
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out->push_back(symbols[i].id);
}

}  // namespace deltaserve::tokenizer::internal
