// deltaserve-detect-eval: runs a PADRe detector over a COCO-format image folder with the serving path's
// pre- and post-processing and prints COCO mAP@[.5:.95] / mAP@.5 (one JSON line); optionally writes the
// predictions in COCO results format (for pycocotools) and times the forward passes.
//   deltaserve-detect-eval --model DIR --coco FILE.json --images DIR [--predictions OUT.json]
//                          [--batch 32] [--threshold 0] [--threads N] [--device cpu|cuda]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "models/padre/postprocess.h"
#include "vision/coco_eval.h"
#include "vision/image_codec.h"

namespace {

using Json = nlohmann::json;
namespace padre = deltaserve::models::padre;
namespace vision = deltaserve::vision;

int Fail(const std::string& message) {
  std::fprintf(stderr, "deltaserve-detect-eval: %s\n", message.c_str());
  return 1;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {
      {"--batch", "32"}, {"--threshold", "0"}, {"--threads", "0"}, {"--device", "cpu"}};
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h" || i + 1 >= argc) {
      std::fprintf(stderr, "usage: deltaserve-detect-eval --model DIR --coco FILE.json --images DIR "
                           "[--predictions OUT.json] [--batch 32] [--threshold 0] [--threads N] [--device cpu|cuda]\n");
      return f == "--help" || f == "-h" ? 0 : 2;
    }
    flags[f] = argv[++i];
  }
  for (const char* required : {"--model", "--coco", "--images"})
    if (!flags.count(required)) return Fail(std::string(required) + " is required (see --help)");
  if (std::stoi(flags["--threads"]) > 0) at::set_num_threads(std::stoi(flags["--threads"]));
  if (flags["--device"] != "cpu" && flags["--device"] != "cuda")
    return Fail("--device: '" + flags["--device"] + "' is not cpu or cuda");
  padre::PadreOptions options;
  if (flags["--device"] == "cuda") {
    if (!at::hasCUDA()) return Fail("--device cuda: this build or machine has no CUDA device");
    options.device = c10::Device(c10::kCUDA);
  }
  auto model = padre::PadreDetector::Load(flags["--model"], options);
  if (!model.ok()) return Fail(std::string(model.status().message()));
  std::string text;
  if (!ReadFile(flags["--coco"], &text)) return Fail("cannot read " + flags["--coco"]);
  const Json coco = Json::parse(text, nullptr, false);
  if (coco.is_discarded()) return Fail(flags["--coco"] + ": not JSON");
  std::vector<int> category_ids;
  for (const Json& c : coco["categories"]) category_ids.push_back(c["id"].get<int>());
  std::map<int64_t, size_t> index_of;
  std::vector<vision::CocoImage> images(coco["images"].size());
  for (size_t i = 0; i < coco["images"].size(); ++i) index_of[coco["images"][i]["id"].get<int64_t>()] = i;
  for (const Json& a : coco["annotations"]) {
    vision::CocoGroundTruth gt;
    gt.box = {a["bbox"][0].get<double>(), a["bbox"][1].get<double>(), a["bbox"][2].get<double>(),
              a["bbox"][3].get<double>()};
    gt.category_id = a["category_id"].get<int>();
    images[index_of.at(a["image_id"].get<int64_t>())].ground_truth.push_back(gt);
  }
  padre::PostprocessOptions po;
  po.score_threshold = std::stof(flags["--threshold"]);
  const size_t batch = static_cast<size_t>(std::max(1, std::stoi(flags["--batch"])));
  Json predictions = Json::array();
  double forward_seconds = 0;
  at::InferenceMode guard;
  for (size_t start = 0; start < images.size(); start += batch) {
    std::vector<padre::LetterboxedImage> inputs;
    std::vector<at::Tensor> tensors;
    for (size_t i = start; i < std::min(images.size(), start + batch); ++i) {
      std::string bytes;
      const std::string path = flags["--images"] + "/" + coco["images"][i]["file_name"].get<std::string>();
      if (!ReadFile(path, &bytes)) return Fail("cannot read " + path);
      auto img = vision::DecodeImage(bytes);
      if (!img.ok()) return Fail(path + ": " + std::string(img.status().message()));
      auto lb = (*model)->Letterbox(img->pixels.data(), img->width, img->height);
      if (!lb.ok()) return Fail(std::string(lb.status().message()));
      tensors.push_back(lb->input);
      inputs.push_back(*std::move(lb));
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto heads = (*model)->Forward(at::stack(tensors));
    forward_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!heads.ok()) return Fail(std::string(heads.status().message()));
    auto peaks = (*model)->FindPeaks(*heads);
    if (!peaks.ok()) return Fail(std::string(peaks.status().message()));
    for (size_t k = 0; k < inputs.size(); ++k) {
      auto dets = padre::Postprocess(**model, *peaks, static_cast<int64_t>(k), inputs[k], po);
      if (!dets.ok()) return Fail(std::string(dets.status().message()));
      vision::CocoImage& image = images[start + k];
      for (const vision::Detection& d : *dets) {
        vision::CocoPrediction p = vision::ToCocoPrediction(d);
        p.category_id = d.class_id + 1;  // COCO category ids are class ids + 1 (tools/vision/synth_dataset.py)
        image.predictions.push_back(p);
        predictions.push_back({{"image_id", coco["images"][start + k]["id"]},
                               {"category_id", p.category_id},
                               {"bbox", {p.box.x, p.box.y, p.box.w, p.box.h}},
                               {"score", p.score}});
      }
    }
  }
  auto result = vision::EvaluateCoco(images, category_ids);
  if (!result.ok()) return Fail(std::string(result.status().message()));
  if (flags.count("--predictions")) {
    std::ofstream out(flags["--predictions"]);
    out << predictions.dump();
    if (!out) return Fail("cannot write " + flags["--predictions"]);
  }
  std::printf("{\"model\": \"%s\", \"images\": %zu, \"map\": %.6f, \"map50\": %.6f, \"map75\": %.6f, "
              "\"forward_images_per_s\": %.1f}\n",
              flags["--model"].c_str(), images.size(), result->map, result->map50, result->map75,
              static_cast<double>(images.size()) / forward_seconds);
  return 0;
}
