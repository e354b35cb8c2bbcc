// Capture and replay of the decode pass (see decode_graphs.h). Capture runs once at start-up, largest
// bucket first, all graphs sharing one memory pool (a replay never overlaps another), as vLLM does.
#include "runner/decode_graphs.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"

#if DELTASERVE_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace deltaserve::runner {

std::vector<int64_t> DefaultGraphBuckets(int64_t max_seqs) {
  std::vector<int64_t> b;
  for (int64_t s = 1; s <= 256 && s < max_seqs; s *= 2) b.push_back(s);
  b.push_back(max_seqs);
  return b;
}

namespace {

// A bucket's step inputs: `size` padding rows (state slot -1, length 0, KV slot -1), decode layout.
StepInputs PaddingInputs(int64_t size, int64_t max_seq_len) {
  StepInputs in;
  in.decode = true;
  in.token_ids.assign(size, 0);
  in.positions.assign(size, 0);
  in.kv_slots.assign(size, -1);
  in.state_slots.assign(size, -1);
  in.seq_lens.assign(size, 0);
  in.starts.assign(size, 0);
  in.cu_seqlens.resize(size + 1);
  for (int64_t i = 0; i <= size; ++i) in.cu_seqlens[i] = i;
  in.all_rows = true;
  in.max_seq_len = max_seq_len;
  return in;
}

}  // namespace

struct DecodeGraphs::Graph {
#if DELTASERVE_WITH_CUDA
  at::cuda::CUDAGraph graph;
#endif
  StepInputs padding;  // the bucket's layout, all rows padding
  at::Tensor inputs;   // static device buffer the graph reads its packed inputs from
  at::Tensor logits;   // static output [bucket, vocab]
};

DecodeGraphs::~DecodeGraphs() = default;

int64_t DecodeGraphs::BucketFor(int64_t n) const {
  for (int64_t b : buckets_) {
    if (b >= n) return b;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<DecodeGraphs>> DecodeGraphs::Capture(const models::qwen35::Qwen35Model& model,
                                                                    models::qwen35::Qwen35State& state,
                                                                    const at::Tensor& block_table,
                                                                    std::vector<int64_t> buckets,
                                                                    int64_t max_seq_len) {
#if DELTASERVE_WITH_CUDA
  if (!block_table.is_cuda()) return absl::FailedPreconditionError("decode graphs: the model is not on CUDA");
  std::sort(buckets.begin(), buckets.end());
  buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
  auto graphs = std::unique_ptr<DecodeGraphs>(new DecodeGraphs());
  graphs->buckets_ = buckets;
  graphs->graphs_.resize(buckets.size());
  try {
    const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
    // Capture must not run on the legacy default stream.
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, block_table.device().index());
    c10::cuda::CUDAStreamGuard guard(stream);
    for (size_t k = buckets.size(); k-- > 0;) {
      auto g = std::make_unique<Graph>();
      g->padding = PaddingInputs(buckets[k], max_seq_len);
      const int64_t n = g->padding.PackedSize();
      std::vector<int64_t> host(n);
      g->padding.Pack(host.data());
      g->inputs = at::tensor(host, at::TensorOptions().dtype(at::kLong)).to(block_table.device());
      models::qwen35::ForwardBatch batch = ViewBatch(g->padding, g->inputs, block_table);
      // Warm-up outside the capture: library handles, workspaces and lazy module loads happen here.
      (void)model.Forward(batch, state, nullptr);
      stream.synchronize();
      g->graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
      // The batch's views are recomputed inside the capture, so the graph reads `inputs` itself.
      models::qwen35::ForwardBatch captured = ViewBatch(g->padding, g->inputs, block_table);
      g->logits = model.Forward(captured, state, nullptr);
      g->graph.capture_end();
      graphs->graphs_[k] = std::move(g);
    }
    stream.synchronize();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("capturing decode graphs: ", e.what_without_backtrace()));
  }
  return graphs;
#else
  (void)model;
  (void)state;
  (void)block_table;
  (void)buckets;
  (void)max_seq_len;
  return absl::UnimplementedError("decode graphs: this build has no CUDA");
#endif
}

at::Tensor DecodeGraphs::Run(const StepInputs& in, HostTransfer& transfer, const at::Tensor* last_tokens) {
  const int64_t n = in.num_seqs();
  const auto it = std::lower_bound(buckets_.begin(), buckets_.end(), n);
  TORCH_CHECK(it != buckets_.end(), "decode graphs: ", n, " sequences exceed the largest bucket ", max_batch());
  Graph& g = *graphs_[it - buckets_.begin()];
  const int64_t size = *it;
  // The real rows first, then the bucket's padding rows, in the packed layout ViewBatch reads.
  StepInputs padded = g.padding;
  std::copy(in.token_ids.begin(), in.token_ids.end(), padded.token_ids.begin());
  std::copy(in.positions.begin(), in.positions.end(), padded.positions.begin());
  std::copy(in.kv_slots.begin(), in.kv_slots.end(), padded.kv_slots.begin());
  std::copy(in.state_slots.begin(), in.state_slots.end(), padded.state_slots.begin());
  std::copy(in.seq_lens.begin(), in.seq_lens.end(), padded.seq_lens.begin());
  transfer.Upload(padded.PackedSize(), [&](int64_t* out) { padded.Pack(out); }, &g.inputs);
  // Token ids lead the packed layout; padding rows hold 0 and are left alone.
  if (last_tokens) ResolveFedTokens(g.inputs.narrow(0, 0, size), *last_tokens);
#if DELTASERVE_WITH_CUDA
  g.graph.replay();
#endif
  return g.logits.narrow(0, 0, n);
}

}  // namespace deltaserve::runner
