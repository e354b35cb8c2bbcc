// Image bytes from outside: the header size probe, PNG and JPEG decoding under the server's limits, and
// raw RGB whose claimed size is taken from the first bytes. Decoded images must be well formed, within
// the pixel limit, and as large as their header declared (the memory budget trusts the header).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "vision/image_codec.h"

namespace v = deltaserve::vision;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v::DecodeLimits limits;
  limits.max_pixels = 4'000'000;  // keeps each run's memory small; the limit logic is the same
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto declared = v::DeclaredPixels(bytes);
  auto image = v::DecodeImage(bytes, limits);
  if (image.ok()) {
    if (!declared.ok() || *declared != int64_t{image->width} * image->height) std::abort();
    const int64_t pixels = int64_t{image->width} * image->height;
    if (image->width <= 0 || image->height <= 0 || pixels > limits.max_pixels ||
        image->pixels.size() != static_cast<size_t>(pixels) * 3)
      std::abort();
    if (!v::EncodePng(*image).ok()) std::abort();
  }
  if (size >= 4) {
    const int w = data[0] | (data[1] << 8), h = data[2] | (data[3] << 8);
    (void)v::RawRgbImage(bytes.substr(4), w, h, limits);
  }
  return 0;
}
