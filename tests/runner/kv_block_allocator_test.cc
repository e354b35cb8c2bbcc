// The paged KV cache's block allocator: tables grow block by block, exhaustion takes nothing, released
// blocks are reused.
#include "runner/kv_block_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

namespace deltaserve::runner {
namespace {

using ::testing::HasSubstr;

TEST(KvBlockAllocator, GrowsTablesToCoverTokens) {
  KvBlockAllocator a(10, 16);
  std::vector<int32_t> t;
  ASSERT_TRUE(a.Grow(t, 1).ok());
  EXPECT_EQ(t.size(), 1u);
  ASSERT_TRUE(a.Grow(t, 16).ok());
  EXPECT_EQ(t.size(), 1u);
  ASSERT_TRUE(a.Grow(t, 17).ok());
  EXPECT_EQ(t.size(), 2u);
  ASSERT_TRUE(a.Grow(t, 5).ok());  // never shrinks
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(a.used_blocks(), 2);
  EXPECT_EQ(a.BlocksFor(33), 3);
}

TEST(KvBlockAllocator, ExhaustionTakesNothingAndNamesTheLimit) {
  KvBlockAllocator a(4, 8);
  std::vector<int32_t> t1, t2;
  ASSERT_TRUE(a.Grow(t1, 24).ok());
  absl::Status s = a.Grow(t2, 17);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("1 of 4 are free"));
  EXPECT_TRUE(t2.empty());
  EXPECT_EQ(a.free_blocks(), 1);
}

TEST(KvBlockAllocator, BlocksAreDistinctAndReusedAfterRelease) {
  KvBlockAllocator a(6, 4);
  std::vector<int32_t> t1, t2, t3;
  ASSERT_TRUE(a.Grow(t1, 12).ok());
  ASSERT_TRUE(a.Grow(t2, 12).ok());
  std::set<int32_t> all(t1.begin(), t1.end());
  all.insert(t2.begin(), t2.end());
  EXPECT_EQ(all.size(), 6u);
  for (int32_t b : all) EXPECT_TRUE(b >= 0 && b < 6);
  EXPECT_FALSE(a.Grow(t3, 1).ok());
  const std::vector<int32_t> freed = t1;
  a.Release(t1);
  EXPECT_TRUE(t1.empty());
  ASSERT_TRUE(a.Grow(t3, 12).ok());
  EXPECT_EQ(std::set<int32_t>(t3.begin(), t3.end()), std::set<int32_t>(freed.begin(), freed.end()));
}

}  // namespace
}  // namespace deltaserve::runner
