// COCO bounding-box evaluation (mAP@[.5:.95], mAP@.5, mAP@.75) that reproduces pycocotools' COCOeval
// (iouType "bbox", area range "all", maxDets 100) number for number, for evaluating the PADRe detector.
#ifndef DELTASERVE_SERVER_VISION_COCO_EVAL_H_
#define DELTASERVE_SERVER_VISION_COCO_EVAL_H_

#include <array>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "vision/detection.h"

namespace deltaserve::vision {

// A box in COCO's format, as in annotation files and pycocotools: top-left corner (x, y), width w and
// height h, in pixels (doubles, so values read from COCO JSON are used exactly). w >= 0 and h >= 0.
struct CocoBox {
  double x = 0;
  double y = 0;
  double w = 0;
  double h = 0;
};

// From corners (x0, y0, x1, y1), the format of Detection: w = x1 - x0, h = y1 - y0.
CocoBox CocoBoxFromCorners(double x0, double y0, double x1, double y1);

struct CocoGroundTruth {
  CocoBox box;
  int category_id = 0;  // iscrowd is 0 for every box: crowd regions are not supported
};

struct CocoPrediction {
  CocoBox box;
  double score = 0;
  int category_id = 0;
};

// A detector output as a prediction: the box converted from corners, category_id = class_id.
CocoPrediction ToCocoPrediction(const Detection& detection);

// One image's ground truth and predictions. The images of a data set are a list; their order stands for
// pycocotools' sorted image ids (it decides the order of equal scores across images). Within an image,
// the order of the predictions decides the order of equal scores (pycocotools sorts them stably).
struct CocoImage {
  std::vector<CocoGroundTruth> ground_truth;
  std::vector<CocoPrediction> predictions;
};

struct CocoCategoryResult {
  int category_id = 0;
  double ap = -1;    // mean precision over the 10 IoU thresholds and 101 recall points; -1 without GT
  double ap50 = -1;  // at IoU 0.5
  double ap75 = -1;  // at IoU 0.75
};

struct CocoResult {
  double map = -1;    // pycocotools' stats[0]: AP @[IoU=0.50:0.95 | area=all | maxDets=100]
  double map50 = -1;  // stats[1]: AP @[IoU=0.50 | area=all | maxDets=100]
  double map75 = -1;  // stats[2]: AP @[IoU=0.75 | area=all | maxDets=100]
  int categories_with_ground_truth = 0;          // the categories the means run over
  std::vector<CocoCategoryResult> per_category;  // by category id, ascending
};

// Evaluates as pycocotools does with the default bbox parameters, reporting area range "all" and
// maxDets 100. `category_ids` are the data set's categories (the "categories" of a COCO file; duplicates
// are merged). As in pycocotools:
//  - per image and category, predictions are sorted by score (stable) and the first 100 kept; each is
//    matched greedily to the unmatched ground truth box of highest IoU >= t, for t = 0.50, 0.55, .., 0.95
//    (IoU as pycocotools' bbIou, in double);
//  - precision is interpolated at 101 recall points (0, 0.01, .., 1) over all images' predictions of a
//    category sorted by score (stable, images in order);
//  - a category without ground truth boxes has AP -1 and is left out of the means, with or without
//    predictions; a category with ground truth but no predictions has AP 0. If no category has ground
//    truth, the means are -1;
//  - ground truth boxes of area w * h above 1e10 (outside the "all" range) are ignored, as are
//    unmatched predictions of such area;
//  - predictions whose category is not in category_ids are left out.
// InvalidArgument (naming the image and box) for a NaN, infinite or negative-size box, a NaN or infinite
// score, or a ground truth box whose category is not in category_ids.
absl::StatusOr<CocoResult> EvaluateCoco(std::span<const CocoImage> images, std::span<const int> category_ids);

// The thresholds, bit for bit as pycocotools computes them with np.linspace.
std::array<double, 10> CocoIouThresholds();
std::array<double, 101> CocoRecallThresholds();

}  // namespace deltaserve::vision

#endif  // DELTASERVE_SERVER_VISION_COCO_EVAL_H_
