// Capture and replay of the detector's forward pass (see detector_graphs.h). Largest bucket first, all
// graphs in one memory pool (one batcher thread replays them, never two at once), as the decode graphs do.
#include "runner/detector_graphs.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

#if DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace deltaserve::runner {

struct DetectorGraphs::Graph {
#if DELTASERVE_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  at::Tensor input;                    // static [bucket, 3, S, S] the graph reads
  models::padre::HeadOutputs outputs;  // static [bucket, ...] the graph writes
};

DetectorGraphs::~DetectorGraphs() = default;

absl::StatusOr<std::unique_ptr<DetectorGraphs>> DetectorGraphs::Capture(const models::padre::PadreDetector& model,
                                                                        std::vector<int64_t> buckets) {
  std::sort(buckets.begin(), buckets.end());
  buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
  if (buckets.empty() || buckets.front() < 1)
    return absl::InvalidArgumentError("detector graphs: buckets must be >= 1 and at least one");
#if DELTASERVE_WITH_CUDA
  const c10::Device device = model.options().device;
  if (!device.is_cuda()) return absl::FailedPreconditionError("detector graphs: the model is not on CUDA");
  auto graphs = std::unique_ptr<DetectorGraphs>(new DetectorGraphs());
  graphs->buckets_ = buckets;
  graphs->graphs_.resize(buckets.size());
  const int64_t s = model.config().image_size;
  try {
    const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
    // Capture must not run on the legacy default stream; replays go to the caller's current stream.
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, device.index());
    c10::cuda::CUDAStreamGuard guard(stream);
    for (size_t k = buckets.size(); k-- > 0;) {
      auto g = std::make_unique<Graph>();
      g->input = at::zeros({buckets[k], 3, s, s}, at::TensorOptions(at::kFloat).device(device));
      // Warm-up outside the capture: cuDNN/cuBLAS handles, workspaces and algorithm choices happen here.
      absl::StatusOr<models::padre::HeadOutputs> warm = model.Forward(g->input);
      if (!warm.ok()) return warm.status();
      stream.synchronize();
      g->graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
      absl::StatusOr<models::padre::HeadOutputs> out = model.Forward(g->input);
      g->graph.capture_end();
      if (!out.ok()) return out.status();
      g->outputs = *std::move(out);
      graphs->graphs_[k] = std::move(g);
    }
    stream.synchronize();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("capturing detector graphs: ", e.what_without_backtrace()));
  }
  return graphs;
#else
  (void)model;
  return absl::UnimplementedError("detector graphs: this build has no CUDA");
#endif
}

absl::StatusOr<DetectorGraphs::Graph*> DetectorGraphs::GraphFor(int64_t n, at::IntArrayRef image_sizes,
                                                                 const c10::Device& device) {
  const auto it = n < 1 ? buckets_.end() : std::lower_bound(buckets_.begin(), buckets_.end(), n);
  if (it == buckets_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("detector graphs: a batch of ", n, " images; the captured buckets hold 1 to ", max_batch()));
  }
  Graph* g = graphs_[it - buckets_.begin()].get();
  if (image_sizes != g->input.sizes().slice(1) || device != g->input.device()) {
    return absl::InvalidArgumentError(absl::StrCat("detector graphs: images of ", c10::str(image_sizes), " on ",
                                                   device.str(), " do not match the captured ",
                                                   c10::str(g->input.sizes().slice(1)), " on ",
                                                   g->input.device().str()));
  }
  return g;
}

absl::StatusOr<models::padre::HeadOutputs> DetectorGraphs::Replay(Graph& g, int64_t n) {
  const int64_t bucket = g.input.size(0);
  try {
    // Stale images of an earlier, larger batch would only cost their rows' time; zero them anyway so a
    // replay's padding is always the captured zeros.
    if (n < bucket) g.input.narrow(0, n, bucket - n).zero_();
#if DELTASERVE_WITH_CUDA
    g.graph.replay();
#endif
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("detector graphs: ", e.what_without_backtrace()));
  }
  return models::padre::HeadOutputs{g.outputs.heatmap_logits.narrow(0, 0, n), g.outputs.size.narrow(0, 0, n),
                                    g.outputs.offset.narrow(0, 0, n)};
}

absl::StatusOr<models::padre::HeadOutputs> DetectorGraphs::Run(const at::Tensor& input) {
  if (!input.defined() || input.dim() != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("detector graphs: input of ", input.defined() ? c10::str(input.sizes()) : "undefined",
                     " is not [B, 3, S, S]"));
  }
  absl::StatusOr<Graph*> g = GraphFor(input.size(0), input.sizes().slice(1), input.device());
  if (!g.ok()) return g.status();
  try {
    (*g)->input.narrow(0, 0, input.size(0)).copy_(input);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("detector graphs: ", e.what_without_backtrace()));
  }
  return Replay(**g, input.size(0));
}

absl::StatusOr<models::padre::HeadOutputs> DetectorGraphs::Run(const std::vector<at::Tensor>& images) {
  const int64_t n = static_cast<int64_t>(images.size());
  if (n == 0) return absl::InvalidArgumentError("detector graphs: no images");
  for (const at::Tensor& image : images) {
    if (!image.defined() || image.sizes() != images.front().sizes() || image.device() != images.front().device()) {
      return absl::InvalidArgumentError("detector graphs: the images differ in shape or device");
    }
  }
  absl::StatusOr<Graph*> g = GraphFor(n, images.front().sizes(), images.front().device());
  if (!g.ok()) return g.status();
  try {
    at::Tensor rows = (*g)->input.narrow(0, 0, n);
    at::stack_out(rows, images);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("detector graphs: ", e.what_without_backtrace()));
  }
  return Replay(**g, n);
}

}  // namespace deltaserve::runner
