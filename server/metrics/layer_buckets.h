// The bucket bounds of deltaserve_layer_duration_seconds, shared by the text and vision reporters: one
// Prometheus family needs one set of buckets. 2.5 us (a small CPU layer) to 10 s (a long prefill).
#ifndef DELTASERVE_SERVER_METRICS_LAYER_BUCKETS_H_
#define DELTASERVE_SERVER_METRICS_LAYER_BUCKETS_H_

#include <prometheus/histogram.h>

namespace deltaserve::metrics {

inline const prometheus::Histogram::BucketBoundaries& LayerDurationBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
      0.5,    1,    2.5,  10};
  return kBuckets;
}

}  // namespace deltaserve::metrics

#endif  // DELTASERVE_SERVER_METRICS_LAYER_BUCKETS_H_
