// The PADRe detector's forward pass, letterbox and peak decoding (see model.h and docs/vision.md).
#include "models/padre/model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "models/tensor_loader.h"

namespace deltaserve::models::padre {
namespace {

// Guards a span when a timer is given.
struct Span {
  Span(LayerTimer* t, size_t i) : timer(t), index(i) {
    if (timer) timer->Begin(index);
  }
  ~Span() {
    if (timer) timer->End(index);
  }
  LayerTimer* timer;
  size_t index;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PadreDetector>> PadreDetector::Load(const std::string& model_dir,
                                                                   const PadreOptions& options) {
  absl::StatusOr<PadreConfig> config = LoadPadreConfig(model_dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> checkpoint = SafetensorsCheckpoint::Open(model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  std::unique_ptr<PadreDetector> m(new PadreDetector);
  m->config_ = *config;
  m->options_ = options;
  m->checkpoint_ = *std::move(checkpoint);
  const PadreConfig& c = m->config_;
  const int64_t d = c.hidden_size, p = c.patch_size, n = c.grid() * c.grid(), h = c.mlp_hidden_size;
  const int64_t k = c.padre_kernel_size, deg = c.padre_degree, classes = c.num_classes();
  try {
    TensorLoader load(*m->checkpoint_, "", at::kFloat, options.device);
    m->patch_w_ = load.Take("patch_embed.weight", {d, 3, p, p});
    m->patch_b_ = load.Take("patch_embed.bias", {d});
    m->pos_embed_ = load.Take("pos_embed", {1, n, d});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string b = absl::StrCat("blocks.", i, ".");
      Block blk;
      blk.norm1_w = load.Take(b + "norm1.weight", {d});
      blk.norm1_b = load.Take(b + "norm1.bias", {d});
      blk.norm2_w = load.Take(b + "norm2.weight", {d});
      blk.norm2_b = load.Take(b + "norm2.bias", {d});
      blk.fc1_w = load.Take(b + "mlp.fc1.weight", {h, d});
      blk.fc1_b = load.Take(b + "mlp.fc1.bias", {h});
      blk.fc2_w = load.Take(b + "mlp.fc2.weight", {d, h});
      blk.fc2_b = load.Take(b + "mlp.fc2.bias", {d});
      if (c.mixer == Mixer::kPadre) {
        std::vector<at::Tensor> pw, pb, mw, mg, nw;
        for (int64_t t = 0; t < deg; ++t) {
          const std::string mx = absl::StrCat(b, "mixer.");
          pw.push_back(load.Take(absl::StrCat(mx, "proj.", t, ".weight"), {d, d}));
          pb.push_back(load.Take(absl::StrCat(mx, "proj.", t, ".bias"), {d}));
          mw.push_back(load.Take(absl::StrCat(mx, "mix.", t, ".weight"), {d, 1, k, k}));
          mg.push_back(load.Take(absl::StrCat(mx, "mix_global.", t), {d}));
          nw.push_back(load.Take(absl::StrCat(mx, "norm.", t, ".weight"), {d}));
        }
        blk.out_w = load.Take(b + "mixer.out.weight", {d, d});
        blk.out_b = load.Take(b + "mixer.out.bias", {d});
        const bool complete = std::all_of(pw.begin(), pw.end(), [](const at::Tensor& t) { return t.defined(); }) &&
                              std::all_of(pb.begin(), pb.end(), [](const at::Tensor& t) { return t.defined(); }) &&
                              std::all_of(mw.begin(), mw.end(), [](const at::Tensor& t) { return t.defined(); }) &&
                              std::all_of(mg.begin(), mg.end(), [](const at::Tensor& t) { return t.defined(); }) &&
                              std::all_of(nw.begin(), nw.end(), [](const at::Tensor& t) { return t.defined(); });
        if (complete) {
          // Stacked along channels, so the kernel runs one matmul and one grouped convolution.
          blk.padre.proj_weight = at::cat(pw, 0);
          blk.padre.proj_bias = at::cat(pb, 0);
          blk.padre.mix_weight = at::cat(mw, 0);
          blk.padre.mix_global = at::cat(mg, 0);
          blk.padre.norm_weight = at::stack(nw, 0);
          blk.padre.out_weight = blk.out_w;
          blk.padre.out_bias = blk.out_b;
          blk.padre.eps = c.norm_eps;
        }
      } else {
        blk.qkv_w = load.Take(b + "mixer.qkv.weight", {3 * d, d});
        blk.qkv_b = load.Take(b + "mixer.qkv.bias", {3 * d});
        blk.out_w = load.Take(b + "mixer.out.weight", {d, d});
        blk.out_b = load.Take(b + "mixer.out.bias", {d});
      }
      m->blocks_.push_back(std::move(blk));
    }
    m->norm_w_ = load.Take("norm.weight", {d});
    m->norm_b_ = load.Take("norm.bias", {d});
    m->head_conv_w_ = load.Take("head.conv.weight", {d, d, 3, 3});
    m->head_conv_b_ = load.Take("head.conv.bias", {d});
    m->heat_w_ = load.Take("head.heatmap.weight", {classes, d, 1, 1});
    m->heat_b_ = load.Take("head.heatmap.bias", {classes});
    m->size_w_ = load.Take("head.size.weight", {2, d, 1, 1});
    m->size_b_ = load.Take("head.size.bias", {2});
    m->offset_w_ = load.Take("head.offset.weight", {2, d, 1, 1});
    m->offset_b_ = load.Take("head.offset.bias", {2});
    absl::Status st = load.Finish();
    if (!st.ok()) return absl::Status(st.code(), absl::StrCat(model_dir, ": ", st.message()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", model_dir, ": ", e.what_without_backtrace()));
  }
  return m;
}

absl::StatusOr<LetterboxedImage> PadreDetector::Letterbox(const uint8_t* rgb, int width, int height) const {
  if (rgb == nullptr || width < 1 || height < 1)
    return absl::InvalidArgumentError(absl::StrCat("image: ", width, " x ", height, " has no pixels"));
  const int64_t s = config_.image_size;
  LetterboxedImage out;
  out.width = width;
  out.height = height;
  out.scale = static_cast<double>(s) / std::max(width, height);
  // Rounded half up, as the Python side computes it: int(side * scale + 0.5), within [1, S].
  auto resized = [&](int side) {
    return std::clamp<int64_t>(static_cast<int64_t>(side * out.scale + 0.5), 1, s);
  };
  try {
    at::Tensor img = at::from_blob(const_cast<uint8_t*>(rgb), {height, width, 3}, at::kByte)
                         .permute({2, 0, 1})
                         .unsqueeze(0)
                         .to(at::kFloat)
                         .div_(255.0);
    const int64_t nh = resized(height), nw = resized(width);
    if (nh != height || nw != width)
      img = at::upsample_bilinear2d(img, {nh, nw}, /*align_corners=*/false);
    at::Tensor canvas = at::full({1, 3, s, s}, 0.5, at::kFloat);
    canvas.slice(2, 0, nh).slice(3, 0, nw).copy_(img);
    const at::Tensor mean = at::tensor({config_.pixel_mean[0], config_.pixel_mean[1], config_.pixel_mean[2]},
                                       at::kFloat).view({1, 3, 1, 1});
    const at::Tensor std = at::tensor({config_.pixel_std[0], config_.pixel_std[1], config_.pixel_std[2]},
                                      at::kFloat).view({1, 3, 1, 1});
    out.input = ((canvas - mean) / std).squeeze(0).contiguous();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("letterbox: ", e.what_without_backtrace()));
  }
  return out;
}

std::vector<TimedSpan> PadreDetector::TimedSpans() const {
  std::vector<TimedSpan> spans = {{"patch_embed", "embedding"}};
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    spans.push_back({std::to_string(i), config_.mixer == Mixer::kPadre ? "padre" : "attention"});
    spans.push_back({std::to_string(i), "mlp"});
  }
  spans.push_back({"head", "head"});
  return spans;
}

at::Tensor PadreDetector::SoftmaxAttention(const Block& b, const at::Tensor& x) const {
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2), heads = config_.num_heads;
  const at::Tensor qkv = at::linear(x, b.qkv_w, b.qkv_b).view({batch, n, 3, heads, d / heads});
  const at::Tensor q = qkv.select(2, 0).transpose(1, 2);
  const at::Tensor k = qkv.select(2, 1).transpose(1, 2);
  const at::Tensor v = qkv.select(2, 2).transpose(1, 2);
  const at::Tensor o = at::scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape({batch, n, d});
  return at::linear(o, b.out_w, b.out_b);
}

absl::StatusOr<HeadOutputs> PadreDetector::Forward(const at::Tensor& input, LayerTimer* timer) const {
  const int64_t s = config_.image_size, g = config_.grid(), d = config_.hidden_size;
  if (!input.defined() || input.dim() != 4 || input.size(1) != 3 || input.size(2) != s || input.size(3) != s) {
    return absl::InvalidArgumentError(absl::StrCat("input: expected [B, 3, ", s, ", ", s, "], got ",
                                                   input.defined() ? c10::str(input.sizes()) : "undefined"));
  }
  try {
    const at::Tensor x0 = input.to(options_.device, at::kFloat);
    const int64_t batch = x0.size(0);
    at::Tensor x;
    {
      Span span(timer, 0);
      x = at::conv2d(x0, patch_w_, patch_b_, config_.patch_size).flatten(2).transpose(1, 2) + pos_embed_;
    }
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const Block& b = blocks_[i];
      {
        Span span(timer, 1 + 2 * i);
        const at::Tensor h = at::layer_norm(x, {d}, b.norm1_w, b.norm1_b, config_.norm_eps);
        if (config_.mixer == Mixer::kPadre) {
          absl::StatusOr<at::Tensor> mixed = kernels::PadreMixer(h.contiguous(), g, g, b.padre, options_.mixer);
          if (!mixed.ok()) return mixed.status();
          x = x + *mixed;
        } else {
          x = x + SoftmaxAttention(b, h);
        }
      }
      Span span(timer, 2 + 2 * i);
      const at::Tensor h = at::layer_norm(x, {d}, b.norm2_w, b.norm2_b, config_.norm_eps);
      x = x + at::linear(at::gelu(at::linear(h, b.fc1_w, b.fc1_b)), b.fc2_w, b.fc2_b);
    }
    Span span(timer, 1 + 2 * blocks_.size());
    x = at::layer_norm(x, {d}, norm_w_, norm_b_, config_.norm_eps);
    const at::Tensor map = x.transpose(1, 2).reshape({batch, d, g, g});
    const at::Tensor f = at::relu(at::conv2d(map, head_conv_w_, head_conv_b_, 1, 1));
    HeadOutputs out;
    out.heatmap_logits = at::conv2d(f, heat_w_, heat_b_);
    out.size = at::conv2d(f, size_w_, size_b_);
    out.offset = at::conv2d(f, offset_w_, offset_b_);
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("padre forward: ", e.what_without_backtrace()));
  }
}

std::vector<Candidate> PadreDetector::Decode(const HeadOutputs& heads, int64_t b, const LetterboxedImage& image,
                                             float threshold, int64_t top_k) const {
  const int64_t g = config_.grid(), classes = config_.num_classes();
  const double s = static_cast<double>(config_.image_size), p = static_cast<double>(config_.patch_size);
  const at::Tensor heat = at::sigmoid(heads.heatmap_logits[b].to(at::kCPU, at::kFloat));  // [C, G, G]
  const at::Tensor peaks = heat == at::max_pool2d(heat.unsqueeze(0), 3, 1, 1).squeeze(0);
  const at::Tensor scores = (heat * peaks).flatten();
  const auto [values, indices] = at::topk(scores, std::min<int64_t>(top_k, classes * g * g));
  const at::Tensor size = heads.size[b].to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor offset = heads.offset[b].to(at::kCPU, at::kFloat).contiguous();
  const auto sa = size.accessor<float, 3>();
  const auto oa = offset.accessor<float, 3>();
  const auto va = values.accessor<float, 1>();
  const auto ia = indices.accessor<int64_t, 1>();
  std::vector<Candidate> out;
  for (int64_t i = 0; i < values.size(0); ++i) {
    if (va[i] < threshold || va[i] <= 0) break;  // sorted: the rest are lower
    const int64_t cls = ia[i] / (g * g), cell = ia[i] % (g * g), gy = cell / g, gx = cell % g;
    const double cx = (gx + oa[0][gy][gx]) * p, cy = (gy + oa[1][gy][gx]) * p;
    // Negative sizes (an untrained or unsure head) mean an empty box, as the Python decoder clamps them.
    const double w = std::max(0.0f, sa[0][gy][gx]) * s, h = std::max(0.0f, sa[1][gy][gx]) * s;
    Candidate c;
    c.x0 = static_cast<float>((cx - w / 2) / image.scale);
    c.y0 = static_cast<float>((cy - h / 2) / image.scale);
    c.x1 = static_cast<float>((cx + w / 2) / image.scale);
    c.y1 = static_cast<float>((cy + h / 2) / image.scale);
    c.score = va[i];
    c.class_id = static_cast<int>(cls);
    out.push_back(c);
  }
  return out;
}

void ClipToImage(Candidate& c, const LetterboxedImage& image) {
  c.x0 = std::clamp(c.x0, 0.0f, static_cast<float>(image.width));
  c.x1 = std::clamp(c.x1, 0.0f, static_cast<float>(image.width));
  c.y0 = std::clamp(c.y0, 0.0f, static_cast<float>(image.height));
  c.y1 = std::clamp(c.y1, 0.0f, static_cast<float>(image.height));
}

}  // namespace deltaserve::models::padre
