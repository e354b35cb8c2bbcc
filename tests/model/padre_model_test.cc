// The C++ PADRe detector against the PyTorch definition (tools/vision/padre_detector.py) on the golden
// fixtures tools/vision/make_padre_golden.py writes fresh each run: for the padre, softmax and fp16-weight
// models and images of four sizes, the letterboxed input, the three head outputs and the decoded, NMS'd
// detections all agree; bad configs and checkpoints are refused naming the field or tensor.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "models/padre/model.h"
#include "models/padre/postprocess.h"
#include "runner/detector_graphs.h"
#include "vision/nms.h"

namespace deltaserve::models::padre {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string GoldenDir() {
  const char* dir = std::getenv("DELTASERVE_PADRE_GOLDEN");
  return dir ? dir : "";
}

// The shipped detector for the CUDA tests: DELTASERVE_PADRE_MODEL, or models/padre-detector under the working
// directory (scripts/gpu_check.sh runs from the repository's root).
std::string ShippedDetectorDir() {
  const char* dir = std::getenv("DELTASERVE_PADRE_MODEL");
  return dir ? dir : "models/padre-detector";
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A .npy file (version 1 or 2, little-endian float32 or uint8, C order) as a tensor.
at::Tensor ReadNpy(const std::string& path) {
  const std::string bytes = ReadText(path);
  EXPECT_GE(bytes.size(), 10u) << path;
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  }
  const std::string header = bytes.substr(offset, header_len);
  const bool f32 = header.find("'<f4'") != std::string::npos;
  const bool u8 = header.find("'|u1'") != std::string::npos;
  EXPECT_TRUE(f32 || u8) << path << ": " << header;
  EXPECT_EQ(header.find("'fortran_order': True"), std::string::npos) << path;
  std::vector<int64_t> shape;
  const size_t open = header.find('(', header.find("'shape'")), close = header.find(')', open);
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  std::string item;
  while (std::getline(dims, item, ','))
    if (item.find_first_of("0123456789") != std::string::npos) shape.push_back(std::stoll(item));
  const char* data = bytes.data() + offset + header_len;
  return at::from_blob(const_cast<char*>(data), shape, f32 ? at::kFloat : at::kByte).clone();
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm().clamp_min(1e-12)).item<double>();
}

class PadreGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(PadreGolden, EveryStageMatchesPyTorch) {
  const std::string root = GoldenDir();
  ASSERT_FALSE(root.empty()) << "DELTASERVE_PADRE_GOLDEN is not set";
  const Json manifest = Json::parse(ReadText(root + "/manifest.json"));
  const std::string model_dir = root + "/" + GetParam();
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(model_dir, PadreOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  for (const Json& img : manifest["images"]) {
    const std::string name = img["name"];
    SCOPED_TRACE(GetParam() + "/" + name);
    const at::Tensor pixels = ReadNpy(root + "/" + img["npy"].get<std::string>()).contiguous();
    const int h = static_cast<int>(pixels.size(0)), w = static_cast<int>(pixels.size(1));
    absl::StatusOr<LetterboxedImage> lb = (*model)->Letterbox(pixels.data_ptr<uint8_t>(), w, h);
    ASSERT_TRUE(lb.ok()) << lb.status();
    const std::string dir = model_dir + "/" + name;
    const at::Tensor input = ReadNpy(dir + "/input.npy");
    EXPECT_LT((lb->input.unsqueeze(0) - input).abs().max().item<double>(), 1e-5);
    absl::StatusOr<HeadOutputs> heads = (*model)->Forward(input);
    ASSERT_TRUE(heads.ok()) << heads.status();
    EXPECT_LT(RelErr(heads->heatmap_logits, ReadNpy(dir + "/heatmap_logits.npy")), 1e-5);
    EXPECT_LT(RelErr(heads->size, ReadNpy(dir + "/size.npy")), 1e-5);
    EXPECT_LT(RelErr(heads->offset, ReadNpy(dir + "/offset.npy")), 1e-5);

    const Json expected = Json::parse(ReadText(dir + "/detections.json"));
    absl::StatusOr<Peaks> peaks = (*model)->FindPeaks(*heads);
    ASSERT_TRUE(peaks.ok()) << peaks.status();
    for (const auto& [key, threshold] : {std::pair{"threshold_0", 0.0f}, {"threshold_0.5", 0.5f}}) {
      std::vector<Candidate> candidates = (*model)->Decode(*peaks, 0, *lb, threshold);
      std::vector<vision::Detection> dets;
      for (const Candidate& c : candidates) dets.push_back({c.x0, c.y0, c.x1, c.y1, c.score, c.class_id});
      absl::StatusOr<std::vector<vision::Detection>> kept = vision::Nms(dets, 0.5f, 100);
      ASSERT_TRUE(kept.ok()) << kept.status();
      for (vision::Detection& d : *kept) {
        Candidate c{d.x0, d.y0, d.x1, d.y1, d.score, d.class_id};
        ClipToImage(c, *lb);
        d = {c.x0, c.y0, c.x1, c.y1, c.score, c.class_id};
      }
      const Json& want = expected[key];
      ASSERT_EQ(kept->size(), want.size()) << key;
      ASSERT_GT(want.size(), 0u) << key;  // a fixture without detections would prove nothing
      for (size_t i = 0; i < kept->size(); ++i) {
        const vision::Detection& d = (*kept)[i];
        const Json& e = want[i];
        EXPECT_EQ(d.class_id, e["class_id"].get<int>()) << key << " #" << i;
        EXPECT_NEAR(d.score, e["score"].get<double>(), 1e-5) << key << " #" << i;
        const float box[4] = {d.x0, d.y0, d.x1, d.y1};
        for (int k = 0; k < 4; ++k) EXPECT_NEAR(box[k], e["box"][k].get<double>(), 2e-3) << key << " #" << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PadreGolden, ::testing::Values("padre", "softmax", "padre_fp16"));

TEST(PadreModel, TimedSpansNameEveryBlock) {
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(GoldenDir() + "/padre", PadreOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<TimedSpan> spans = (*model)->TimedSpans();
  ASSERT_EQ(spans.size(), 2u + 2u * 2u);
  EXPECT_EQ(spans.front().kind, "embedding");
  EXPECT_EQ(spans[1].kind, "padre");
  EXPECT_EQ(spans[2].kind, "mlp");
  EXPECT_EQ(spans.back().kind, "head");
  // The timer sees every span.
  LayerTimer timer(c10::Device(c10::kCPU), spans.size());
  ASSERT_TRUE((*model)->Forward(at::zeros({1, 3, 128, 128}), &timer).ok());
  absl::StatusOr<std::vector<double>> seconds = timer.Collect();
  ASSERT_TRUE(seconds.ok());
  for (double s : *seconds) EXPECT_GE(s, 0);
}

// A batch's peaks, found at once, equal each entry's found alone; a few bright squares make real peaks.
TEST(PadreModel, PeaksOfABatchEqualEachImagesAlone) {
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(GoldenDir() + "/padre", PadreOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  at::manual_seed(17);
  const int64_t s = (*model)->config().image_size;
  const at::Tensor input = at::randn({3, 3, s, s});
  absl::StatusOr<HeadOutputs> heads = (*model)->Forward(input);
  ASSERT_TRUE(heads.ok()) << heads.status();
  absl::StatusOr<Peaks> all = (*model)->FindPeaks(*heads, 20);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->rows.sizes(), (std::vector<int64_t>{3, 20, 6}));
  LetterboxedImage image;
  image.scale = 0.5;
  for (int64_t b = 0; b < 3; ++b) {
    HeadOutputs one{heads->heatmap_logits.narrow(0, b, 1), heads->size.narrow(0, b, 1), heads->offset.narrow(0, b, 1)};
    absl::StatusOr<Peaks> alone = (*model)->FindPeaks(one, 20);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_TRUE(at::equal(all->rows[b], alone->rows[0])) << b;
    // Scores descend, and each row's box is the size and offset maps at its cell.
    const int64_t g = (*model)->config().grid();
    const auto r = all->rows.accessor<double, 3>()[b];
    for (int64_t i = 0; i < 20; ++i) {
      if (i > 0) {
        EXPECT_GE(r[i - 1][0], r[i][0]);
      }
      const int64_t cell = static_cast<int64_t>(r[i][1]) % (g * g), gy = cell / g, gx = cell % g;
      EXPECT_EQ(r[i][2], heads->offset[b][0][gy][gx].item<double>());
      EXPECT_EQ(r[i][5], heads->size[b][1][gy][gx].item<double>());
    }
    const std::vector<Candidate> a = (*model)->Decode(*all, b, image, 0.0f), c = (*model)->Decode(*alone, 0, image, 0.0f);
    ASSERT_EQ(a.size(), c.size());
    ASSERT_GT(a.size(), 0u);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].x0, c[i].x0);
  }
}

TEST(PadreModel, BadHeadsAndTopKAreRefusedNamingThem) {
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(GoldenDir() + "/padre", PadreOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<HeadOutputs> heads = (*model)->Forward(at::zeros({1, 3, 128, 128}));
  ASSERT_TRUE(heads.ok()) << heads.status();
  HeadOutputs wrong = *heads;
  wrong.size = wrong.size.narrow(1, 0, 1);
  absl::StatusOr<Peaks> p = (*model)->FindPeaks(wrong);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("heads"));
  p = (*model)->FindPeaks(HeadOutputs{});
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("heads"));
  p = (*model)->FindPeaks(*heads, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("top_k"));
  // An entry outside the batch decodes to nothing rather than reading past the rows.
  p = (*model)->FindPeaks(*heads);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE((*model)->Decode(*p, 1, LetterboxedImage{}, 0.0f).empty());
}

// The shipped detector on the GPU (letterbox on the device, the fused mixer, peaks found there) gives the
// CPU's detections.
TEST(PadreModelCuda, TheGpuPathGivesTheCpusDetections) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = ShippedDetectorDir();
  PadreOptions gpu_options;
  gpu_options.device = c10::Device(c10::kCUDA);
  absl::StatusOr<std::unique_ptr<PadreDetector>> cpu = PadreDetector::Load(dir, PadreOptions{});
  absl::StatusOr<std::unique_ptr<PadreDetector>> gpu = PadreDetector::Load(dir, gpu_options);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  // Two images of other sizes than the input's: grey noise with bright and dark rectangles.
  at::manual_seed(5);
  std::vector<at::Tensor> pixels;
  for (const auto& [w, h] : {std::pair{300, 200}, {97, 151}}) {
    at::Tensor img = at::randint(90, 140, {h, w, 3}, at::kByte);
    img.slice(0, h / 4, h / 2).slice(1, w / 5, w / 2).fill_(240);
    img.slice(0, h / 2, 3 * h / 4).slice(1, w / 2, 4 * w / 5).fill_(20);
    pixels.push_back(img.contiguous());
  }
  std::vector<LetterboxedImage> cpu_lb, gpu_lb;
  std::vector<at::Tensor> cpu_in, gpu_in;
  for (const at::Tensor& img : pixels) {
    const int h = static_cast<int>(img.size(0)), w = static_cast<int>(img.size(1));
    absl::StatusOr<LetterboxedImage> a = (*cpu)->Letterbox(img.data_ptr<uint8_t>(), w, h);
    absl::StatusOr<LetterboxedImage> b = (*gpu)->Letterbox(img.data_ptr<uint8_t>(), w, h);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_TRUE(b->input.is_cuda());
    EXPECT_LT((a->input - b->input.cpu()).abs().max().item<double>(), 1e-5);
    cpu_in.push_back(a->input);
    gpu_in.push_back(b->input);
    cpu_lb.push_back(*std::move(a));
    gpu_lb.push_back(*std::move(b));
  }
  absl::StatusOr<HeadOutputs> ch = (*cpu)->Forward(at::stack(cpu_in));
  absl::StatusOr<HeadOutputs> gh = (*gpu)->Forward(at::stack(gpu_in));
  ASSERT_TRUE(ch.ok() && gh.ok());
  EXPECT_LT(RelErr(gh->heatmap_logits.cpu(), ch->heatmap_logits), 1e-4);
  absl::StatusOr<Peaks> cp = (*cpu)->FindPeaks(*ch);
  absl::StatusOr<Peaks> gp = (*gpu)->FindPeaks(*gh);
  ASSERT_TRUE(cp.ok() && gp.ok());
  EXPECT_FALSE(gp->rows.is_cuda());
  PostprocessOptions po;
  po.score_threshold = 0.05f;
  size_t compared = 0;
  for (int64_t b = 0; b < 2; ++b) {
    absl::StatusOr<std::vector<vision::Detection>> c = Postprocess(**cpu, *cp, b, cpu_lb[b], po);
    absl::StatusOr<std::vector<vision::Detection>> g = Postprocess(**gpu, *gp, b, gpu_lb[b], po);
    ASSERT_TRUE(c.ok() && g.ok());
    ASSERT_EQ(c->size(), g->size()) << b;
    for (size_t i = 0; i < c->size(); ++i, ++compared) {
      EXPECT_EQ((*c)[i].class_id, (*g)[i].class_id) << b << " #" << i;
      EXPECT_NEAR((*c)[i].score, (*g)[i].score, 1e-4) << b << " #" << i;
      EXPECT_NEAR((*c)[i].x0, (*g)[i].x0, 0.05) << b << " #" << i;
      EXPECT_NEAR((*c)[i].y1, (*g)[i].y1, 0.05) << b << " #" << i;
    }
  }
  EXPECT_GT(compared, 0u) << "no detections to compare: the images prove nothing";
}

TEST(PadreModel, DetectorGraphsRefuseAModelOffTheGpuAndEmptyBuckets) {
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(GoldenDir() + "/padre", PadreOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<runner::DetectorGraphs>> g = runner::DetectorGraphs::Capture(**model, {1, 2});
  ASSERT_FALSE(g.ok());
  EXPECT_TRUE(g.status().code() == absl::StatusCode::kFailedPrecondition ||
              g.status().code() == absl::StatusCode::kUnimplemented)
      << g.status();
  g = runner::DetectorGraphs::Capture(**model, {});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  g = runner::DetectorGraphs::Capture(**model, {0, 4});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
}

// Replayed graphs equal the eager forward pass for batches that fill a bucket and batches padded to one,
// in any order (each replay reads its bucket's buffer afresh, a batch of 3 after one of 4 in the same
// bucket included), through both entry points for every batch (stacked, and separate images as the vision
// batcher passes them), and refuse batches no bucket holds. Each result is checked before the next replay:
// replays return views of static buffers that the next one overwrites.
TEST(PadreModelCuda, GraphReplayEqualsTheEagerForward) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  PadreOptions options;
  options.device = c10::Device(c10::kCUDA);
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(ShippedDetectorDir(), options);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<runner::DetectorGraphs>> graphs = runner::DetectorGraphs::Capture(**model, {4, 1, 2});
  ASSERT_TRUE(graphs.ok()) << graphs.status();
  EXPECT_EQ((*graphs)->buckets(), (std::vector<int64_t>{1, 2, 4}));
  const int64_t s = (*model)->config().image_size;
  at::manual_seed(3);
  for (const int64_t batch : {3, 1, 4, 2, 3, 4, 1}) {
    const at::Tensor x = at::randn({batch, 3, s, s}).to(options.device);
    absl::StatusOr<HeadOutputs> eager = (*model)->Forward(x);
    ASSERT_TRUE(eager.ok()) << eager.status();
    for (const bool as_images : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "batch " << batch << (as_images ? ", separate images" : ", stacked"));
      absl::StatusOr<HeadOutputs> replayed =
          as_images ? (*graphs)->Run(std::vector<at::Tensor>(x.unbind(0))) : (*graphs)->Run(x);
      ASSERT_TRUE(replayed.ok()) << replayed.status();
      ASSERT_EQ(replayed->heatmap_logits.sizes(), eager->heatmap_logits.sizes());
      EXPECT_LT(RelErr(replayed->heatmap_logits.cpu(), eager->heatmap_logits.cpu()), 1e-5);
      EXPECT_LT(RelErr(replayed->size.cpu(), eager->size.cpu()), 1e-5);
      EXPECT_LT(RelErr(replayed->offset.cpu(), eager->offset.cpu()), 1e-5);
    }
  }
  EXPECT_EQ((*graphs)->Run(at::zeros({5, 3, s, s}, at::TensorOptions().device(options.device))).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*graphs)->Run(at::zeros({2, 3, s, s})).status().code(), absl::StatusCode::kInvalidArgument);  // CPU
  const at::Tensor image = at::zeros({3, s, s}, at::TensorOptions().device(options.device));
  EXPECT_EQ((*graphs)->Run(std::vector<at::Tensor>(5, image)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*graphs)->Run(std::vector<at::Tensor>{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*graphs)->Run(std::vector<at::Tensor>{image, image.narrow(1, 0, s / 2)}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PadreModel, BadConfigsNameTheField) {
  for (const auto& [json, field] :
       {std::pair{R"({"class_names": ["a"], "mixer": "mamba"})", "mixer"},
        {R"({"class_names": ["a"], "image_size": 100, "patch_size": 8})", "image_size"},
        {R"({"class_names": ["a"], "padre_kernel_size": 4})", "padre_kernel_size"},
        {R"({"class_names": []})", "class_names"},
        {R"({"class_names": ["a"], "hidden_size": 30, "num_heads": 4})", "num_heads"},
        {R"({"class_names": ["a"], "num_classes": 3})", "num_classes"},
        {R"({"class_names": ["a"], "pixel_std": [1, 0, 1]})", "pixel_std"},
        {R"([1, 2])", "JSON object"}}) {
    absl::StatusOr<PadreConfig> c = ParsePadreConfig(json);
    ASSERT_FALSE(c.ok()) << json;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(field)) << json;
  }
}

TEST(PadreModel, ACheckpointMissingATensorNamesIt) {
  // The softmax weights under a padre config: every PADRe tensor is missing, the qkv ones unexpected.
  const std::string dir = ::testing::TempDir() + "/padre_mismatch";
  ASSERT_EQ(std::system(("mkdir -p " + dir + " && cp " + GoldenDir() + "/softmax/model.safetensors " + dir +
                         " && cp " + GoldenDir() + "/padre/config.json " + dir).c_str()),
            0);
  absl::StatusOr<std::unique_ptr<PadreDetector>> model = PadreDetector::Load(dir, PadreOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("blocks.0.mixer.proj.0.weight"));
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("blocks.0.mixer.qkv.weight"));
}

}  // namespace
}  // namespace deltaserve::models::padre
