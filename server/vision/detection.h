// One detected object: an axis-aligned box in image pixels, a confidence and a class. What the PADRe
// detector's decoder, NMS, the Vision.Detect reply and `deltaserve-cli detect --draw` pass around.
#ifndef DELTASERVE_SERVER_VISION_DETECTION_H_
#define DELTASERVE_SERVER_VISION_DETECTION_H_

namespace deltaserve::vision {

// Corners in continuous pixel coordinates of the image (pixel (i, j) spans [i, i + 1) x [j, j + 1)):
// (x0, y0) top-left, (x1, y1) bottom-right, x0 <= x1 and y0 <= y1 for a proper box. Width is x1 - x0.
struct Detection {
  float x0 = 0;
  float y0 = 0;
  float x1 = 0;
  float y1 = 0;
  float score = 0;   // confidence in [0, 1]
  int class_id = 0;  // index into the model's class_names
};

}  // namespace deltaserve::vision

#endif  // DELTASERVE_SERVER_VISION_DETECTION_H_
