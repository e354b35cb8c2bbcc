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

absl::StatusOr<models::padre::HeadOutputs> DetectorGraphs::Run(const at::Tensor& input) {
  const auto it = buckets_.empty() || !input.defined() || input.dim() != 4
                      ? buckets_.end()
                      : std::lower_bound(buckets_.begin(), buckets_.end(), input.size(0));
  if (it == buckets_.end() || input.size(0) < 1) {
    return absl::InvalidArgumentError(absl::StrCat("detector graphs: input of ",
                                                   input.defined() ? c10::str(input.sizes()) : "undefined",
                                                   " is not [B, 3, S, S] with 1 <= B <= ", max_batch()));
  }
  Graph& g = *graphs_[it - buckets_.begin()];
  const int64_t n = input.size(0);
  if (input.sizes().slice(1) != g.input.sizes().slice(1) || input.device() != g.input.device()) {
    return absl::InvalidArgumentError(absl::StrCat("detector graphs: input ", c10::str(input.sizes()), " on ",
                                                   input.device().str(), " does not match the captured [",
                                                   *it, ", 3, S, S] on ", g.input.device().str()));
  }
  try {
    g.input.narrow(0, 0, n).copy_(input);
    // Stale images of an earlier, larger batch would only cost their rows' time; zero them anyway so a
    // replay's padding is always the captured zeros.
    if (n < *it) g.input.narrow(0, n, *it - n).zero_();
#if DELTASERVE_WITH_CUDA
    g.graph.replay();
#endif
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("detector graphs: ", e.what_without_backtrace()));
  }
  return models::padre::HeadOutputs{g.outputs.heatmap_logits.narrow(0, 0, n), g.outputs.size.narrow(0, 0, n),
                                    g.outputs.offset.narrow(0, 0, n)};
}

}  // namespace deltaserve::runner
