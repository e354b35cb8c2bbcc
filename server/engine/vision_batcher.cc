// Dynamic batching for the detector (see vision_batcher.h): the Triton idea of a preferred batch and a
// bounded queue delay, with one worker thread that owns the model.
#include "engine/vision_batcher.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "models/padre/postprocess.h"
#include "runner/decode_graphs.h"

namespace deltaserve::engine {

struct VisionBatcher::Pending {
  VisionRequest request;
  std::chrono::steady_clock::time_point submitted;
};

namespace {
double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

absl::StatusOr<std::unique_ptr<VisionBatcher>> VisionBatcher::Start(
    std::unique_ptr<models::padre::PadreDetector> model, const VisionBatcherOptions& options,
    VisionMetrics* metrics) {
  if (!model) return absl::InvalidArgumentError("vision: no model");
  if (options.max_batch < 1 || options.max_queue < 1)
    return absl::InvalidArgumentError(absl::StrCat("vision: max_batch and max_queue must be >= 1, got ",
                                                   options.max_batch, " and ", options.max_queue));
  if (options.max_delay < absl::ZeroDuration())
    return absl::InvalidArgumentError("vision: max_delay must be >= 0");
  if (!(options.nms_iou > 0 && options.nms_iou <= 1))
    return absl::InvalidArgumentError(absl::StrCat("vision: nms_iou must be in (0, 1], got ", options.nms_iou));
  std::unique_ptr<VisionBatcher> b(new VisionBatcher(std::move(model), options, metrics));
  if (options.cuda_graphs && b->model_->options().device.is_cuda()) {
    absl::StatusOr<std::unique_ptr<runner::DetectorGraphs>> graphs =
        runner::DetectorGraphs::Capture(*b->model_, runner::DefaultGraphBuckets(options.max_batch));
    if (!graphs.ok()) return graphs.status();
    b->graphs_ = *std::move(graphs);
  }
  b->thread_ = std::thread([p = b.get()] { p->Loop(); });
  return b;
}

VisionBatcher::VisionBatcher(std::unique_ptr<models::padre::PadreDetector> model,
                             const VisionBatcherOptions& options, VisionMetrics* metrics)
    : model_(std::move(model)), options_(options), metrics_(metrics) {
  if (metrics_ && options_.layer_metrics != LayerMetricsMode::kOff)
    timer_ = std::make_unique<models::LayerTimer>(model_->options().device, model_->TimedSpans().size());
}

VisionBatcher::~VisionBatcher() { Shutdown(absl::ZeroDuration()); }

int64_t VisionBatcher::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queue_.size());
}

absl::Status VisionBatcher::Submit(VisionRequest request) {
  const vision::RgbImage& img = request.image;
  if (img.width < 1 || img.height < 1 ||
      img.pixels.size() != static_cast<size_t>(img.width) * static_cast<size_t>(img.height) * 3) {
    return absl::InvalidArgumentError(absl::StrCat("image: ", img.width, " x ", img.height, " with ",
                                                   img.pixels.size(), " bytes is not an RGB image"));
  }
  if (!(request.score_threshold >= 0 && request.score_threshold <= 1))
    return absl::InvalidArgumentError(
        absl::StrCat("score_threshold: must be in [0, 1], got ", request.score_threshold));
  if (request.max_detections < 1 || request.max_detections > 1000)
    return absl::InvalidArgumentError(
        absl::StrCat("max_detections: must be in [1, 1000], got ", request.max_detections));
  const int64_t classes = model_->config().num_classes();
  for (size_t i = 0; i < request.class_filter.size(); ++i) {
    if (request.class_filter[i] < 0 || request.class_filter[i] >= classes)
      return absl::InvalidArgumentError(absl::StrCat("class_ids[", i, "]: ", request.class_filter[i],
                                                     " is outside [0, ", classes, ")"));
  }
  if (!request.done) return absl::InvalidArgumentError("done: a callback is required");
  auto p = std::make_unique<Pending>();
  p->request = std::move(request);
  p->submitted = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  if (!admitting_) return absl::UnavailableError("vision: shutting down, not admitting requests");
  if (static_cast<int64_t>(queue_.size()) >= options_.max_queue)
    return absl::ResourceExhaustedError(absl::StrCat("queue full: ", queue_.size(), " images waiting (max_queue ",
                                                     options_.max_queue, "); retry later"));
  queue_.push_back(std::move(p));
  wake_.notify_one();
  return absl::OkStatus();
}

void VisionBatcher::Shutdown(absl::Duration grace) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) return;
    admitting_ = false;
    drained_.wait_for(lock, absl::ToChronoNanoseconds(grace), [this] { return queue_.empty() && in_flight_ == 0; });
    stop_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void VisionBatcher::Loop() {
  if (options_.intra_op_threads > 0) at::set_num_threads(options_.intra_op_threads);
  while (true) {
    std::vector<std::unique_ptr<Pending>> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (stop_) {
        for (auto& p : queue_) batch.push_back(std::move(p));
        queue_.clear();
        lock.unlock();
        for (auto& p : batch) p->request.done(absl::UnavailableError("vision: server shutting down"));
        drained_.notify_all();
        return;
      }
      // The first image waits at most max_delay for others to fill the batch.
      const auto until = queue_.front()->submitted + absl::ToChronoNanoseconds(options_.max_delay);
      wake_.wait_until(lock, until, [this] {
        return stop_ || static_cast<int64_t>(queue_.size()) >= options_.max_batch;
      });
      while (!queue_.empty() && static_cast<int64_t>(batch.size()) < options_.max_batch) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      in_flight_ = static_cast<int64_t>(batch.size());
    }
    RunBatch(batch);
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_ = 0;
    if (queue_.empty()) drained_.notify_all();
  }
}

void VisionBatcher::RunBatch(std::vector<std::unique_ptr<Pending>>& batch) {
  const auto t0 = std::chrono::steady_clock::now();
  const absl::Time wall = absl::Now();
  std::vector<Pending*> live;
  for (auto& p : batch) {
    if (p->request.deadline && wall > *p->request.deadline) {
      p->request.done(absl::DeadlineExceededError("deadline exceeded while queued"));
      if (metrics_) metrics_->OnRequest(Seconds(p->submitted, t0), false);
    } else {
      live.push_back(p.get());
    }
  }
  if (live.empty()) return;
  auto fail_all = [&](const absl::Status& s) {
    for (Pending* p : live) {
      p->request.done(s);
      if (metrics_) metrics_->OnRequest(Seconds(p->submitted, std::chrono::steady_clock::now()), false);
    }
  };
  std::vector<models::padre::LetterboxedImage> inputs;
  std::vector<at::Tensor> tensors;
  for (Pending* p : live) {
    const vision::RgbImage& img = p->request.image;
    absl::StatusOr<models::padre::LetterboxedImage> lb = model_->Letterbox(img.pixels.data(), img.width, img.height);
    if (!lb.ok()) return fail_all(lb.status());
    tensors.push_back(lb->input);
    inputs.push_back(*std::move(lb));
  }
  const auto t1 = std::chrono::steady_clock::now();
  const bool timed = timer_ && IsTimedPass(options_.layer_metrics, options_.layer_metrics_sample_rate, batches_++);
  absl::StatusOr<models::padre::HeadOutputs> heads = [&]() -> absl::StatusOr<models::padre::HeadOutputs> {
    try {
      if (graphs_ && !timed) return graphs_->Run(tensors);
      return model_->Forward(at::stack(tensors), timed ? timer_.get() : nullptr);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("vision: ", e.what_without_backtrace()));
    }
  }();
  if (!heads.ok()) return fail_all(heads.status());
  std::vector<double> layer_seconds;
  if (timed) {
    absl::StatusOr<std::vector<double>> s = timer_->Collect();
    if (s.ok()) layer_seconds = *std::move(s);
  }
  const auto t2 = std::chrono::steady_clock::now();
  if (metrics_) metrics_->OnBatch(static_cast<int64_t>(live.size()), Seconds(t1, t2), layer_seconds);
  // The whole batch's peaks on the model's device, one copy back; each image's share of it is its own.
  const absl::StatusOr<models::padre::Peaks> peaks = model_->FindPeaks(*heads);
  if (!peaks.ok()) return fail_all(peaks.status());
  const double peaks_seconds = Seconds(t2, std::chrono::steady_clock::now()) / static_cast<double>(live.size());
  for (size_t i = 0; i < live.size(); ++i) {
    const VisionRequest& r = live[i]->request;
    const auto d0 = std::chrono::steady_clock::now();
    models::padre::PostprocessOptions po;
    po.score_threshold = r.score_threshold;
    po.max_detections = static_cast<int>(r.max_detections);
    po.nms_iou = options_.nms_iou;
    po.class_filter = r.class_filter;
    absl::StatusOr<std::vector<vision::Detection>> kept =
        models::padre::Postprocess(*model_, *peaks, static_cast<int64_t>(i), inputs[i], po);
    if (!kept.ok()) {
      live[i]->request.done(kept.status());
      if (metrics_) metrics_->OnRequest(Seconds(live[i]->submitted, std::chrono::steady_clock::now()), false);
      continue;
    }
    VisionResult out;
    for (const vision::Detection& d : *kept) out.detections.push_back({d.x0, d.y0, d.x1, d.y1, d.score, d.class_id});
    out.batch_size = static_cast<int64_t>(live.size());
    out.queue_seconds = Seconds(live[i]->submitted, t0);
    out.preprocess_seconds = Seconds(t0, t1) / static_cast<double>(live.size());
    out.inference_seconds = Seconds(t1, t2);
    out.postprocess_seconds = peaks_seconds + Seconds(d0, std::chrono::steady_clock::now());
    if (metrics_) metrics_->OnRequest(Seconds(live[i]->submitted, std::chrono::steady_clock::now()), true);
    live[i]->request.done(std::move(out));
  }
}

}  // namespace deltaserve::engine
