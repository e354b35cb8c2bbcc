// Decoding user-supplied PNG, JPEG and raw RGB bytes into an RgbImage (bounded, never trusting the file),
// and encoding an RgbImage as PNG. No LibTorch: the server and deltaserve-cli both link it.
#ifndef DELTASERVE_SERVER_VISION_IMAGE_CODEC_H_
#define DELTASERVE_SERVER_VISION_IMAGE_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "vision/image.h"

namespace deltaserve::vision {

// What a decoder accepts. Both limits are checked before any pixel memory is allocated: the pixel count
// comes from the file's header (PNG IHDR, JPEG SOF), so a tiny file claiming 50000x50000 is refused
// without decoding it.
struct DecodeLimits {
  int64_t max_bytes = int64_t{20} << 20;  // encoded size (PNG, JPEG); 20 MiB
  int64_t max_pixels = 40'000'000;        // width * height; 40 megapixels (120 MB as RGB)
};

// Decodes a PNG or JPEG, told apart by their signatures (89 'PNG' 0D 0A 1A 0A; FF D8 FF). Every failure
// is InvalidArgument with a message that names the problem (and the limit, where one is exceeded):
// empty input, input above max_bytes, an unsupported format (GIF, BMP, WebP, TIFF, ... are recognised
// and named), zero width or height, more than max_pixels pixels, a corrupt or truncated file.
//
// What is converted, and how:
//  - PNG: every colour type and bit depth. Grayscale is replicated to R = G = B; palettes are expanded;
//    1/2/4-bit samples are scaled to 8 bits; 16-bit samples are rounded to 8 bits (v * 255 / 65535,
//    libpng's png_set_scale_16); Adam7 interlacing is handled.
//  - Alpha (an alpha channel or a tRNS chunk) is composited onto a white background in 8-bit sRGB
//    values: out = (c * a + 255 * (255 - a) + 127) / 255 (integer division). Opaque pixels are unchanged;
//    fully transparent ones become white, as an image viewer on a white page shows them.
//  - JPEG: baseline, progressive and arithmetic-coded, 8-bit (12-bit and lossless are refused as
//    unsupported). Grayscale, YCbCr and RGB are converted by
//    libjpeg-turbo; CMYK and YCCK are converted naively (no ICC profile): with the Adobe convention of
//    inverted samples (an Adobe APP14 marker, as Photoshop writes them) R = C * K / 255 (rounded), and
//    without it R = (255 - C) * (255 - K) / 255; likewise G from M and B from Y.
//  - Not applied: gamma (gAMA), ICC profiles, EXIF orientation. Pixels are returned as stored.
//  - A PNG may lack its final IEND chunk (as viewers accept); anything cut earlier is refused.
//  - Any libjpeg "corrupt data" warning (bad Huffman code, premature end of file, ...) is an error: a
//    truncated JPEG is refused rather than padded with gray. More than 500 progressive scans is refused.
absl::StatusOr<RgbImage> DecodeImage(std::string_view bytes, const DecodeLimits& limits = {});

// The pixel count (width * height) a PNG or JPEG header declares, read from the first chunk (PNG IHDR)
// or frame marker (JPEG SOFn, found as libjpeg finds it) without decoding anything: for every image that
// DecodeImage accepts it equals width * height (tests/fuzz/fuzz_image checks that). NotFound when the
// bytes are neither or the header is cut short. For budgeting memory before a decode.
absl::StatusOr<int64_t> DeclaredPixels(std::string_view bytes);

// Wraps raw interleaved RGB bytes (row-major, no padding) of a width x height image. Checks width > 0,
// height > 0, width * height <= limits.max_pixels and bytes.size() == width * height * 3 (the message
// names both numbers). limits.max_bytes does not apply: the pixel limit bounds raw input.
absl::StatusOr<RgbImage> RawRgbImage(std::string_view bytes, int width, int height,
                                     const DecodeLimits& limits = {});

// Encodes a well-formed image as an 8-bit RGB PNG (with an sRGB chunk). InvalidArgument if the image is
// not well formed (non-positive size, or pixels.size() != width * height * 3).
absl::StatusOr<std::string> EncodePng(const RgbImage& image);

}  // namespace deltaserve::vision

#endif  // DELTASERVE_SERVER_VISION_IMAGE_CODEC_H_
