// BoxIou and class-wise greedy NMS: suppression, classes, stable ties, the threshold boundary,
// max_detections, refusals, and the greedy invariants on random detections.
#include "vision/nms.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::vision {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

Detection Box(float x0, float y0, float x1, float y1, float score = 0.5f, int class_id = 0) {
  return Detection{x0, y0, x1, y1, score, class_id};
}

TEST(BoxIou, KnownValues) {
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)), 1.0);
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(5, 0, 15, 10)), 50.0 / 150.0);
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(0, 0, 10, 20)), 0.5);
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(2, 2, 4, 4)), 4.0 / 100.0);
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(10, 0, 20, 10)), 0.0);  // touching
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(20, 20, 30, 30)), 0.0);
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 0, 10), Box(0, 0, 0, 10)), 0.0);  // zero area
  EXPECT_DOUBLE_EQ(BoxIou(Box(5, 5, 0, 0), Box(0, 0, 10, 10)), 0.0);  // inverted corners
  EXPECT_DOUBLE_EQ(BoxIou(Box(0, 0, 10, 10), Box(5, 5, 15, 15)),
                   BoxIou(Box(5, 5, 15, 15), Box(0, 0, 10, 10)));
}

TEST(Nms, SuppressesOverlapsOfTheSameClassOnly) {
  const std::vector<Detection> d = {
      Box(0, 0, 10, 10, 0.9f, 0),    // kept
      Box(1, 1, 11, 11, 0.8f, 0),    // overlaps 0: suppressed
      Box(1, 1, 11, 11, 0.7f, 1),    // other class: kept
      Box(50, 50, 60, 60, 0.95f, 0)  // elsewhere: kept, first
  };
  absl::StatusOr<std::vector<int>> kept = NmsIndices(d, 0.5f, 100);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_THAT(*kept, ElementsAre(3, 0, 2));
  absl::StatusOr<std::vector<Detection>> boxes = Nms(d, 0.5f, 100);
  ASSERT_TRUE(boxes.ok());
  ASSERT_EQ(boxes->size(), 3u);
  EXPECT_EQ((*boxes)[0].score, 0.95f);
  EXPECT_EQ((*boxes)[2].class_id, 1);
}

TEST(Nms, EqualScoresKeepTheLowerIndex) {
  const std::vector<Detection> d = {Box(0, 0, 10, 10, 0.5f), Box(20, 20, 30, 30, 0.7f),
                                    Box(0, 0, 10, 11, 0.5f), Box(0, 0, 10, 10, 0.5f)};
  EXPECT_THAT(*NmsIndices(d, 0.5f, 10), ElementsAre(1, 0));
  // Without overlap, equal scores come out in input order.
  const std::vector<Detection> apart = {Box(0, 0, 1, 1, 0.5f), Box(5, 5, 6, 6, 0.5f),
                                        Box(9, 9, 10, 10, 0.5f)};
  EXPECT_THAT(*NmsIndices(apart, 0.5f, 10), ElementsAre(0, 1, 2));
}

TEST(Nms, IouEqualToTheThresholdIsKept) {
  const std::vector<Detection> d = {Box(0, 0, 10, 10, 0.9f), Box(0, 0, 10, 20, 0.8f)};  // IoU exactly 0.5
  EXPECT_THAT(*NmsIndices(d, 0.5f, 10), ElementsAre(0, 1));
  EXPECT_THAT(*NmsIndices(d, 0.49f, 10), ElementsAre(0));
  // Threshold 1 keeps everything but exact duplicates... which have IoU 1, not above it: kept too.
  const std::vector<Detection> same = {Box(0, 0, 10, 10, 0.9f), Box(0, 0, 10, 10, 0.8f)};
  EXPECT_THAT(*NmsIndices(same, 1.0f, 10), ElementsAre(0, 1));
  // Threshold 0 suppresses any overlap, but not touching boxes.
  const std::vector<Detection> touching = {Box(0, 0, 10, 10, 0.9f), Box(10, 0, 20, 10, 0.8f),
                                           Box(9, 9, 12, 12, 0.7f)};
  EXPECT_THAT(*NmsIndices(touching, 0.0f, 10), ElementsAre(0, 1));
}

TEST(Nms, StopsAtMaxDetections) {
  std::vector<Detection> d;
  for (int i = 0; i < 10; ++i) d.push_back(Box(20.0f * i, 0, 20.0f * i + 10, 10, 0.1f * i));
  EXPECT_THAT(*NmsIndices(d, 0.5f, 3), ElementsAre(9, 8, 7));
  EXPECT_THAT(*NmsIndices(d, 0.5f, 0), IsEmpty());
  EXPECT_THAT(*NmsIndices({}, 0.5f, 100), IsEmpty());
}

TEST(Nms, RefusesBadArguments) {
  const std::vector<Detection> d = {Box(0, 0, 1, 1)};
  for (const float t : {-0.1f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    absl::StatusOr<std::vector<int>> r = NmsIndices(d, t, 10);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("is not in [0, 1]"));
  }
  absl::StatusOr<std::vector<int>> r = NmsIndices(d, 0.5f, -1);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("max_detections -1 is negative"));
  const std::vector<Detection> bad = {Box(0, 0, 1, 1), Box(0, 0, std::numeric_limits<float>::infinity(), 1),
                                      Box(0, 0, 1, 1, std::numeric_limits<float>::quiet_NaN())};
  r = NmsIndices(bad, 0.5f, 10);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("detection 1 has a NaN or infinite"));
  EXPECT_FALSE(Nms(std::vector<Detection>{bad[2]}, 0.5f, 10).ok());
}

// On random detections: kept boxes of a class never overlap above the threshold, every dropped one
// overlaps a kept one of its class that comes earlier in the visiting order, and the order is by score.
TEST(Nms, GreedyInvariantsOnRandomDetections) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> pos(0, 100), size(2, 30), score(0, 1);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<Detection> d;
    const int n = 1 + rng() % 80;
    for (int i = 0; i < n; ++i) {
      const float x = pos(rng), y = pos(rng);
      // Scores in steps of 0.1: many ties.
      d.push_back(Box(x, y, x + size(rng), y + size(rng), std::round(score(rng) * 10) / 10, rng() % 3));
    }
    const float threshold = 0.3f + 0.1f * (trial % 5);
    const std::vector<int> kept = *NmsIndices(d, threshold, 1000);
    std::vector<int> rank(n, -1);
    for (size_t k = 0; k < kept.size(); ++k) rank[kept[k]] = static_cast<int>(k);
    for (size_t a = 0; a < kept.size(); ++a) {
      for (size_t b = a + 1; b < kept.size(); ++b) {
        const Detection &p = d[kept[a]], &q = d[kept[b]];
        EXPECT_TRUE(p.score > q.score || (p.score == q.score && kept[a] < kept[b]));
        if (p.class_id == q.class_id) {
          EXPECT_LE(BoxIou(p, q), threshold);
        }
      }
    }
    for (int i = 0; i < n; ++i) {
      if (rank[i] >= 0) continue;
      bool explained = false;
      for (const int k : kept) {
        const bool earlier = d[k].score > d[i].score || (d[k].score == d[i].score && k < i);
        if (earlier && d[k].class_id == d[i].class_id && BoxIou(d[k], d[i]) > threshold) explained = true;
      }
      EXPECT_TRUE(explained) << "detection " << i << " dropped without a reason";
    }
  }
}

}  // namespace
}  // namespace deltaserve::vision
