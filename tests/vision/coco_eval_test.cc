// EvaluateCoco: pycocotools' numbers on the random cases make_coco_fixture.py writes (the CocoFixture
// tests, which need the vision_coco_fixtures CTest fixture), plus hand-checked cases and refusals.
#include "vision/coco_eval.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::vision {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr double kTolerance = 1e-6;

Json LoadFixture() {
  const char* dir = std::getenv("DELTASERVE_VISION_COCO_FIXTURES");
  if (dir == nullptr) {
    ADD_FAILURE() << "DELTASERVE_VISION_COCO_FIXTURES is not set: run through ctest (fixture "
                     "vision_coco_fixtures, tests/vision/make_coco_fixture.py)";
    return Json();
  }
  const std::string path = std::string(dir) + "/coco_cases.json";
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return Json();
  }
  std::stringstream text;
  text << in.rdbuf();
  return Json::parse(text.str());
}

CocoBox BoxOf(const Json& v) {
  return CocoBox{v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()};
}

std::vector<CocoImage> ImagesOf(const Json& c) {
  std::vector<CocoImage> images;
  for (const Json& image : c["images"]) {
    CocoImage& out = images.emplace_back();
    for (const Json& g : image["gt"]) out.ground_truth.push_back({BoxOf(g), g[4].get<int>()});
    for (const Json& d : image["dt"])
      out.predictions.push_back({BoxOf(d), d[4].get<double>(), d[5].get<int>()});
  }
  return images;
}

TEST(CocoFixture, ThresholdsAreNumpysBitForBit) {
  const Json fixture = LoadFixture();
  ASSERT_TRUE(fixture.is_object());
  const auto iou = CocoIouThresholds();
  const auto recall = CocoRecallThresholds();
  ASSERT_EQ(fixture["iou_thresholds"].size(), iou.size());
  ASSERT_EQ(fixture["recall_thresholds"].size(), recall.size());
  for (size_t i = 0; i < iou.size(); ++i) EXPECT_EQ(iou[i], fixture["iou_thresholds"][i].get<double>()) << i;
  for (size_t i = 0; i < recall.size(); ++i) {
    EXPECT_EQ(recall[i], fixture["recall_thresholds"][i].get<double>()) << i;
  }
}

TEST(CocoFixture, MatchesPycocotools) {
  const Json fixture = LoadFixture();
  ASSERT_TRUE(fixture.is_object());
  ASSERT_GE(fixture["cases"].size(), 8u);
  for (const Json& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::vector<CocoImage> images = ImagesOf(c);
    const std::vector<int> categories = c["category_ids"].get<std::vector<int>>();
    absl::StatusOr<CocoResult> result = EvaluateCoco(images, categories);
    ASSERT_TRUE(result.ok()) << result.status();
    const Json& expected = c["expected"];
    EXPECT_NEAR(result->map, expected["map"].get<double>(), kTolerance);
    EXPECT_NEAR(result->map50, expected["map50"].get<double>(), kTolerance);
    EXPECT_NEAR(result->map75, expected["map75"].get<double>(), kTolerance);
    ASSERT_EQ(result->per_category.size(), expected["per_category"].size());
    int with_gt = 0;
    for (const CocoCategoryResult& category : result->per_category) {
      const double ap = expected["per_category"][std::to_string(category.category_id)].get<double>();
      EXPECT_NEAR(category.ap, ap, kTolerance) << "category " << category.category_id;
      with_gt += ap > -1 ? 1 : 0;
    }
    EXPECT_EQ(result->categories_with_ground_truth, with_gt);
  }
}

CocoImage OneImage(std::vector<CocoGroundTruth> gt, std::vector<CocoPrediction> dt) {
  return CocoImage{std::move(gt), std::move(dt)};
}

TEST(CocoEval, PerfectPredictionsScoreOne) {
  const std::vector<CocoImage> images = {OneImage({{{10, 10, 20, 30}, 1}, {{50, 50, 10, 10}, 2}},
                                                  {{{10, 10, 20, 30}, 0.9, 1}, {{50, 50, 10, 10}, 0.8, 2}}),
                                         OneImage({{{0, 0, 5, 5}, 1}}, {{{0, 0, 5, 5}, 0.7, 1}})};
  const std::vector<int> categories = {1, 2};
  absl::StatusOr<CocoResult> r = EvaluateCoco(images, categories);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(r->map, 1.0);
  EXPECT_DOUBLE_EQ(r->map50, 1.0);
  EXPECT_DOUBLE_EQ(r->map75, 1.0);
  EXPECT_EQ(r->categories_with_ground_truth, 2);
}

TEST(CocoEval, MissingPredictionsAndCategoriesWithoutGroundTruth) {
  const std::vector<int> categories = {3, 1, 2, 1};  // unsorted, duplicated
  // Category 1 found, 2 has ground truth but no predictions, 3 has only predictions.
  const std::vector<CocoImage> images = {OneImage({{{0, 0, 10, 10}, 1}, {{20, 20, 10, 10}, 2}},
                                                  {{{0, 0, 10, 10}, 0.9, 1}, {{40, 40, 5, 5}, 0.9, 3}})};
  absl::StatusOr<CocoResult> r = EvaluateCoco(images, categories);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->per_category.size(), 3u);
  EXPECT_EQ(r->per_category[0].category_id, 1);
  EXPECT_DOUBLE_EQ(r->per_category[0].ap, 1.0);
  EXPECT_DOUBLE_EQ(r->per_category[1].ap, 0.0);
  EXPECT_DOUBLE_EQ(r->per_category[2].ap, -1.0);
  EXPECT_EQ(r->categories_with_ground_truth, 2);
  EXPECT_DOUBLE_EQ(r->map, 0.5);
  // Nothing with ground truth: -1 throughout.
  r = EvaluateCoco(std::vector<CocoImage>{OneImage({}, {{{0, 0, 1, 1}, 0.5, 1}})}, categories);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->map, -1);
  EXPECT_EQ(r->map50, -1);
  EXPECT_EQ(r->categories_with_ground_truth, 0);
  r = EvaluateCoco({}, categories);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->map, -1);
}

TEST(CocoEval, HalfTheObjectsFoundAtHalfIou) {
  // Two objects; one prediction with IoU exactly 0.5 on the first: AP@.5 interpolates to recall 0.5
  // (51 of 101 points at precision 1), and no match at 0.55 and above.
  const std::vector<CocoImage> images = {
      OneImage({{{0, 0, 10, 10}, 1}, {{50, 50, 10, 10}, 1}}, {{{0, 0, 10, 20}, 0.9, 1}})};
  const std::vector<int> categories = {1};
  absl::StatusOr<CocoResult> r = EvaluateCoco(images, categories);
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(r->map50, 51.0 / 101.0, 1e-12);
  EXPECT_NEAR(r->map, 51.0 / 101.0 / 10.0, 1e-12);
  EXPECT_EQ(r->map75, 0.0);
}

TEST(CocoEval, DetectionConversion) {
  const CocoPrediction p = ToCocoPrediction(Detection{1.5f, 2.0f, 11.5f, 7.0f, 0.25f, 3});
  EXPECT_EQ(p.box.x, 1.5);
  EXPECT_EQ(p.box.y, 2.0);
  EXPECT_EQ(p.box.w, 10.0);
  EXPECT_EQ(p.box.h, 5.0);
  EXPECT_EQ(p.score, 0.25);
  EXPECT_EQ(p.category_id, 3);
}

TEST(CocoEval, RefusesBadInput) {
  const std::vector<int> categories = {1};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto message = [&](std::vector<CocoImage> images) {
    absl::StatusOr<CocoResult> r = EvaluateCoco(images, categories);
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  EXPECT_THAT(message({OneImage({}, {}), OneImage({{{0, 0, -1, 5}, 1}}, {})}),
              HasSubstr("image 1 ground truth box 0 has a negative width or height"));
  EXPECT_THAT(message({OneImage({}, {{{0, nan, 1, 5}, 0.5, 1}})}),
              HasSubstr("image 0 prediction 0 has a NaN or infinite box coordinate"));
  EXPECT_THAT(message({OneImage({}, {{{0, 0, 1, 5}, 0.5, 1}, {{0, 0, 1, 5}, nan, 1}})}),
              HasSubstr("image 0 prediction 1 has a NaN or infinite score"));
  EXPECT_THAT(message({OneImage({{{0, 0, 1, 1}, 7}}, {})}),
              HasSubstr("image 0 ground truth box 0 has category 7, which is not among the 1 category ids"));
  // A prediction of an unknown category is left out, as pycocotools does.
  absl::StatusOr<CocoResult> r = EvaluateCoco(
      std::vector<CocoImage>{OneImage({{{0, 0, 1, 1}, 1}}, {{{0, 0, 1, 1}, 0.9, 1}, {{5, 5, 1, 1}, 1.0, 9}})},
      categories);
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(r->map, 1.0);
}

}  // namespace
}  // namespace deltaserve::vision
