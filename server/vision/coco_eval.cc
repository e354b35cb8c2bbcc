// Compiled with -ffp-contract=off (server/vision/CMakeLists.txt): every product and sum is rounded as
// numpy and pycocotools' C code round them, so matching decisions at IoU == threshold agree.
#include "vision/coco_eval.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace deltaserve::vision {
namespace {

constexpr int kNumIou = 10;
constexpr int kNumRecall = 101;
constexpr size_t kMaxDets = 100;
constexpr double kAreaMax = 1e5 * 1e5;  // the "all" area range is [0 ** 2, 1e5 ** 2]
constexpr int kIou50 = 0;               // index of 0.5 in the IoU thresholds
constexpr int kIou75 = 5;               // index of 0.75

// np.linspace(start, stop, num): i * ((stop - start) / (num - 1)) + start, the last one exactly stop.
template <size_t N>
std::array<double, N> Linspace(double start, double stop) {
  std::array<double, N> out{};
  const double step = (stop - start) / static_cast<double>(N - 1);
  for (size_t i = 0; i < N; ++i) out[i] = static_cast<double>(i) * step + start;
  out[N - 1] = stop;
  return out;
}

// pycocotools' bbIou (maskApi.c) for one pair, iscrowd = 0.
double BbIou(const CocoBox& d, const CocoBox& g) {
  const double da = d.w * d.h, ga = g.w * g.h;
  const double w = std::fmin(d.w + d.x, g.w + g.x) - std::fmax(d.x, g.x);
  if (w <= 0) return 0;
  const double h = std::fmin(d.h + d.y, g.h + g.y) - std::fmax(d.y, g.y);
  if (h <= 0) return 0;
  const double i = w * h;
  const double u = da + ga - i;
  return i / u;
}

bool OutsideAreaRange(const CocoBox& b) {
  const double area = b.w * b.h;
  return area < 0 || area > kAreaMax;
}

absl::Status CheckBox(const CocoBox& b, size_t image, absl::string_view kind, size_t index) {
  if (!std::isfinite(b.x) || !std::isfinite(b.y) || !std::isfinite(b.w) || !std::isfinite(b.h)) {
    return absl::InvalidArgumentError(
        absl::StrCat("image ", image, " ", kind, " ", index, " has a NaN or infinite box coordinate"));
  }
  if (b.w < 0 || b.h < 0) {
    return absl::InvalidArgumentError(absl::StrCat("image ", image, " ", kind, " ", index,
                                                   " has a negative width or height (", b.w, "x", b.h, ")"));
  }
  return absl::OkStatus();
}

// evaluateImg's output for one image and category, as far as accumulate uses it.
struct ImageEval {
  std::vector<double> scores;                      // predictions kept, highest score first
  std::vector<std::array<bool, kNumIou>> matched;  // per prediction, per IoU threshold
  std::vector<std::array<bool, kNumIou>> ignored;
  int64_t gt_not_ignored = 0;
};

ImageEval EvaluateImage(const std::vector<const CocoGroundTruth*>& gt_in,
                        const std::vector<const CocoPrediction*>& dt_in,
                        const std::array<double, kNumIou>& iou_thresholds) {
  // Ground truth: not-ignored first (stable), as np.argsort(kind='mergesort') on the ignore flags.
  std::vector<const CocoGroundTruth*> gt = gt_in;
  std::stable_sort(gt.begin(), gt.end(), [](const CocoGroundTruth* a, const CocoGroundTruth* b) {
    return !OutsideAreaRange(a->box) && OutsideAreaRange(b->box);
  });
  std::vector<bool> gt_ignore(gt.size());
  ImageEval out;
  for (size_t g = 0; g < gt.size(); ++g) {
    gt_ignore[g] = OutsideAreaRange(gt[g]->box);
    if (!gt_ignore[g]) ++out.gt_not_ignored;
  }
  // Predictions: highest score first (stable), the first 100.
  std::vector<const CocoPrediction*> dt = dt_in;
  std::stable_sort(dt.begin(), dt.end(),
                   [](const CocoPrediction* a, const CocoPrediction* b) { return a->score > b->score; });
  if (dt.size() > kMaxDets) dt.resize(kMaxDets);

  const size_t num_gt = gt.size(), num_dt = dt.size();
  std::vector<double> ious(num_dt * num_gt);
  for (size_t d = 0; d < num_dt; ++d) {
    for (size_t g = 0; g < num_gt; ++g) ious[d * num_gt + g] = BbIou(dt[d]->box, gt[g]->box);
  }
  out.scores.resize(num_dt);
  out.matched.assign(num_dt, {});
  out.ignored.assign(num_dt, {});
  for (size_t d = 0; d < num_dt; ++d) out.scores[d] = dt[d]->score;

  std::vector<bool> gt_matched(num_gt);
  for (int t = 0; t < kNumIou; ++t) {
    std::fill(gt_matched.begin(), gt_matched.end(), false);
    for (size_t d = 0; d < num_dt; ++d) {
      double best = std::min(iou_thresholds[t], 1 - 1e-10);
      int64_t m = -1;
      for (size_t g = 0; g < num_gt; ++g) {
        if (gt_matched[g]) continue;  // no crowd boxes
        if (m > -1 && !gt_ignore[m] && gt_ignore[g]) break;
        const double iou = ious[d * num_gt + g];
        if (iou < best) continue;
        best = iou;
        m = static_cast<int64_t>(g);
      }
      if (m == -1) {
        out.ignored[d][t] = OutsideAreaRange(dt[d]->box);  // unmatched and outside the area range
        continue;
      }
      out.ignored[d][t] = gt_ignore[m];
      out.matched[d][t] = true;
      gt_matched[m] = true;
    }
  }
  return out;
}

}  // namespace

CocoBox CocoBoxFromCorners(double x0, double y0, double x1, double y1) {
  return CocoBox{x0, y0, x1 - x0, y1 - y0};
}

CocoPrediction ToCocoPrediction(const Detection& detection) {
  return CocoPrediction{CocoBoxFromCorners(detection.x0, detection.y0, detection.x1, detection.y1),
                        detection.score, detection.class_id};
}

std::array<double, 10> CocoIouThresholds() { return Linspace<10>(0.5, 0.95); }
std::array<double, 101> CocoRecallThresholds() { return Linspace<101>(0.0, 1.0); }

absl::StatusOr<CocoResult> EvaluateCoco(std::span<const CocoImage> images,
                                        std::span<const int> category_ids) {
  std::vector<int> categories(category_ids.begin(), category_ids.end());
  std::sort(categories.begin(), categories.end());
  categories.erase(std::unique(categories.begin(), categories.end()), categories.end());
  absl::flat_hash_map<int, size_t> category_index;
  for (size_t k = 0; k < categories.size(); ++k) category_index[categories[k]] = k;

  // Validate, and group by (category, image) in input order (pycocotools' _gts / _dts).
  const size_t num_images = images.size(), num_categories = categories.size();
  std::vector<std::vector<const CocoGroundTruth*>> gts(num_categories * num_images);
  std::vector<std::vector<const CocoPrediction*>> dts(num_categories * num_images);
  for (size_t i = 0; i < num_images; ++i) {
    for (size_t j = 0; j < images[i].ground_truth.size(); ++j) {
      const CocoGroundTruth& g = images[i].ground_truth[j];
      if (absl::Status s = CheckBox(g.box, i, "ground truth box", j); !s.ok()) return s;
      const auto it = category_index.find(g.category_id);
      if (it == category_index.end()) {
        return absl::InvalidArgumentError(absl::StrCat("image ", i, " ground truth box ", j, " has category ",
                                                       g.category_id, ", which is not among the ",
                                                       num_categories, " category ids"));
      }
      gts[it->second * num_images + i].push_back(&g);
    }
    for (size_t j = 0; j < images[i].predictions.size(); ++j) {
      const CocoPrediction& d = images[i].predictions[j];
      if (absl::Status s = CheckBox(d.box, i, "prediction", j); !s.ok()) return s;
      if (!std::isfinite(d.score)) {
        return absl::InvalidArgumentError(
            absl::StrCat("image ", i, " prediction ", j, " has a NaN or infinite score"));
      }
      const auto it = category_index.find(d.category_id);
      if (it == category_index.end()) continue;  // pycocotools filters by the data set's categories
      dts[it->second * num_images + i].push_back(&d);
    }
  }

  const std::array<double, kNumIou> iou_thresholds = CocoIouThresholds();
  const std::array<double, kNumRecall> recall_thresholds = CocoRecallThresholds();
  const double eps = std::numeric_limits<double>::epsilon();  // np.spacing(1)

  CocoResult result;
  double sum_all = 0, sum_50 = 0, sum_75 = 0;
  for (size_t k = 0; k < num_categories; ++k) {
    CocoCategoryResult& category = result.per_category.emplace_back();
    category.category_id = categories[k];
    // accumulate(): every image with ground truth or predictions of this category, in order.
    std::vector<double> scores;
    std::vector<std::array<bool, kNumIou>> matched, ignored;
    int64_t npig = 0;
    for (size_t i = 0; i < num_images; ++i) {
      const auto& gt = gts[k * num_images + i];
      const auto& dt = dts[k * num_images + i];
      if (gt.empty() && dt.empty()) continue;
      ImageEval e = EvaluateImage(gt, dt, iou_thresholds);
      scores.insert(scores.end(), e.scores.begin(), e.scores.end());
      matched.insert(matched.end(), e.matched.begin(), e.matched.end());
      ignored.insert(ignored.end(), e.ignored.begin(), e.ignored.end());
      npig += e.gt_not_ignored;
    }
    if (npig == 0) continue;  // precision stays -1: left out of the means
    std::vector<size_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });

    const size_t nd = order.size();
    std::vector<double> rc(nd), pr(nd);
    std::array<double, kNumIou> ap_per_iou{};
    for (int t = 0; t < kNumIou; ++t) {
      double tp = 0, fp = 0;
      for (size_t n = 0; n < nd; ++n) {
        const size_t d = order[n];
        if (!ignored[d][t]) {
          if (matched[d][t]) {
            tp += 1;
          } else {
            fp += 1;
          }
        }
        rc[n] = tp / static_cast<double>(npig);
        pr[n] = tp / (fp + tp + eps);
      }
      for (size_t n = nd; n-- > 1;) {
        if (pr[n] > pr[n - 1]) pr[n - 1] = pr[n];
      }
      double sum = 0;
      for (int r = 0; r < kNumRecall; ++r) {
        // np.searchsorted(rc, recThrs, side='left'); past the end the precision stays 0.
        const size_t n = std::lower_bound(rc.begin(), rc.end(), recall_thresholds[r]) - rc.begin();
        if (n >= nd) break;
        sum += pr[n];
      }
      ap_per_iou[t] = sum;
    }
    double sum_t = 0;
    for (const double s : ap_per_iou) sum_t += s;
    category.ap = sum_t / (kNumIou * kNumRecall);
    category.ap50 = ap_per_iou[kIou50] / kNumRecall;
    category.ap75 = ap_per_iou[kIou75] / kNumRecall;
    sum_all += sum_t;
    sum_50 += ap_per_iou[kIou50];
    sum_75 += ap_per_iou[kIou75];
    ++result.categories_with_ground_truth;
  }
  if (result.categories_with_ground_truth > 0) {
    const double n = result.categories_with_ground_truth;
    result.map = sum_all / (n * kNumIou * kNumRecall);
    result.map50 = sum_50 / (n * kNumRecall);
    result.map75 = sum_75 / (n * kNumRecall);
  }
  return result;
}

}  // namespace deltaserve::vision
