// An 8-bit RGB image in memory: what the vision decoders produce, the detector consumes and the drawing
// helpers annotate.
#ifndef DELTASERVE_SERVER_VISION_IMAGE_H_
#define DELTASERVE_SERVER_VISION_IMAGE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace deltaserve::vision {

// Interleaved RGB, row-major, no row padding: the pixel (x, y) is pixels[3 * (y * width + x) + c] for
// c = 0 (red), 1 (green), 2 (blue). A well-formed image has width > 0, height > 0 and
// pixels.size() == width * height * 3.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;

  uint8_t* at(int x, int y) { return pixels.data() + 3 * (static_cast<size_t>(y) * width + x); }
  const uint8_t* at(int x, int y) const { return pixels.data() + 3 * (static_cast<size_t>(y) * width + x); }
};

// One colour, 8 bits per channel.
struct Rgb {
  uint8_t r = 0;
  uint8_t g = 0;
  uint8_t b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

}  // namespace deltaserve::vision

#endif  // DELTASERVE_SERVER_VISION_IMAGE_H_
