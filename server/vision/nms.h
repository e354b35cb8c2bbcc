// Class-wise greedy non-maximum suppression of detections, and the box IoU it uses: the last step of
// the PADRe detector's decoding (docs/vision.md).
#ifndef DELTASERVE_SERVER_VISION_NMS_H_
#define DELTASERVE_SERVER_VISION_NMS_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "vision/detection.h"

namespace deltaserve::vision {

// Intersection over union of two boxes (x0, y0, x1, y1), computed in double. A box with x1 <= x0 or
// y1 <= y0 has zero area; the IoU is 0 when the union is empty.
double BoxIou(const Detection& a, const Detection& b);

// Greedy NMS per class: detections are visited by score, highest first (equal scores: lower input
// index first, a stable order); one is kept unless a kept detection of the same class overlaps it with
// IoU > iou_threshold (IoU == threshold is kept, as torchvision.ops.batched_nms). Stops after
// max_detections are kept. Returns the kept detections' input indices in that visiting order.
// InvalidArgument if iou_threshold is not in [0, 1], max_detections < 0, or a detection has a NaN or
// infinite coordinate or score (the message names its index).
absl::StatusOr<std::vector<int>> NmsIndices(std::span<const Detection> detections, float iou_threshold,
                                            int max_detections);

// NmsIndices, returning the kept detections themselves (highest score first).
absl::StatusOr<std::vector<Detection>> Nms(std::span<const Detection> detections, float iou_threshold,
                                           int max_detections);

}  // namespace deltaserve::vision

#endif  // DELTASERVE_SERVER_VISION_NMS_H_
