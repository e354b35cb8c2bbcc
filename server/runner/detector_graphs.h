// CUDA graphs of the detector's forward pass, one per batch-size bucket over a static input buffer: a
// batch is copied into its bucket's buffer (zero images pad it) and the graph replays the whole network.
#ifndef DELTASERVE_SERVER_RUNNER_DETECTOR_GRAPHS_H_
#define DELTASERVE_SERVER_RUNNER_DETECTOR_GRAPHS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "models/padre/model.h"

namespace deltaserve::runner {

class DetectorGraphs {
 public:
  // Captures one graph per entry of `buckets` (deduplicated, ascending, each >= 1). The model must be on
  // CUDA and outlive the graphs. FAILED_PRECONDITION for a model elsewhere, UNIMPLEMENTED without CUDA,
  // INTERNAL when a capture fails.
  static absl::StatusOr<std::unique_ptr<DetectorGraphs>> Capture(const models::padre::PadreDetector& model,
                                                                 std::vector<int64_t> buckets);
  ~DetectorGraphs();

  int64_t max_batch() const { return buckets_.empty() ? 0 : buckets_.back(); }
  const std::vector<int64_t>& buckets() const { return buckets_; }

  // `input` [B, 3, S, S] float32 on the model's device, 1 <= B <= max_batch(): copies it into the smallest
  // bucket that holds it and replays. The outputs are views of the graph's [B, ...] rows, valid until the
  // next Run. Images never mix in the network, so padding rows change nothing in the real ones.
  absl::StatusOr<models::padre::HeadOutputs> Run(const at::Tensor& input);
  // The same for B separate [3, S, S] images, stacked straight into the bucket's buffer (one copy, where
  // stacking first and then running would make two).
  absl::StatusOr<models::padre::HeadOutputs> Run(const std::vector<at::Tensor>& images);

 private:
  struct Graph;
  DetectorGraphs() = default;
  // The graph of the smallest bucket that holds n rows of `image_sizes` ([3, S, S]) on `device`, or
  // INVALID_ARGUMENT naming what does not match.
  absl::StatusOr<Graph*> GraphFor(int64_t n, at::IntArrayRef image_sizes, const c10::Device& device);
  // Zeroes the rows past n, replays, and returns the first n rows of the outputs.
  absl::StatusOr<models::padre::HeadOutputs> Replay(Graph& g, int64_t n);
  std::vector<int64_t> buckets_;
  std::vector<std::unique_ptr<Graph>> graphs_;  // parallel to buckets_
};

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_DETECTOR_GRAPHS_H_
