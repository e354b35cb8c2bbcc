// The detector's post-processing for one image of a batch whose peaks were found (PadreDetector::FindPeaks):
// decoding, the class filter, class-wise NMS on the unclipped boxes, then clipping (docs/vision.md's order).
#ifndef DELTASERVE_SERVER_MODELS_PADRE_POSTPROCESS_H_
#define DELTASERVE_SERVER_MODELS_PADRE_POSTPROCESS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "models/padre/model.h"
#include "vision/detection.h"

namespace deltaserve::models::padre {

struct PostprocessOptions {
  float score_threshold = 0.25f;
  int max_detections = 100;
  float nms_iou = 0.5f;
  std::vector<int> class_filter;  // empty: every class
};

// Best first. InvalidArgument for options NMS refuses (iou outside [0, 1], max_detections < 0).
absl::StatusOr<std::vector<vision::Detection>> Postprocess(const PadreDetector& model, const Peaks& peaks,
                                                           int64_t b, const LetterboxedImage& image,
                                                           const PostprocessOptions& options);

}  // namespace deltaserve::models::padre

#endif  // DELTASERVE_SERVER_MODELS_PADRE_POSTPROCESS_H_
