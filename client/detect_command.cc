// detect: sends an image file to Vision.Detect, prints the detections (table or JSON), and with --draw
// writes a copy of the image with the boxes and labels drawn on it.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "client/commands.h"
#include "client/flags.h"
#include "deltaserve/v1/vision.grpc.pb.h"
#include "vision/draw.h"
#include "vision/image_codec.h"

namespace deltaserve::client {
namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return !in.bad();
}

// A distinct, readable colour per class.
vision::Rgb ClassColour(int class_id) {
  static const vision::Rgb kPalette[] = {{230, 25, 75},  {60, 180, 75},  {0, 130, 200}, {245, 130, 48},
                                         {145, 30, 180}, {70, 240, 240}, {240, 50, 230}, {128, 128, 0}};
  return kPalette[static_cast<size_t>(class_id) % (sizeof(kPalette) / sizeof(kPalette[0]))];
}

}  // namespace

int RunDetect(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "deltaserve-cli detect: give exactly one IMAGE (PNG or JPEG)\n");
    return 2;
  }
  std::string bytes;
  if (!ReadFile(args[0], &bytes)) {
    std::fprintf(stderr, "deltaserve-cli detect: cannot read %s\n", args[0].c_str());
    return 2;
  }
  v1::DetectRequest req;
  req.set_model(absl::GetFlag(FLAGS_model));
  req.set_encoded(bytes);
  if (absl::GetFlag(FLAGS_score_threshold) >= 0) req.set_score_threshold(absl::GetFlag(FLAGS_score_threshold));
  if (absl::GetFlag(FLAGS_max_detections) > 0) req.set_max_detections(absl::GetFlag(FLAGS_max_detections));
  auto stub = v1::Vision::NewStub(ServerChannel());
  grpc::ClientContext ctx;
  SetTimeout(ctx, absl::GetFlag(FLAGS_timeout) > 0 ? absl::GetFlag(FLAGS_timeout) : 30);
  v1::DetectResponse resp;
  const grpc::Status s = stub->Detect(&ctx, req, &resp);
  if (!s.ok()) return ReportFailure("detect", s);
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("[");
    for (int i = 0; i < resp.detections_size(); ++i) {
      const v1::Detection& d = resp.detections(i);
      std::printf("%s{\"label\": \"%s\", \"class_id\": %d, \"score\": %.4f, \"box\": [%.1f, %.1f, %.1f, %.1f]}",
                  i ? ", " : "", d.label().c_str(), d.class_id(), d.score(), d.x0(), d.y0(), d.x1(), d.y1());
    }
    std::printf("]\n");
  } else {
    std::printf("%-12s %6s %8s %8s %8s %8s\n", "LABEL", "SCORE", "X0", "Y0", "X1", "Y1");
    for (const v1::Detection& d : resp.detections())
      std::printf("%-12s %6.3f %8.1f %8.1f %8.1f %8.1f\n", d.label().c_str(), d.score(), d.x0(), d.y0(), d.x1(),
                  d.y1());
  }
  std::fprintf(stderr, "[%d detections in a %dx%d image; %.1f ms on the server, batch of %d]\n",
               resp.detections_size(), resp.image_width(), resp.image_height(),
               resp.timing().total_seconds() * 1e3, resp.timing().batch_size());
  const std::string draw = absl::GetFlag(FLAGS_draw);
  if (draw.empty()) return 0;
  absl::StatusOr<vision::RgbImage> image = vision::DecodeImage(bytes);
  if (!image.ok()) {
    std::fprintf(stderr, "deltaserve-cli detect: --draw: %s\n", std::string(image.status().message()).c_str());
    return 1;
  }
  for (const v1::Detection& d : resp.detections()) {
    const vision::Rgb colour = ClassColour(d.class_id());
    vision::DrawBox(*image, d.x0(), d.y0(), d.x1(), d.y1(), colour, 2);
    const std::string label = absl::StrFormat("%s %.0f%%", d.label(), d.score() * 100);
    const vision::LabelSize size = vision::MeasureLabel(label);
    const int x = static_cast<int>(d.x0()), y = std::max(0, static_cast<int>(d.y0()) - size.height - 2);
    vision::FillRect(*image, x, y, x + size.width + 2, y + size.height + 2, colour);
    vision::DrawLabel(*image, x + 1, y + 1, label, {255, 255, 255});
  }
  absl::StatusOr<std::string> png = vision::EncodePng(*image);
  std::ofstream out(draw, std::ios::binary);
  if (!png.ok() || !(out << *png)) {
    std::fprintf(stderr, "deltaserve-cli detect: cannot write %s\n", draw.c_str());
    return 1;
  }
  std::fprintf(stderr, "[drawn: %s]\n", draw.c_str());
  return 0;
}

}  // namespace deltaserve::client
