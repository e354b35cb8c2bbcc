// The vision engine: a dynamic batcher in front of one detector. Requests queue; a worker thread takes
// up to max_batch of them (waiting at most max_delay after the first), runs one forward pass, decodes.
#ifndef DELTASERVE_SERVER_ENGINE_VISION_BATCHER_H_
#define DELTASERVE_SERVER_ENGINE_VISION_BATCHER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/engine_metrics.h"
#include "models/padre/model.h"
#include "runner/detector_graphs.h"
#include "vision/image.h"

namespace deltaserve::engine {

struct VisionBatcherOptions {
  int64_t max_batch = 8;                          // images per forward pass
  absl::Duration max_delay = absl::Milliseconds(2);  // how long the first image waits for company
  int64_t max_queue = 64;                         // waiting images beyond this: RESOURCE_EXHAUSTED
  float nms_iou = 0.5f;
  int intra_op_threads = 0;                       // 0: LibTorch's default
  LayerMetricsMode layer_metrics = LayerMetricsMode::kSampled;
  double layer_metrics_sample_rate = 0.05;
  // A model on CUDA replays its forward pass as one CUDA graph per batch bucket (1, 2, 4, ... max_batch),
  // captured at Start; passes timed for layer metrics run eagerly (their events cannot sit in a replay).
  bool cuda_graphs = true;
};

struct VisionDetection {
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // original image pixels
  float score = 0;
  int class_id = 0;
};

struct VisionResult {
  std::vector<VisionDetection> detections;  // best first, after NMS, filter and max_detections
  int64_t batch_size = 0;                   // images in the forward pass this one rode in
  double queue_seconds = 0, preprocess_seconds = 0, inference_seconds = 0, postprocess_seconds = 0;
};

struct VisionRequest {
  vision::RgbImage image;
  float score_threshold = 0.25f;
  int64_t max_detections = 100;
  std::vector<int> class_filter;  // empty: every class
  std::optional<absl::Time> deadline;
  // Called once, on the worker thread (must not block): the result, or DEADLINE_EXCEEDED / UNAVAILABLE /
  // INTERNAL.
  std::function<void(absl::StatusOr<VisionResult>)> done;
};

// Vision reports for metrics (server/metrics implements it with Prometheus).
class VisionMetrics {
 public:
  virtual ~VisionMetrics() = default;
  // One forward pass: its images and, when timed, seconds per model TimedSpan (empty otherwise).
  virtual void OnBatch(int64_t images, double inference_seconds, const std::vector<double>& layer_seconds) = 0;
  // One request answered: end-to-end seconds inside the engine and whether it succeeded.
  virtual void OnRequest(double seconds, bool ok) = 0;
};

class VisionBatcher {
 public:
  // Takes the detector; `metrics` (may be null) must outlive the batcher.
  static absl::StatusOr<std::unique_ptr<VisionBatcher>> Start(std::unique_ptr<models::padre::PadreDetector> model,
                                                              const VisionBatcherOptions& options,
                                                              VisionMetrics* metrics = nullptr);
  ~VisionBatcher();  // Shutdown(zero grace)
  VisionBatcher(const VisionBatcher&) = delete;
  VisionBatcher& operator=(const VisionBatcher&) = delete;

  // Validates (image shape, threshold in [0, 1], max_detections >= 1, class ids in range: InvalidArgument
  // naming the field) and queues; RESOURCE_EXHAUSTED when the queue is full; UNAVAILABLE once shutting down.
  absl::Status Submit(VisionRequest request);
  // Stops admitting, lets queued images finish for up to `grace`, then fails the rest with UNAVAILABLE.
  void Shutdown(absl::Duration grace);

  const models::padre::PadreDetector& model() const { return *model_; }
  bool uses_cuda_graphs() const { return graphs_ != nullptr; }
  const VisionBatcherOptions& options() const { return options_; }
  int64_t waiting() const;

 private:
  struct Pending;
  VisionBatcher(std::unique_ptr<models::padre::PadreDetector> model, const VisionBatcherOptions& options,
                VisionMetrics* metrics);
  void Loop();
  void RunBatch(std::vector<std::unique_ptr<Pending>>& batch);

  std::unique_ptr<models::padre::PadreDetector> model_;
  VisionBatcherOptions options_;
  VisionMetrics* metrics_;
  std::unique_ptr<models::LayerTimer> timer_;
  std::unique_ptr<runner::DetectorGraphs> graphs_;  // null: eager forward passes
  int64_t batches_ = 0;

  mutable std::mutex mu_;
  std::condition_variable wake_, drained_;
  std::deque<std::unique_ptr<Pending>> queue_;
  bool admitting_ = true, stop_ = false;
  int64_t in_flight_ = 0;
  std::thread thread_;
};

}  // namespace deltaserve::engine

#endif  // DELTASERVE_SERVER_ENGINE_VISION_BATCHER_H_
