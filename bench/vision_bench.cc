// Detector speed: PADRe vs softmax attention at input sizes giving 256, 1024 and 4096 tokens (--sizes:
// 8-pixel patches, MODELS_DIR/{padre,softmax}-SIZE from bench/make_vision_bench_models.py), batch 1 and 8
// (--batches), forward pass only (the pre- and post-processing do not depend on the mixer); median of
// repeated runs after a warm-up. Prints a table with the softmax/PADRe time ratio and JSON lines.
// --padre-composition also times PADRe with its mixer as the ATen composition (on CUDA: without the fused
// kernel), the fused kernel's baseline in the same run; --cuda-graphs also times PADRe replayed as one CUDA
// graph per batch (runner/detector_graphs.h, as the vision batcher serves it on a GPU). --profile runs one
// more forward of every measured case under LibTorch's profiler and prints where its GPU time went (a
// "vision_profile" JSON line each: busy time, gaps, launches, the top kernels).
//   bench_vision MODELS_DIR [--device cpu|cuda] [--repeats N] [--threads N] [--sizes 128,256,512]
//                [--batches 1,8] [--padre-composition] [--cuda-graphs] [--profile]   (bench/vision.sh)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernel_profile.h"
#include "models/padre/model.h"
#include "runner/detector_graphs.h"

namespace padre = deltaserve::models::padre;

std::vector<int> ParseInts(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    out.push_back(static_cast<int>(std::strtol(p, &end, 10)));
    p = *end == ',' ? end + 1 : end;
  }
  return out;
}

int main(int argc, char** argv) {
  const char* usage =
      "usage: bench_vision MODELS_DIR [--device cpu|cuda] [--repeats N] [--threads N] [--sizes 128,256,512] "
      "[--batches 1,8] [--padre-composition] [--cuda-graphs] [--profile]\n";
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::fprintf(stderr, "%s", usage);
    return argc < 2 ? 2 : 0;
  }
  std::string device = "cpu";
  int repeats = 5, threads = 0;
  std::vector<int> sizes = {128, 256, 512}, batches = {1, 8};
  bool composition = false, graphs = false, profile = false;
  for (int i = 2; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--padre-composition" || f == "--cuda-graphs" || f == "--profile") {
      (f == "--cuda-graphs" ? graphs : f == "--profile" ? profile : composition) = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n%s", f.c_str(), usage);
      return 2;
    }
    const char* v = argv[++i];
    if (f == "--device") device = v;
    else if (f == "--repeats") repeats = std::max(1, std::atoi(v));
    else if (f == "--threads") threads = std::atoi(v);
    else if (f == "--sizes") sizes = ParseInts(v);
    else if (f == "--batches") batches = ParseInts(v);
    else {
      std::fprintf(stderr, "unknown flag %s\n%s", f.c_str(), usage);
      return 2;
    }
  }
  if (threads > 0) at::set_num_threads(threads);
  at::InferenceMode guard;
  if (graphs && device != "cuda") {
    std::fprintf(stderr, "--cuda-graphs needs --device cuda\n");
    return 2;
  }
  // Rows: "padre" (the default mixer path), "padre-graph" (replayed), "padre-composition" (fused kernel
  // off), "softmax".
  std::vector<std::pair<std::string, bool>> runs = {{"padre", true}};
  if (graphs) runs.push_back({"padre-graph", true});
  if (composition) runs.push_back({"padre-composition", false});
  runs.push_back({"softmax", true});
  std::map<std::tuple<int, int, std::string>, double> ms;
  for (const int size : sizes) {
    for (const auto& [name, fused] : runs) {
      padre::PadreOptions o;
      o.device = c10::Device(device);
      o.mixer.fused_cuda = fused;
      const std::string mixer = name == "softmax" ? "softmax" : "padre";
      auto model = padre::PadreDetector::Load(std::string(argv[1]) + "/" + mixer + "-" + std::to_string(size), o);
      if (!model.ok()) {
        std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
        return 1;
      }
      std::unique_ptr<deltaserve::runner::DetectorGraphs> replay;
      if (name == "padre-graph") {
        auto captured = deltaserve::runner::DetectorGraphs::Capture(
            **model, std::vector<int64_t>(batches.begin(), batches.end()));
        if (!captured.ok()) {
          std::fprintf(stderr, "%s\n", std::string(captured.status().message()).c_str());
          return 1;
        }
        replay = *std::move(captured);
      }
      auto forward = [&](const at::Tensor& x) {
        return replay ? replay->Run(x) : (*model)->Forward(x);
      };
      for (const int batch : batches) {
        const at::Tensor x = at::randn({batch, 3, size, size}).to(o.device);
        auto sync = [&] {
          if (o.device.is_cuda()) (void)(*model)->Forward(x.slice(0, 0, 1))->heatmap_logits.cpu();
        };
        (void)forward(x);  // warm-up
        std::vector<double> t;
        for (int r = 0; r < repeats; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          auto h = forward(x);
          (void)h->heatmap_logits.sum().item<float>();  // waits for the device
          t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        sync();
        if (profile) {
          const auto result = deltaserve::bench::ProfileWindow(
              o.device.is_cuda(), [&] { (void)forward(x)->heatmap_logits.sum().item<float>(); });
          std::printf("{\"bench\": \"vision_profile\", \"device\": \"%s\", \"mixer\": \"%s\", \"input\": %d, "
                      "\"batch\": %d, %s}\n",
                      device.c_str(), name.c_str(), size, batch,
                      deltaserve::bench::ProfileSummaryFields(*result).c_str());
        }
        std::sort(t.begin(), t.end());
        ms[{size, batch, name}] = t[t.size() / 2];
        std::fprintf(stderr, "%s size %d batch %d: %.2f ms\n", name.c_str(), size, batch, t[t.size() / 2]);
      }
    }
  }
  std::printf("\n| input | tokens | batch | PADRe ms | PADRe img/s | softmax ms | softmax img/s | softmax / PADRe |%s%s\n",
              composition ? " PADRe composition ms | composition / PADRe |" : "",
              graphs ? " PADRe graph ms | softmax / PADRe graph |" : "");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|%s%s\n", composition ? "---:|---:|" : "",
              graphs ? "---:|---:|" : "");
  for (const int size : sizes) {
    for (const int batch : batches) {
      const double p = ms[{size, batch, "padre"}], s = ms[{size, batch, "softmax"}];
      std::printf("| %dx%d | %d | %d | %.2f | %.1f | %.2f | %.1f | %.2fx |", size, size, (size / 8) * (size / 8),
                  batch, p, batch * 1e3 / p, s, batch * 1e3 / s, s / p);
      if (composition) {
        const double c = ms[{size, batch, "padre-composition"}];
        std::printf(" %.2f | %.2fx |", c, c / p);
      }
      if (graphs) {
        const double g = ms[{size, batch, "padre-graph"}];
        std::printf(" %.2f | %.2fx |", g, s / g);
      }
      std::printf("\n");
    }
  }
  for (const auto& [key, v] : ms) {
    const auto& [size, batch, name] = key;
    std::printf("{\"bench\": \"vision\", \"device\": \"%s\", \"model\": \"%s\", \"mixer\": \"%s\", \"input\": %d, "
                "\"tokens\": %d, \"batch\": %d, \"ms\": %.3f, \"images_per_s\": %.2f}\n",
                device.c_str(), name == "softmax" ? "softmax" : "padre", name.c_str(), size, (size / 8) * (size / 8),
                batch, v, batch * 1e3 / v);
  }
  return 0;
}
