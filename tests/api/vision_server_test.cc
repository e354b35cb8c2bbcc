// Vision.Detect and Vision.DetectStream end to end in process, on the shipped PADRe detector and
// synthetic images (tools/vision/synth_dataset.py, a CTest fixture): the answer equals the model's own
// post-processed output, PNG and raw pixels agree, 16 concurrent calls (batched together) equal their
// one-at-a-time answers, a stream answers in order, and every bad image or field gets INVALID_ARGUMENT
// naming it (or NOT_FOUND for an unknown model) without taking the server down.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <future>
#include <sstream>

#include "api/models_service.h"
#include "api/vision_service.h"
#include "deltaserve/v1/models.grpc.pb.h"
#include "deltaserve/v1/vision.grpc.pb.h"
#include "models/padre/postprocess.h"
#include "vision/image_codec.h"

namespace deltaserve::api {
namespace {

using ::testing::HasSubstr;

std::string Repo() { return DELTASERVE_SOURCE_DIR; }
std::string Images() { return std::getenv("DELTASERVE_VISION_IMAGES") ? std::getenv("DELTASERVE_VISION_IMAGES") : ""; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class VisionServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // No fatal assertions here: gtest reports tests after a fatal SetUpTestSuite failure as skipped,
    // which CTest counts as not failed. SetUp fails each test instead.
    auto model = models::padre::PadreDetector::Load(Repo() + "/models/padre-detector", {});
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return;
    engine::VisionBatcherOptions options;
    options.max_batch = 8;
    options.max_delay = absl::Milliseconds(20);  // wide enough that concurrent calls really share passes
    auto batcher = engine::VisionBatcher::Start(*std::move(model), options);
    EXPECT_TRUE(batcher.ok()) << batcher.status();
    if (!batcher.ok()) return;
    batcher_ = batcher->release();
    served_ = new ServedModel;
    served_->name = "padre";
    served_->vision = batcher_;
    registry_ = new ModelRegistry({served_});
    service_ = new VisionService(registry_);
    models_ = new ModelsService(registry_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_);
    builder.RegisterService(models_);
    server_ = builder.BuildAndStart().release();
    channel_ = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  void SetUp() override {
    ASSERT_NE(channel_, nullptr) << "the test server did not start (see above)";
    ASSERT_FALSE(Images().empty()) << "DELTASERVE_VISION_IMAGES is not set";
  }
  static void TearDownTestSuite() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    delete server_;
    if (batcher_) batcher_->Shutdown(absl::ZeroDuration());
    delete channel_;
    delete service_;
    delete models_;
    delete registry_;
    delete served_;
    delete batcher_;
  }
  static grpc::Status Detect(const v1::DetectRequest& req, v1::DetectResponse* resp) {
    auto stub = v1::Vision::NewStub(*channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub->Detect(&ctx, req, resp);
  }
  static std::string Png(int i) {
    char name[64];
    std::snprintf(name, sizeof(name), "/images/val_%06d.png", i);
    return ReadFile(Images() + name);
  }
  static inline engine::VisionBatcher* batcher_ = nullptr;
  static inline ServedModel* served_ = nullptr;
  static inline ModelRegistry* registry_ = nullptr;
  static inline VisionService* service_ = nullptr;
  static inline ModelsService* models_ = nullptr;
  static inline grpc::Server* server_ = nullptr;
  static inline std::shared_ptr<grpc::Channel>* channel_ = nullptr;
};

void ExpectSame(const v1::DetectResponse& a, const v1::DetectResponse& b, float tol) {
  ASSERT_EQ(a.detections_size(), b.detections_size());
  for (int i = 0; i < a.detections_size(); ++i) {
    EXPECT_EQ(a.detections(i).class_id(), b.detections(i).class_id()) << i;
    EXPECT_NEAR(a.detections(i).score(), b.detections(i).score(), tol) << i;
    EXPECT_NEAR(a.detections(i).x0(), b.detections(i).x0(), 100 * tol) << i;
    EXPECT_NEAR(a.detections(i).y1(), b.detections(i).y1(), 100 * tol) << i;
  }
}

TEST_F(VisionServerTest, DetectEqualsTheModelsOwnOutput) {
  const std::string png = Png(0);
  ASSERT_FALSE(png.empty()) << "fixture images missing";
  v1::DetectRequest req;
  req.set_encoded(png);
  req.set_request_id("img-0");
  v1::DetectResponse resp;
  ASSERT_TRUE(Detect(req, &resp).ok());
  EXPECT_EQ(resp.request_id(), "img-0");
  EXPECT_EQ(resp.image_width(), 128);
  ASSERT_GT(resp.detections_size(), 0);
  // The same image through the model directly.
  auto img = vision::DecodeImage(png);
  ASSERT_TRUE(img.ok());
  const models::padre::PadreDetector& model = batcher_->model();
  auto lb = model.Letterbox(img->pixels.data(), img->width, img->height);
  auto heads = model.Forward(lb->input.unsqueeze(0));
  ASSERT_TRUE(heads.ok());
  auto peaks = model.FindPeaks(*heads);
  ASSERT_TRUE(peaks.ok()) << peaks.status();
  auto dets = models::padre::Postprocess(model, *peaks, 0, *lb, models::padre::PostprocessOptions{});
  ASSERT_TRUE(dets.ok());
  ASSERT_EQ(static_cast<size_t>(resp.detections_size()), dets->size());
  for (size_t i = 0; i < dets->size(); ++i) {
    EXPECT_EQ(resp.detections(static_cast<int>(i)).class_id(), (*dets)[i].class_id);
    EXPECT_FLOAT_EQ(resp.detections(static_cast<int>(i)).score(), (*dets)[i].score);
    EXPECT_EQ(resp.detections(static_cast<int>(i)).label(), model.config().class_names[(*dets)[i].class_id]);
  }
  // Raw pixels give the same answer as the PNG.
  v1::DetectRequest raw;
  raw.mutable_raw()->set_rgb(std::string(img->pixels.begin(), img->pixels.end()));
  raw.mutable_raw()->set_width(img->width);
  raw.mutable_raw()->set_height(img->height);
  v1::DetectResponse raw_resp;
  ASSERT_TRUE(Detect(raw, &raw_resp).ok());
  ExpectSame(raw_resp, resp, 0);
  // The class filter and max_detections apply.
  req.add_class_ids(resp.detections(0).class_id());
  req.set_max_detections(1);
  v1::DetectResponse one;
  ASSERT_TRUE(Detect(req, &one).ok());
  ASSERT_EQ(one.detections_size(), 1);
  EXPECT_EQ(one.detections(0).class_id(), resp.detections(0).class_id());
}

TEST_F(VisionServerTest, ConcurrentCallsEqualOneAtATime) {
  std::vector<v1::DetectResponse> solo(16);
  for (int i = 0; i < 16; ++i) {
    v1::DetectRequest req;
    req.set_encoded(Png(i));
    ASSERT_TRUE(Detect(req, &solo[i]).ok());
  }
  std::vector<std::future<std::pair<grpc::Status, v1::DetectResponse>>> futures;
  for (int i = 0; i < 16; ++i) {
    futures.push_back(std::async(std::launch::async, [i] {
      v1::DetectRequest req;
      req.set_encoded(Png(i));
      v1::DetectResponse resp;
      grpc::Status s = Detect(req, &resp);
      return std::make_pair(s, resp);
    }));
  }
  int batched = 0;
  for (int i = 0; i < 16; ++i) {
    auto [status, resp] = futures[i].get();
    ASSERT_TRUE(status.ok()) << status.error_message();
    batched += resp.timing().batch_size() > 1;
    ExpectSame(resp, solo[i], 1e-4f);  // batched matmuls may round differently
  }
  EXPECT_GT(batched, 0) << "no call shared a forward pass";
}

TEST_F(VisionServerTest, StreamAnswersInOrder) {
  auto stub = v1::Vision::NewStub(*channel_);
  grpc::ClientContext ctx;
  auto stream = stub->DetectStream(&ctx);
  for (int i = 0; i < 6; ++i) {
    v1::DetectRequest req;
    req.set_encoded(Png(i));
    req.set_request_id("frame-" + std::to_string(i));
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  v1::DetectResponse resp;
  int n = 0;
  while (stream->Read(&resp)) {
    EXPECT_EQ(resp.request_id(), "frame-" + std::to_string(n));
    v1::DetectRequest req;
    req.set_encoded(Png(n));
    v1::DetectResponse unary;
    ASSERT_TRUE(Detect(req, &unary).ok());
    ExpectSame(resp, unary, 1e-4f);
    ++n;
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(n, 6);
}

TEST_F(VisionServerTest, BadImagesAndFieldsAreRefusedByName) {
  const std::string png = Png(1);
  struct Case {
    std::function<void(v1::DetectRequest&)> make;
    grpc::StatusCode code;
    std::string words;
  };
  const std::vector<Case> cases = {
      {[](v1::DetectRequest&) {}, grpc::StatusCode::INVALID_ARGUMENT, "image"},
      {[](v1::DetectRequest& r) { r.set_encoded(""); }, grpc::StatusCode::INVALID_ARGUMENT, "encoded"},
      {[](v1::DetectRequest& r) { r.set_encoded("GIF89a not really"); }, grpc::StatusCode::INVALID_ARGUMENT, "encoded"},
      {[&](v1::DetectRequest& r) { r.set_encoded(png.substr(0, png.size() / 2)); }, grpc::StatusCode::INVALID_ARGUMENT,
       "encoded"},
      {[&](v1::DetectRequest& r) {
         std::string bad = png;
         for (size_t i = 60; i < bad.size() && i < 90; ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
         r.set_encoded(bad);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "encoded"},
      {[](v1::DetectRequest& r) { r.mutable_raw()->set_width(0); r.mutable_raw()->set_height(4); },
       grpc::StatusCode::INVALID_ARGUMENT, "raw"},
      {[](v1::DetectRequest& r) {
         r.mutable_raw()->set_width(4);
         r.mutable_raw()->set_height(4);
         r.mutable_raw()->set_rgb(std::string(47, 'x'));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "48"},
      {[&](v1::DetectRequest& r) { r.set_encoded(png); r.set_score_threshold(2); },
       grpc::StatusCode::INVALID_ARGUMENT, "score_threshold"},
      {[&](v1::DetectRequest& r) { r.set_encoded(png); r.set_max_detections(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_detections"},
      {[&](v1::DetectRequest& r) { r.set_encoded(png); r.add_class_ids(9); }, grpc::StatusCode::INVALID_ARGUMENT,
       "class_ids[0]"},
      {[&](v1::DetectRequest& r) { r.set_encoded(png); r.set_request_id(std::string(200, 'r')); },
       grpc::StatusCode::INVALID_ARGUMENT, "request_id"},
      {[&](v1::DetectRequest& r) { r.set_encoded(png); r.set_model("nope"); }, grpc::StatusCode::NOT_FOUND, "nope"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::DetectRequest req;
    cases[i].make(req);
    v1::DetectResponse resp;
    const grpc::Status s = Detect(req, &resp);
    EXPECT_EQ(s.error_code(), cases[i].code) << "case " << i << ": " << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(cases[i].words)) << "case " << i;
  }
  // A decompression bomb: a valid PNG header claiming 50000 x 50000 pixels, refused before decoding.
  std::string bomb = png.substr(0, 33);
  const unsigned char dims[8] = {0, 0, 0xc3, 0x50, 0, 0, 0xc3, 0x50};
  bomb.replace(16, 8, reinterpret_cast<const char*>(dims), 8);
  v1::DetectRequest req;
  req.set_encoded(bomb);
  v1::DetectResponse resp;
  const grpc::Status s = Detect(req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  // The server still answers.
  v1::DetectRequest ok;
  ok.set_encoded(png);
  EXPECT_TRUE(Detect(ok, &resp).ok());
}

TEST_F(VisionServerTest, ModelsListsTheDetector) {
  auto stub = v1::Models::NewStub(*channel_);
  grpc::ClientContext ctx;
  v1::ListModelsResponse list;
  ASSERT_TRUE(stub->ListModels(&ctx, v1::ListModelsRequest(), &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  const v1::ModelInfo& m = list.models(0);
  EXPECT_EQ(m.kind(), v1::MODEL_KIND_VISION_DETECTION);
  EXPECT_EQ(m.vision().mixer(), "padre");
  EXPECT_EQ(m.vision().input_size(), 128);
  EXPECT_THAT(std::vector<std::string>(m.vision().class_names().begin(), m.vision().class_names().end()),
              ::testing::ElementsAre("circle", "square", "triangle", "star"));
}

}  // namespace
}  // namespace deltaserve::api
