// Vision.Detect and Vision.DetectStream (see vision_service.h).
#include "api/vision_service.h"

#include <chrono>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "api/parsed_request.h"
#include "api/status_convert.h"

namespace deltaserve::api {
namespace {

constexpr size_t kMaxRequestIdBytes = 128;
constexpr float kDefaultScoreThreshold = 0.25f;
constexpr int32_t kDefaultMaxDetections = 100;

grpc::Status Invalid(const std::string& message) { return {grpc::StatusCode::INVALID_ARGUMENT, message}; }

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

absl::StatusOr<int64_t> VisionService::ReservePixels(const v1::DetectRequest& request) const {
  if (max_inflight_pixels_ <= 0) return 0;
  int64_t pixels = 0;
  if (request.image_case() == v1::DetectRequest::kEncoded) {
    // A header the probe cannot read is charged the most an image may hold: no way around the budget.
    absl::StatusOr<int64_t> declared = vision::DeclaredPixels(request.encoded());
    pixels = declared.ok() ? *declared : limits_.max_pixels;
  } else if (request.image_case() == v1::DetectRequest::kRaw && request.raw().width() > 0 &&
             request.raw().height() > 0) {
    pixels = int64_t{request.raw().width()} * request.raw().height();
  }
  // Sizes over the per-image limit are left to the decoder, which refuses them by name.
  if (pixels <= 0 || pixels > limits_.max_pixels) return 0;
  int64_t held = inflight_pixels_.load();
  do {
    if (held + pixels > max_inflight_pixels_)
      return absl::ResourceExhaustedError(
          absl::StrCat("images being decoded or detected hold ", held, " pixels; this one needs ", pixels,
                       " more, over --vision-max-inflight-pixels ", max_inflight_pixels_, "; retry later"));
  } while (!inflight_pixels_.compare_exchange_weak(held, held + pixels));
  return pixels;
}

void VisionService::Submit(const v1::DetectRequest& request, const grpc::Status& parse_error,
                           grpc::CallbackServerContext* context,
                           std::function<void(const grpc::Status&, v1::DetectResponse)> done) const {
  const auto received = std::chrono::steady_clock::now();
  if (grpc::Status admitted = AdmitCall(gate_, context, "Detect"); !admitted.ok()) return done(admitted, {});
  if (!parse_error.ok()) return done(parse_error, {});
  if (request.request_id().size() > kMaxRequestIdBytes)
    return done(Invalid(absl::StrCat("request_id: at most ", kMaxRequestIdBytes, " bytes, got ",
                                     request.request_id().size())),
                {});
  absl::StatusOr<ServedModel*> found =
      registry_->Find(request.model(), "model", ModelRegistry::Kind::kVision);
  if (!found.ok()) return done(ToGrpcStatus(found.status()), {});
  ServedModel* model = *found;
  if (!model->ready.load()) return done({grpc::StatusCode::UNAVAILABLE, "model is shutting down"}, {});
  // Memory first: the pixels this image will hold, reserved before decoding, given back when the call is
  // answered, whatever the outcome.
  absl::StatusOr<int64_t> reserved = ReservePixels(request);
  if (!reserved.ok()) return done(ToGrpcStatus(reserved.status()), {});
  if (*reserved > 0) {
    done = [this, pixels = *reserved, inner = std::move(done)](const grpc::Status& status,
                                                               v1::DetectResponse resp) {
      inflight_pixels_.fetch_sub(pixels);
      inner(status, std::move(resp));
    };
  }
  absl::StatusOr<vision::RgbImage> image;
  switch (request.image_case()) {
    case v1::DetectRequest::kEncoded:
      image = vision::DecodeImage(request.encoded(), limits_);
      if (!image.ok())
        image = absl::InvalidArgumentError(absl::StrCat("encoded: ", image.status().message()));
      break;
    case v1::DetectRequest::kRaw:
      image =
          vision::RawRgbImage(request.raw().rgb(), request.raw().width(), request.raw().height(), limits_);
      if (!image.ok()) image = absl::InvalidArgumentError(absl::StrCat("raw: ", image.status().message()));
      break;
    default:
      return done(Invalid("image: missing; set encoded (PNG or JPEG bytes) or raw (RGB pixels)"), {});
  }
  if (!image.ok()) return done(ToGrpcStatus(image.status()), {});
  const double decode_seconds = Since(received);
  engine::VisionRequest vr;
  vr.score_threshold = request.has_score_threshold() ? request.score_threshold() : kDefaultScoreThreshold;
  vr.max_detections = request.has_max_detections() ? request.max_detections() : kDefaultMaxDetections;
  vr.class_filter.assign(request.class_ids().begin(), request.class_ids().end());
  if (context && context->deadline() < std::chrono::system_clock::now() + std::chrono::hours(24 * 365))
    vr.deadline = absl::FromChrono(context->deadline());
  const int width = image->width, height = image->height;
  vr.image = *std::move(image);
  const std::vector<std::string>& names = model->vision->model().config().class_names;
  const std::string request_id = request.request_id();
  // The callback may outlive this call: it owns copies of what it needs (the done function included).
  auto shared_done =
      std::make_shared<std::function<void(const grpc::Status&, v1::DetectResponse)>>(std::move(done));
  vr.done = [shared_done, names, request_id, width, height, decode_seconds,
             received](absl::StatusOr<engine::VisionResult> r) {
    if (!r.ok()) return (*shared_done)(ToGrpcStatus(r.status()), {});
    v1::DetectResponse resp;
    resp.set_request_id(request_id);
    resp.set_image_width(width);
    resp.set_image_height(height);
    for (const engine::VisionDetection& d : r->detections) {
      v1::Detection* out = resp.add_detections();
      out->set_x0(d.x0);
      out->set_y0(d.y0);
      out->set_x1(d.x1);
      out->set_y1(d.y1);
      out->set_score(d.score);
      out->set_class_id(d.class_id);
      out->set_label(names.at(static_cast<size_t>(d.class_id)));
    }
    v1::DetectTiming* t = resp.mutable_timing();
    t->set_decode_seconds(decode_seconds);
    t->set_queue_seconds(r->queue_seconds);
    t->set_preprocess_seconds(r->preprocess_seconds);
    t->set_inference_seconds(r->inference_seconds);
    t->set_postprocess_seconds(r->postprocess_seconds);
    t->set_batch_size(static_cast<int32_t>(r->batch_size));
    t->set_total_seconds(Since(received));
    (*shared_done)(grpc::Status::OK, std::move(resp));
  };
  absl::Status submitted = model->vision->Submit(std::move(vr));
  if (!submitted.ok()) (*shared_done)(ToGrpcStatus(submitted), {});
}

grpc::ServerUnaryReactor* VisionService::Detect(grpc::CallbackServerContext* context,
                                                const v1::DetectRequest* request,
                                                v1::DetectResponse* response) {
  return Detect(context, *request, grpc::Status::OK, response);
}

grpc::ServerUnaryReactor* VisionService::Detect(grpc::CallbackServerContext* context,
                                                const v1::DetectRequest& request,
                                                const grpc::Status& parse_error,
                                                v1::DetectResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Submit(request, parse_error, context,
         [this, reactor, response](const grpc::Status& status, v1::DetectResponse resp) {
           if (status.ok()) *response = std::move(resp);
           if (observer_) observer_("Detect", status.error_code());
           reactor->Finish(status);
         });
  return reactor;
}

namespace {

// One frame at a time: read, detect, write, read the next; so responses keep the requests' order.
class DetectStreamReactor final
    : public grpc::ServerBidiReactor<ParsedRequest<v1::DetectRequest>, v1::DetectResponse> {
 public:
  DetectStreamReactor(const VisionService* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return End(grpc::Status::OK);  // the client finished sending
    service_->Submit(request_.message, request_.error, context_,
                     [this](const grpc::Status& status, v1::DetectResponse resp) {
                       if (!status.ok()) return End(status);
                       response_ = std::move(resp);
                       StartWrite(&response_);
                     });
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return End(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  void End(const grpc::Status& status) {
    if (service_->observer()) service_->observer()("DetectStream", status.error_code());
    Finish(status);
  }
  const VisionService* service_;
  grpc::CallbackServerContext* context_;
  ParsedRequest<v1::DetectRequest> request_;
  v1::DetectResponse response_;
};

}  // namespace

// The methods' indices in vision.proto's service (gRPC numbers them in declaration order).
enum VisionMethod { kDetectMethod = 0, kDetectStreamMethod = 1 };

VisionService::VisionService(const ModelRegistry* registry, RequestObserver observer,
                             vision::DecodeLimits limits, const CallGate* gate, int64_t max_inflight_pixels)
    : registry_(registry),
      observer_(std::move(observer)),
      limits_(limits),
      gate_(gate),
      max_inflight_pixels_(max_inflight_pixels) {
  MarkMethodCallback(
      kDetectMethod,
      new grpc::internal::CallbackUnaryHandler<ParsedRequest<v1::DetectRequest>, v1::DetectResponse>(
          [this](grpc::CallbackServerContext* context, const ParsedRequest<v1::DetectRequest>* request,
                 v1::DetectResponse* response) {
            return Detect(context, request->message, request->error, response);
          }));
  MarkMethodCallback(
      kDetectStreamMethod,
      new grpc::internal::CallbackBidiHandler<ParsedRequest<v1::DetectRequest>, v1::DetectResponse>(
          [this](grpc::CallbackServerContext* context) { return new DetectStreamReactor(this, context); }));
}

}  // namespace deltaserve::api
