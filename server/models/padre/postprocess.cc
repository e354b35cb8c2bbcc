// Decode, filter, NMS, clip (see postprocess.h).
#include "models/padre/postprocess.h"

#include <algorithm>

#include "vision/nms.h"

namespace deltaserve::models::padre {

absl::StatusOr<std::vector<vision::Detection>> Postprocess(const PadreDetector& model, const Peaks& peaks,
                                                           int64_t b, const LetterboxedImage& image,
                                                           const PostprocessOptions& options) {
  std::vector<vision::Detection> dets;
  for (const Candidate& c : model.Decode(peaks, b, image, options.score_threshold)) {
    if (!options.class_filter.empty() &&
        std::find(options.class_filter.begin(), options.class_filter.end(), c.class_id) == options.class_filter.end())
      continue;
    dets.push_back({c.x0, c.y0, c.x1, c.y1, c.score, c.class_id});
  }
  absl::StatusOr<std::vector<vision::Detection>> kept = vision::Nms(dets, options.nms_iou, options.max_detections);
  if (!kept.ok()) return kept.status();
  for (vision::Detection& d : *kept) {
    Candidate c{d.x0, d.y0, d.x1, d.y1, d.score, d.class_id};
    ClipToImage(c, image);
    d = {c.x0, c.y0, c.x1, c.y1, c.score, c.class_id};
  }
  return kept;
}

}  // namespace deltaserve::models::padre
