// Fixed-size blocks of the paged KV cache: a free list shared by all sequences, and each sequence's block
// table (the blocks holding its positions, in order), grown as the sequence does.
#ifndef DELTASERVE_SERVER_RUNNER_KV_BLOCK_ALLOCATOR_H_
#define DELTASERVE_SERVER_RUNNER_KV_BLOCK_ALLOCATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace deltaserve::runner {

class KvBlockAllocator {
 public:
  // `num_blocks` blocks of `block_size` tokens, all free.
  KvBlockAllocator(int64_t num_blocks, int64_t block_size);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  // Blocks that `tokens` positions occupy.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Appends free blocks to `table` until it covers `tokens` positions. RESOURCE_EXHAUSTED, taking
  // nothing, when too few are free.
  absl::Status Grow(std::vector<int32_t>& table, int64_t tokens);
  // Returns every block of `table` to the free list and clears it.
  void Release(std::vector<int32_t>& table);

 private:
  int64_t num_blocks_, block_size_;
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first (warm in cache)
};

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_KV_BLOCK_ALLOCATOR_H_
