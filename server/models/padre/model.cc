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
          // The tap-major copy the CUDA mixer reads, made once here rather than in every call.
          if (options.device.is_cuda()) {
            absl::StatusOr<at::Tensor> taps = kernels::PadreMixWeightTapMajor(blk.padre.mix_weight);
            if (!taps.ok()) return taps.status();
            blk.padre.mix_weight_taps = *std::move(taps);
          }
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
    // Letterbox's normalisation constants, kept where the images are normalised.
    m->pixel_mean_ = at::tensor({c.pixel_mean[0], c.pixel_mean[1], c.pixel_mean[2]}, at::kFloat)
                         .view({1, 3, 1, 1})
                         .to(options.device);
    m->pixel_std_ = at::tensor({c.pixel_std[0], c.pixel_std[1], c.pixel_std[2]}, at::kFloat)
                        .view({1, 3, 1, 1})
                        .to(options.device);
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
    const at::TensorOptions on_device = at::TensorOptions(at::kFloat).device(options_.device);
    at::Tensor img = at::from_blob(const_cast<uint8_t*>(rgb), {height, width, 3}, at::kByte)
                         .to(options_.device)
                         .permute({2, 0, 1})
                         .unsqueeze(0)
                         .to(at::kFloat)
                         .div_(255.0);
    const int64_t nh = resized(height), nw = resized(width);
    if (nh != height || nw != width)
      img = at::upsample_bilinear2d(img, {nh, nw}, /*align_corners=*/false);
    at::Tensor canvas = at::full({1, 3, s, s}, 0.5, on_device);
    canvas.slice(2, 0, nh).slice(3, 0, nw).copy_(img);
    out.input = ((canvas - pixel_mean_) / pixel_std_).squeeze(0).contiguous();
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

absl::StatusOr<Peaks> PadreDetector::FindPeaks(const HeadOutputs& heads, int64_t top_k) const {
  const int64_t g = config_.grid(), classes = config_.num_classes();
  const at::Tensor& logits = heads.heatmap_logits;
  if (!logits.defined() || logits.dim() != 4 || logits.size(1) != classes || logits.size(2) != g ||
      logits.size(3) != g || !heads.size.defined() || !heads.offset.defined() ||
      heads.size.sizes() != heads.offset.sizes() || heads.size.dim() != 4 || heads.size.size(0) != logits.size(0) ||
      heads.size.size(1) != 2 || heads.size.size(2) != g || heads.size.size(3) != g) {
    return absl::InvalidArgumentError(absl::StrCat("heads: expected heatmap [B, ", classes, ", ", g, ", ", g,
                                                   "] with size and offset [B, 2, ", g, ", ", g, "]"));
  }
  if (top_k < 1) return absl::InvalidArgumentError(absl::StrCat("top_k: ", top_k, " is below 1"));
  try {
    const int64_t batch = logits.size(0), k = std::min<int64_t>(top_k, classes * g * g);
    const at::Tensor heat = at::sigmoid(logits.to(at::kFloat));  // [B, C, G, G]
    const at::Tensor is_peak = heat == at::max_pool2d(heat, 3, 1, 1);
    const auto [values, indices] = at::topk((heat * is_peak).flatten(1), k, 1);  // [B, K]
    // Each peak's cell, to read its box from the [B, 2, G * G] size and offset maps.
    const at::Tensor cell = indices.remainder(g * g).unsqueeze(1).expand({batch, 2, k});
    const at::Tensor offset = heads.offset.to(at::kFloat).flatten(2).gather(2, cell);
    const at::Tensor size = heads.size.to(at::kFloat).flatten(2).gather(2, cell);
    // float64 keeps the flat index exact whatever the grid; one copy of B x K x 48 bytes.
    const at::Tensor rows = at::cat({values.unsqueeze(1).to(at::kDouble), indices.unsqueeze(1).to(at::kDouble),
                                     offset.to(at::kDouble), size.to(at::kDouble)},
                                    1)
                                .transpose(1, 2)
                                .to(at::kCPU)
                                .contiguous();
    return Peaks{rows};
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("padre peaks: ", e.what_without_backtrace()));
  }
}

std::vector<Candidate> PadreDetector::Decode(const Peaks& peaks, int64_t b, const LetterboxedImage& image,
                                             float threshold) const {
  const int64_t g = config_.grid();
  const double s = static_cast<double>(config_.image_size), p = static_cast<double>(config_.patch_size);
  std::vector<Candidate> out;
  if (!peaks.rows.defined() || b < 0 || b >= peaks.rows.size(0)) return out;
  const auto rows = peaks.rows.accessor<double, 3>()[b];
  for (int64_t i = 0; i < rows.size(0); ++i) {
    const float score = static_cast<float>(rows[i][0]);
    if (score < threshold || score <= 0) break;  // sorted: the rest are lower
    const int64_t index = static_cast<int64_t>(rows[i][1]);
    const int64_t cls = index / (g * g), cell = index % (g * g), gy = cell / g, gx = cell % g;
    const double cx = (gx + static_cast<float>(rows[i][2])) * p, cy = (gy + static_cast<float>(rows[i][3])) * p;
    // Negative sizes (an untrained or unsure head) mean an empty box, as the Python decoder clamps them.
    const double w = std::max(0.0f, static_cast<float>(rows[i][4])) * s;
    const double h = std::max(0.0f, static_cast<float>(rows[i][5])) * s;
    Candidate c;
    c.x0 = static_cast<float>((cx - w / 2) / image.scale);
    c.y0 = static_cast<float>((cy - h / 2) / image.scale);
    c.x1 = static_cast<float>((cx + w / 2) / image.scale);
    c.y1 = static_cast<float>((cy + h / 2) / image.scale);
    c.score = score;
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
