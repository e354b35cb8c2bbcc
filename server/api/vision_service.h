// deltaserve.v1.Vision over the vision batcher: Detect (one image) and DetectStream (frames answered in
// order). Decodes and validates images here; the batcher letterboxes, runs the detector and decodes boxes.
#ifndef DELTASERVE_SERVER_API_VISION_SERVICE_H_
#define DELTASERVE_SERVER_API_VISION_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>

#include "api/models_service.h"
#include "deltaserve/v1/vision.grpc.pb.h"
#include "vision/image_codec.h"

namespace deltaserve::api {

class VisionService final : public v1::Vision::CallbackService {
 public:
  // `gate` (may be null: every call admitted) is asked first for every image. `max_inflight_pixels` > 0
  // bounds the pixels of images decoded or being decoded and not yet answered (their memory), counted from
  // each file's header before decoding: beyond it, RESOURCE_EXHAUSTED (retry later). Requests arrive as
  // ParsedRequest (api/parsed_request.h): one that does not parse gets INVALID_ARGUMENT after the gate.
  VisionService(const ModelRegistry* registry, RequestObserver observer = nullptr,
                vision::DecodeLimits limits = {}, const CallGate* gate = nullptr,
                int64_t max_inflight_pixels = 0);

  grpc::ServerUnaryReactor* Detect(grpc::CallbackServerContext* context, const v1::DetectRequest* request,
                                   v1::DetectResponse* response) override;

  // Validates `request` (after the gate: `parse_error`, when not OK, is the answer), decodes its image and
  // hands it to its model's batcher; `done` gets the filled response or the error status, once, on the
  // batcher's thread (or here, at once, for a refusal).
  void Submit(const v1::DetectRequest& request, const grpc::Status& parse_error,
              grpc::CallbackServerContext* context,
              std::function<void(const grpc::Status&, v1::DetectResponse)> done) const;
  const RequestObserver& observer() const { return observer_; }

 private:
  // Detect for a request that did not parse (`parse_error` not OK) or did.
  grpc::ServerUnaryReactor* Detect(grpc::CallbackServerContext* context, const v1::DetectRequest& request,
                                   const grpc::Status& parse_error, v1::DetectResponse* response);

  // Reserves the pixels `request`'s image will hold against max_inflight_pixels_: how many (0 when no
  // budget applies), or RESOURCE_EXHAUSTED when they do not fit now. The caller gives them back.
  absl::StatusOr<int64_t> ReservePixels(const v1::DetectRequest& request) const;

  const ModelRegistry* registry_;
  RequestObserver observer_;
  vision::DecodeLimits limits_;
  const CallGate* gate_;
  int64_t max_inflight_pixels_;
  mutable std::atomic<int64_t> inflight_pixels_{0};
};

}  // namespace deltaserve::api

#endif  // DELTASERVE_SERVER_API_VISION_SERVICE_H_
