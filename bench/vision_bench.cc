// Detector speed: PADRe vs softmax attention at input sizes giving 256, 1024 and 4096 tokens, batch 1
// and 8, forward pass only (the pre- and post-processing do not depend on the mixer); median of
// repeated runs after a warm-up. Prints a table with the softmax/PADRe time ratio and JSON lines.
//   bench_vision MODELS_DIR [--device cpu|cuda] [--repeats N] [--threads N]   (bench/vision.sh)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "models/padre/model.h"

namespace padre = deltaserve::models::padre;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_vision MODELS_DIR [--device cpu|cuda] [--repeats N] [--threads N]\n");
    return 2;
  }
  std::string device = "cpu";
  int repeats = 5, threads = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    if (f == "--device") device = argv[i + 1];
    else if (f == "--repeats") repeats = std::atoi(argv[i + 1]);
    else if (f == "--threads") threads = std::atoi(argv[i + 1]);
  }
  if (threads > 0) at::set_num_threads(threads);
  at::InferenceMode guard;
  std::map<std::tuple<int, int, std::string>, double> ms;
  for (const int size : {128, 256, 512}) {
    for (const char* mixer : {"padre", "softmax"}) {
      padre::PadreOptions o;
      o.device = c10::Device(device);
      auto model = padre::PadreDetector::Load(std::string(argv[1]) + "/" + mixer + "-" + std::to_string(size), o);
      if (!model.ok()) {
        std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
        return 1;
      }
      for (const int batch : {1, 8}) {
        const at::Tensor x = at::randn({batch, 3, size, size}).to(o.device);
        auto sync = [&] {
          if (o.device.is_cuda()) (void)(*model)->Forward(x.slice(0, 0, 1))->heatmap_logits.cpu();
        };
        (void)(*model)->Forward(x);  // warm-up
        std::vector<double> t;
        for (int r = 0; r < repeats; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          auto h = (*model)->Forward(x);
          (void)h->heatmap_logits.sum().item<float>();  // waits for the device
          t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        sync();
        std::sort(t.begin(), t.end());
        ms[{size, batch, mixer}] = t[t.size() / 2];
        std::fprintf(stderr, "%s size %d batch %d: %.2f ms\n", mixer, size, batch, t[t.size() / 2]);
      }
    }
  }
  std::printf("\n| input | tokens | batch | PADRe ms | PADRe img/s | softmax ms | softmax img/s | softmax / PADRe |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const int size : {128, 256, 512}) {
    for (const int batch : {1, 8}) {
      const double p = ms[{size, batch, "padre"}], s = ms[{size, batch, "softmax"}];
      std::printf("| %dx%d | %d | %d | %.2f | %.1f | %.2f | %.1f | %.2fx |\n", size, size, (size / 8) * (size / 8),
                  batch, p, batch * 1e3 / p, s, batch * 1e3 / s, s / p);
    }
  }
  for (const auto& [key, v] : ms) {
    const auto& [size, batch, mixer] = key;
    std::printf("{\"bench\": \"vision\", \"device\": \"%s\", \"mixer\": \"%s\", \"input\": %d, \"tokens\": %d, "
                "\"batch\": %d, \"ms\": %.3f, \"images_per_s\": %.2f}\n",
                device.c_str(), mixer.c_str(), size, (size / 8) * (size / 8), batch, v, batch * 1e3 / v);
  }
  return 0;
}
