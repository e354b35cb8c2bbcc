#include "vision/nms.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::vision {
namespace {

double Area(const Detection& d) {
  return std::max(0.0, double{d.x1} - d.x0) * std::max(0.0, double{d.y1} - d.y0);
}

}  // namespace

double BoxIou(const Detection& a, const Detection& b) {
  const double w = std::min<double>(a.x1, b.x1) - std::max<double>(a.x0, b.x0);
  const double h = std::min<double>(a.y1, b.y1) - std::max<double>(a.y0, b.y0);
  if (w <= 0 || h <= 0) return 0.0;
  const double intersection = w * h;
  const double union_area = Area(a) + Area(b) - intersection;
  return union_area > 0 ? intersection / union_area : 0.0;
}

absl::StatusOr<std::vector<int>> NmsIndices(std::span<const Detection> detections, float iou_threshold,
                                            int max_detections) {
  if (!(iou_threshold >= 0.0f && iou_threshold <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("NMS IoU threshold ", iou_threshold, " is not in [0, 1]"));
  }
  if (max_detections < 0) {
    return absl::InvalidArgumentError(absl::StrCat("NMS max_detections ", max_detections, " is negative"));
  }
  for (size_t i = 0; i < detections.size(); ++i) {
    const Detection& d = detections[i];
    if (!std::isfinite(d.x0) || !std::isfinite(d.y0) || !std::isfinite(d.x1) || !std::isfinite(d.y1) ||
        !std::isfinite(d.score)) {
      return absl::InvalidArgumentError(
          absl::StrCat("detection ", i, " has a NaN or infinite coordinate or score"));
    }
  }
  std::vector<int> order(detections.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return detections[a].score > detections[b].score; });

  std::vector<int> kept;
  absl::flat_hash_map<int, std::vector<int>> kept_by_class;
  for (const int i : order) {
    if (static_cast<int>(kept.size()) >= max_detections) break;
    std::vector<int>& same_class = kept_by_class[detections[i].class_id];
    bool suppressed = false;
    for (const int k : same_class) {
      if (BoxIou(detections[i], detections[k]) > iou_threshold) {
        suppressed = true;
        break;
      }
    }
    if (suppressed) continue;
    same_class.push_back(i);
    kept.push_back(i);
  }
  return kept;
}

absl::StatusOr<std::vector<Detection>> Nms(std::span<const Detection> detections, float iou_threshold,
                                           int max_detections) {
  absl::StatusOr<std::vector<int>> indices = NmsIndices(detections, iou_threshold, max_detections);
  if (!indices.ok()) return indices.status();
  std::vector<Detection> kept;
  kept.reserve(indices->size());
  for (const int i : *indices) kept.push_back(detections[i]);
  return kept;
}

}  // namespace deltaserve::vision
