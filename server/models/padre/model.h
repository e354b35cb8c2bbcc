// The PADRe detector on LibTorch (docs/vision.md): letterbox pre-processing, the ViT with PADRe or
// softmax mixers, the dense head, and decoding of heatmap peaks into boxes in the original image.
#ifndef DELTASERVE_SERVER_MODELS_PADRE_MODEL_H_
#define DELTASERVE_SERVER_MODELS_PADRE_MODEL_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "deltaserve/kernels/padre_mixer.h"
#include "models/layer_timer.h"
#include "models/padre/config.h"
#include "models/safetensors.h"

namespace deltaserve::models::padre {

struct PadreOptions {
  c10::Device device = c10::Device(c10::kCPU);
  kernels::PadreMixerOptions mixer;  // fused CUDA mixer on by default; off: the ATen composition
};

// An image ready for the network, and what it takes to map boxes back.
struct LetterboxedImage {
  at::Tensor input;  // [3, S, S] float32 on the model's device, normalised
  double scale = 1;  // resized = original * scale
  int width = 0, height = 0;  // original size
};

// One detection before NMS, in original image pixels.
struct Candidate {
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  float score = 0;
  int class_id = 0;
};

struct HeadOutputs {
  at::Tensor heatmap_logits;  // [B, C, G, G]
  at::Tensor size;            // [B, 2, G, G]: width, height as fractions of the input size
  at::Tensor offset;          // [B, 2, G, G]: centre offset within the cell, x then y
};

// The best heatmap peaks of every batch entry, found where the heads are and copied to the host once.
struct Peaks {
  // [B, K, 6] float64 on the CPU, best first in each entry: score, class * G * G + cell, the cell's offset
  // x and y, width and height. Entries past the real peaks score 0.
  at::Tensor rows;
};

class PadreDetector {
 public:
  // DIR/config.json and DIR/model.safetensors (fp16, bf16 or fp32; computed in fp32). Errors name the
  // file and the field or tensor.
  static absl::StatusOr<std::unique_ptr<PadreDetector>> Load(const std::string& model_dir,
                                                             const PadreOptions& options);

  const PadreConfig& config() const { return config_; }
  const PadreOptions& options() const { return options_; }

  // `rgb`: width * height * 3 bytes, interleaved, row-major. Resizes the longer side to image_size
  // (bilinear), places it top-left on a 0.5-grey square, normalises. The bytes go to the model's device
  // first, so on a GPU the resize runs there and only a quarter of the float input's bytes cross.
  absl::StatusOr<LetterboxedImage> Letterbox(const uint8_t* rgb, int width, int height) const;

  // `input` [B, 3, S, S] (any device; moved to the model's). `timer` (may be null) gets one Begin/End
  // per TimedSpans() entry.
  absl::StatusOr<HeadOutputs> Forward(const at::Tensor& input, LayerTimer* timer = nullptr) const;

  // patch embedding, each block's mixer and MLP, the head.
  std::vector<TimedSpan> TimedSpans() const;

  // Heatmap peaks (cells equal to their 3x3 max-pool) of every batch entry, the `top_k` best over all
  // classes and cells, on the heads' device for the whole batch; one copy to the host.
  absl::StatusOr<Peaks> FindPeaks(const HeadOutputs& heads, int64_t top_k = 100) const;

  // Batch entry `b` of `peaks`: scores >= threshold, boxes scaled back to `image`'s pixels but not clipped
  // (NMS runs on the unclipped boxes, as docs/vision.md orders it; ClipToImage afterwards). Best first.
  std::vector<Candidate> Decode(const Peaks& peaks, int64_t b, const LetterboxedImage& image,
                                float threshold) const;

 private:
  struct Block {
    at::Tensor norm1_w, norm1_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b;
    kernels::PadreMixerWeights padre;           // mixer padre
    at::Tensor qkv_w, qkv_b, out_w, out_b;      // mixer softmax
  };
  PadreDetector() = default;
  at::Tensor SoftmaxAttention(const Block& b, const at::Tensor& x) const;

  PadreConfig config_;
  PadreOptions options_;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint_;
  at::Tensor patch_w_, patch_b_, pos_embed_, norm_w_, norm_b_;
  std::vector<Block> blocks_;
  at::Tensor head_conv_w_, head_conv_b_, heat_w_, heat_b_, size_w_, size_b_, offset_w_, offset_b_;
  at::Tensor pixel_mean_, pixel_std_;  // [1, 3, 1, 1] on the model's device
};

// Clips a decoded box to the original image (after NMS).
void ClipToImage(Candidate& c, const LetterboxedImage& image);

}  // namespace deltaserve::models::padre

#endif  // DELTASERVE_SERVER_MODELS_PADRE_MODEL_H_
