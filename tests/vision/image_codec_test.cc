// DecodeImage, RawRgbImage and EncodePng: images of every PNG colour type and bit depth, baseline,
// progressive, grayscale and CMYK JPEGs, all made here with libpng and libjpeg; and every refusal.
#include "vision/image_codec.h"

// jpeglib.h needs FILE and size_t from <cstdio> before it: keep this order.
// clang-format off
#include <cstdio>
#include <jpeglib.h>
#include <png.h>
#include <sys/resource.h>
#include <zlib.h>
// clang-format on

#include <cmath>
#include <cstdint>
#include <limits>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::vision {
namespace {

using ::testing::HasSubstr;

// ------------------------------------------------------------------------------ makers (libpng, libjpeg)

struct PngSpec {
  int width = 0;
  int height = 0;
  int color_type = PNG_COLOR_TYPE_RGB;
  int bit_depth = 8;
  bool interlaced = false;
  std::vector<png_color> palette;
  std::vector<uint8_t> trns_alpha;          // palette images: alpha per entry
  std::optional<png_color_16> trns_colour;  // gray / RGB images: the transparent colour
  std::vector<uint8_t> data;                // packed rows as PNG stores them (16-bit big-endian)
};

void AppendToString(png_structp png, png_bytep data, size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), length);
}

std::string WritePng(const PngSpec& spec) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &out, AppendToString, nullptr);
  png_set_IHDR(png, info, spec.width, spec.height, spec.bit_depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!spec.palette.empty()) png_set_PLTE(png, info, spec.palette.data(), spec.palette.size());
  if (!spec.trns_alpha.empty()) {
    png_set_tRNS(png, info, spec.trns_alpha.data(), spec.trns_alpha.size(), nullptr);
  }
  if (spec.trns_colour) png_set_tRNS(png, info, nullptr, 0, &*spec.trns_colour);
  png_write_info(png, info);
  const size_t rowbytes = png_get_rowbytes(png, info);
  EXPECT_EQ(spec.data.size(), rowbytes * spec.height);
  std::vector<png_bytep> rows(spec.height);
  for (int y = 0; y < spec.height; ++y) rows[y] = const_cast<png_bytep>(spec.data.data()) + y * rowbytes;
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

struct JpegSpec {
  int width = 0;
  int height = 0;
  int components = 3;
  J_COLOR_SPACE in_space = JCS_RGB;
  J_COLOR_SPACE jpeg_space = JCS_YCbCr;  // what the file stores
  int quality = 95;
  bool progressive = false;
  bool adobe_marker = true;           // for CMYK: jpeg_set_colorspace writes one by default
  bool full_chroma = false;           // 4:4:4 instead of 4:2:0
  std::vector<jpeg_scan_info> scans;  // a custom scan script, if not empty
  std::vector<uint8_t> data;          // interleaved samples, rows of width * components
};

std::string WriteJpeg(const JpegSpec& spec) {
  jpeg_compress_struct cinfo{};
  jpeg_error_mgr err{};
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = spec.width;
  cinfo.image_height = spec.height;
  cinfo.input_components = spec.components;
  cinfo.in_color_space = spec.in_space;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, spec.jpeg_space);
  if (!spec.adobe_marker) cinfo.write_Adobe_marker = FALSE;
  if (spec.full_chroma) {
    for (int c = 0; c < cinfo.num_components; ++c) {
      cinfo.comp_info[c].h_samp_factor = 1;
      cinfo.comp_info[c].v_samp_factor = 1;
    }
  }
  jpeg_set_quality(&cinfo, spec.quality, TRUE);
  if (spec.progressive) jpeg_simple_progression(&cinfo);
  if (!spec.scans.empty()) {
    cinfo.scan_info = spec.scans.data();
    cinfo.num_scans = static_cast<int>(spec.scans.size());
  }
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(spec.data.data()) +
                   static_cast<size_t>(cinfo.next_scanline) * spec.width * spec.components;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  jpeg_destroy_compress(&cinfo);
  std::free(buffer);
  return out;
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// A smooth colour image (JPEG-friendly), w x h x 3.
std::vector<uint8_t> Gradient(int w, int h) {
  std::vector<uint8_t> out;
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      out.push_back(static_cast<uint8_t>(20 + 200 * x / std::max(1, w - 1)));
      out.push_back(static_cast<uint8_t>(30 + 180 * y / std::max(1, h - 1)));
      out.push_back(static_cast<uint8_t>(128 + 60 * std::sin((x + y) / 9.0)));
    }
  }
  return out;
}

uint8_t OnWhite(unsigned c, unsigned a) {
  return static_cast<uint8_t>((c * a + 255 * (255 - a) + 127) / 255);
}

void ExpectPixel(const RgbImage& image, int x, int y, int r, int g, int b) {
  const uint8_t* p = image.at(x, y);
  EXPECT_EQ(p[0], r) << "red at " << x << "," << y;
  EXPECT_EQ(p[1], g) << "green at " << x << "," << y;
  EXPECT_EQ(p[2], b) << "blue at " << x << "," << y;
}

// Max and mean absolute difference between an RGB image and expected samples.
std::pair<int, double> Difference(const RgbImage& image, const std::vector<uint8_t>& expected) {
  int max_diff = 0;
  double sum = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const int d = std::abs(int{image.pixels[i]} - int{expected[i]});
    max_diff = std::max(max_diff, d);
    sum += d;
  }
  return {max_diff, sum / expected.size()};
}

void ExpectInvalid(const absl::StatusOr<RgbImage>& result, const std::string& words) {
  ASSERT_FALSE(result.ok()) << "expected an error containing: " << words;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(words));
}

std::string Chunk(const std::string& type, const std::string& data) {
  std::string out;
  const uint32_t n = data.size();
  out += static_cast<char>(n >> 24);
  out += static_cast<char>(n >> 16);
  out += static_cast<char>(n >> 8);
  out += static_cast<char>(n);
  out += type;
  out += data;
  uLong crc = crc32(0, reinterpret_cast<const Bytef*>(type.data()), type.size());
  crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data()), data.size());
  out += static_cast<char>(crc >> 24);
  out += static_cast<char>(crc >> 16);
  out += static_cast<char>(crc >> 8);
  out += static_cast<char>(crc);
  return out;
}

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// A hand-made PNG: IHDR claiming width x height (8-bit RGB), one small IDAT, IEND.
std::string HandMadePng(uint32_t width, uint32_t height) {
  std::string ihdr = Be32(width) + Be32(height) + std::string("\x08\x02\x00\x00\x00", 5);
  std::string raw(4096, '\0');
  uLongf size = compressBound(raw.size());
  std::string z(size, '\0');
  compress(reinterpret_cast<Bytef*>(z.data()), &size, reinterpret_cast<const Bytef*>(raw.data()), raw.size());
  z.resize(size);
  return std::string("\x89PNG\r\n\x1a\n", 8) + Chunk("IHDR", ihdr) + Chunk("IDAT", z) + Chunk("IEND", "");
}

// Offset of the JPEG SOF0/SOF2 marker's height field.
size_t SofHeightOffset(const std::string& jpeg) {
  for (size_t i = 2; i + 8 < jpeg.size(); ++i) {
    if (static_cast<uint8_t>(jpeg[i]) == 0xFF &&
        (static_cast<uint8_t>(jpeg[i + 1]) == 0xC0 || static_cast<uint8_t>(jpeg[i + 1]) == 0xC2)) {
      return i + 5;  // FF C0, length (2), precision (1), height (2), width (2)
    }
  }
  return std::string::npos;
}

// Offset of the first byte of entropy-coded data (after the first SOS segment).
size_t ScanDataOffset(const std::string& jpeg) {
  for (size_t i = 2; i + 4 < jpeg.size(); ++i) {
    if (static_cast<uint8_t>(jpeg[i]) == 0xFF && static_cast<uint8_t>(jpeg[i + 1]) == 0xDA) {
      const size_t length = (static_cast<uint8_t>(jpeg[i + 2]) << 8) | static_cast<uint8_t>(jpeg[i + 3]);
      return i + 2 + length;
    }
  }
  return std::string::npos;
}

// Offset just past the last IDAT chunk of a PNG.
size_t EndOfIdat(const std::string& png) {
  size_t pos = 8, end = 0;
  while (pos + 8 <= png.size()) {
    const uint32_t length = (static_cast<uint8_t>(png[pos]) << 24) |
                            (static_cast<uint8_t>(png[pos + 1]) << 16) |
                            (static_cast<uint8_t>(png[pos + 2]) << 8) | static_cast<uint8_t>(png[pos + 3]);
    if (png.compare(pos + 4, 4, "IDAT") == 0) end = pos + 12 + length;
    pos += 12 + length;
  }
  return end;
}

long MaxRssKb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// ------------------------------------------------------------------------------------------------ PNG

TEST(PngCodec, EncodeDecodeRoundTripsRandomImagesOfOddSizes) {
  const std::pair<int, int> sizes[] = {{1, 1},   {2, 3},    {3, 7},   {17, 5},
                                       {31, 29}, {101, 33}, {1, 257}, {257, 1}};
  uint32_t seed = 1;
  for (const auto& [w, h] : sizes) {
    RgbImage image{w, h, RandomBytes(static_cast<size_t>(w) * h * 3, seed++)};
    absl::StatusOr<std::string> png = EncodePng(image);
    ASSERT_TRUE(png.ok()) << png.status();
    EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    absl::StatusOr<RgbImage> back = DecodeImage(*png);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->width, w);
    EXPECT_EQ(back->height, h);
    EXPECT_EQ(back->pixels, image.pixels) << w << "x" << h;
  }
}

TEST(PngCodec, EncodeRefusesMalformedImages) {
  EXPECT_EQ(EncodePng(RgbImage{0, 5, {}}).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::string> bad = EncodePng(RgbImage{2, 2, std::vector<uint8_t>(11)});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("11"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("12"));
}

TEST(PngCodec, Gray8IsReplicatedToRgb) {
  PngSpec spec{.width = 7, .height = 3, .color_type = PNG_COLOR_TYPE_GRAY, .bit_depth = 8};
  spec.data = RandomBytes(21, 7);
  absl::StatusOr<RgbImage> image = DecodeImage(WritePng(spec));
  ASSERT_TRUE(image.ok()) << image.status();
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 7; ++x) {
      const int v = spec.data[y * 7 + x];
      ExpectPixel(*image, x, y, v, v, v);
    }
  }
}

TEST(PngCodec, LowBitDepthGrayIsScaledTo8Bits) {
  for (const int depth : {1, 2, 4}) {
    const int w = 13, h = 2, levels = 1 << depth;
    PngSpec spec{.width = w, .height = h, .color_type = PNG_COLOR_TYPE_GRAY, .bit_depth = depth};
    const size_t rowbytes = (w * depth + 7) / 8;
    spec.data.assign(rowbytes * h, 0);
    std::vector<int> values;
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        const int v = (x + 3 * y) % levels;
        values.push_back(v);
        const int bit = x * depth;
        spec.data[y * rowbytes + bit / 8] |= static_cast<uint8_t>(v << (8 - depth - bit % 8));
      }
    }
    absl::StatusOr<RgbImage> image = DecodeImage(WritePng(spec));
    ASSERT_TRUE(image.ok()) << image.status();
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        const int v = values[y * w + x] * 255 / (levels - 1);
        ExpectPixel(*image, x, y, v, v, v);
      }
    }
  }
}

TEST(PngCodec, PaletteWithTransparencyIsExpandedAndComposited) {
  PngSpec spec{.width = 4, .height = 2, .color_type = PNG_COLOR_TYPE_PALETTE, .bit_depth = 2};
  spec.palette = {{200, 10, 20}, {0, 128, 255}, {7, 8, 9}, {40, 50, 60}};
  spec.trns_alpha = {255, 0, 128};  // entry 3 has no alpha: opaque
  // Indices 0 1 2 3 / 3 2 1 0, two bits each.
  spec.data = {0b00011011, 0b11100100};
  absl::StatusOr<RgbImage> image = DecodeImage(WritePng(spec));
  ASSERT_TRUE(image.ok()) << image.status();
  ExpectPixel(*image, 0, 0, 200, 10, 20);
  ExpectPixel(*image, 1, 0, 255, 255, 255);  // fully transparent: white
  ExpectPixel(*image, 2, 0, OnWhite(7, 128), OnWhite(8, 128), OnWhite(9, 128));
  ExpectPixel(*image, 3, 0, 40, 50, 60);
  ExpectPixel(*image, 0, 1, 40, 50, 60);
  ExpectPixel(*image, 3, 1, 200, 10, 20);
}

TEST(PngCodec, SixteenBitSamplesAreRoundedTo8Bits) {
  const int w = 9, h = 4;
  const std::vector<uint8_t> random = RandomBytes(w * h * 8, 16);
  for (const int color_type : {PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_RGB_ALPHA}) {
    const int channels = color_type == PNG_COLOR_TYPE_RGB ? 3 : color_type == PNG_COLOR_TYPE_GRAY ? 1 : 4;
    PngSpec spec{.width = w, .height = h, .color_type = color_type, .bit_depth = 16};
    spec.data.assign(random.begin(), random.begin() + w * h * channels * 2);
    absl::StatusOr<RgbImage> image = DecodeImage(WritePng(spec));
    ASSERT_TRUE(image.ok()) << image.status();
    for (int i = 0; i < w * h; ++i) {
      auto sample = [&](int c) {
        const int v16 = (spec.data[2 * (i * channels + c)] << 8) | spec.data[2 * (i * channels + c) + 1];
        return static_cast<unsigned>(std::lround(v16 * 255.0 / 65535.0));
      };
      for (int c = 0; c < 3; ++c) {
        unsigned expected = sample(channels == 1 ? 0 : c);
        if (channels == 4) expected = OnWhite(expected, sample(3));
        EXPECT_EQ(image->pixels[3 * i + c], expected)
            << "type " << color_type << " pixel " << i << " channel " << c;
      }
    }
  }
}

TEST(PngCodec, AlphaIsCompositedOnWhite) {
  const int w = 16, h = 16;
  PngSpec rgba{.width = w, .height = h, .color_type = PNG_COLOR_TYPE_RGB_ALPHA, .bit_depth = 8};
  rgba.data = RandomBytes(w * h * 4, 21);
  rgba.data[3] = 255;  // pixel 0 opaque
  rgba.data[7] = 0;    // pixel 1 transparent
  absl::StatusOr<RgbImage> image = DecodeImage(WritePng(rgba));
  ASSERT_TRUE(image.ok()) << image.status();
  for (int i = 0; i < w * h; ++i) {
    const uint8_t* in = &rgba.data[4 * i];
    for (int c = 0; c < 3; ++c) EXPECT_EQ(image->pixels[3 * i + c], OnWhite(in[c], in[3])) << i;
  }
  ExpectPixel(*image, 0, 0, rgba.data[0], rgba.data[1], rgba.data[2]);
  ExpectPixel(*image, 1, 0, 255, 255, 255);

  PngSpec gray_alpha{.width = w, .height = h, .color_type = PNG_COLOR_TYPE_GRAY_ALPHA, .bit_depth = 8};
  gray_alpha.data = RandomBytes(w * h * 2, 22);
  image = DecodeImage(WritePng(gray_alpha));
  ASSERT_TRUE(image.ok()) << image.status();
  for (int i = 0; i < w * h; ++i) {
    const uint8_t v = OnWhite(gray_alpha.data[2 * i], gray_alpha.data[2 * i + 1]);
    ExpectPixel(*image, i % w, i / w, v, v, v);
  }
}

TEST(PngCodec, RgbColourKeyBecomesWhite) {
  PngSpec spec{.width = 2, .height = 1, .color_type = PNG_COLOR_TYPE_RGB, .bit_depth = 8};
  spec.data = {1, 2, 3, 9, 9, 9};
  spec.trns_colour = png_color_16{0, 1, 2, 3, 0};
  absl::StatusOr<RgbImage> image = DecodeImage(WritePng(spec));
  ASSERT_TRUE(image.ok()) << image.status();
  ExpectPixel(*image, 0, 0, 255, 255, 255);
  ExpectPixel(*image, 1, 0, 9, 9, 9);
}

TEST(PngCodec, InterlacedImagesDecode) {
  for (const int color_type : {PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA}) {
    const int w = 37, h = 23, channels = color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
    PngSpec spec{.width = w, .height = h, .color_type = color_type, .bit_depth = 8, .interlaced = true};
    spec.data = RandomBytes(w * h * channels, 37);
    absl::StatusOr<RgbImage> image = DecodeImage(WritePng(spec));
    ASSERT_TRUE(image.ok()) << image.status();
    for (int i = 0; i < w * h; ++i) {
      const uint8_t* in = &spec.data[channels * i];
      for (int c = 0; c < 3; ++c) {
        EXPECT_EQ(image->pixels[3 * i + c], channels == 3 ? in[c] : OnWhite(in[c], in[3])) << i;
      }
    }
  }
}

// ----------------------------------------------------------------------------------------------- JPEG

TEST(JpegCodec, BaselineDecodesWithinTolerance) {
  const int w = 67, h = 45;
  JpegSpec spec{.width = w, .height = h};
  spec.data = Gradient(w, h);
  for (const bool full_chroma : {false, true}) {
    spec.full_chroma = full_chroma;
    absl::StatusOr<RgbImage> image = DecodeImage(WriteJpeg(spec));
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->width, w);
    EXPECT_EQ(image->height, h);
    const auto [max_diff, mean_diff] = Difference(*image, spec.data);
    EXPECT_LE(max_diff, 12) << "4:4:4 " << full_chroma;
    EXPECT_LE(mean_diff, 2.0) << "4:4:4 " << full_chroma;
  }
}

TEST(JpegCodec, ProgressiveDecodesWithinTolerance) {
  const int w = 50, h = 61;
  JpegSpec spec{.width = w, .height = h, .progressive = true};
  spec.data = Gradient(w, h);
  absl::StatusOr<RgbImage> image = DecodeImage(WriteJpeg(spec));
  ASSERT_TRUE(image.ok()) << image.status();
  const auto [max_diff, mean_diff] = Difference(*image, spec.data);
  EXPECT_LE(max_diff, 12);
  EXPECT_LE(mean_diff, 2.0);
}

TEST(JpegCodec, GrayscaleIsReplicatedToRgb) {
  const int w = 33, h = 17;
  JpegSpec spec{
      .width = w, .height = h, .components = 1, .in_space = JCS_GRAYSCALE, .jpeg_space = JCS_GRAYSCALE};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) spec.data.push_back(static_cast<uint8_t>(10 + 7 * x));
  }
  absl::StatusOr<RgbImage> image = DecodeImage(WriteJpeg(spec));
  ASSERT_TRUE(image.ok()) << image.status();
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const uint8_t* p = image->at(x, y);
      EXPECT_EQ(p[0], p[1]);
      EXPECT_EQ(p[1], p[2]);
      EXPECT_NEAR(p[0], 10 + 7 * x, 6) << x << "," << y;
    }
  }
}

// Flat colour blocks so that the lossy coding barely moves the samples.
JpegSpec CmykSpec(const uint8_t (&left)[4], const uint8_t (&right)[4], bool adobe) {
  const int w = 32, h = 16;
  JpegSpec spec{.width = w,
                .height = h,
                .components = 4,
                .in_space = JCS_CMYK,
                .jpeg_space = JCS_CMYK,
                .quality = 100,
                .adobe_marker = adobe};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const uint8_t* s = x < w / 2 ? left : right;
      spec.data.insert(spec.data.end(), s, s + 4);
    }
  }
  return spec;
}

TEST(JpegCodec, CmykIsConvertedNaively) {
  const uint8_t left[4] = {200, 100, 50, 255}, right[4] = {200, 100, 50, 128};
  // Adobe marker: samples are inverted (255 = no ink), R = C * K / 255.
  absl::StatusOr<RgbImage> image = DecodeImage(WriteJpeg(CmykSpec(left, right, /*adobe=*/true)));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_NEAR(image->at(4, 8)[0], 200, 3);
  EXPECT_NEAR(image->at(4, 8)[1], 100, 3);
  EXPECT_NEAR(image->at(4, 8)[2], 50, 3);
  EXPECT_NEAR(image->at(28, 8)[0], 200 * 128 / 255.0, 3);
  EXPECT_NEAR(image->at(28, 8)[1], 100 * 128 / 255.0, 3);
  EXPECT_NEAR(image->at(28, 8)[2], 50 * 128 / 255.0, 3);
  // No Adobe marker: plain CMYK, R = (255 - C) * (255 - K) / 255.
  const uint8_t plain[4] = {55, 155, 205, 0};
  image = DecodeImage(WriteJpeg(CmykSpec(plain, plain, /*adobe=*/false)));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_NEAR(image->at(10, 3)[0], 200, 3);
  EXPECT_NEAR(image->at(10, 3)[1], 100, 3);
  EXPECT_NEAR(image->at(10, 3)[2], 50, 3);
}

TEST(JpegCodec, YcckIsConverted) {
  const uint8_t left[4] = {200, 100, 50, 255}, right[4] = {30, 220, 140, 200};
  JpegSpec spec = CmykSpec(left, right, /*adobe=*/true);
  spec.jpeg_space = JCS_YCCK;
  absl::StatusOr<RgbImage> image = DecodeImage(WriteJpeg(spec));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_NEAR(image->at(4, 8)[0], 200, 4);
  EXPECT_NEAR(image->at(4, 8)[1], 100, 4);
  EXPECT_NEAR(image->at(4, 8)[2], 50, 4);
  EXPECT_NEAR(image->at(28, 8)[0], 30 * 200 / 255.0, 4);
  EXPECT_NEAR(image->at(28, 8)[1], 220 * 200 / 255.0, 4);
  EXPECT_NEAR(image->at(28, 8)[2], 140 * 200 / 255.0, 4);
}

TEST(JpegCodec, LosslessAndTwelveBitAreRefusedAsUnsupported) {
  JpegSpec spec{.width = 8, .height = 8};
  spec.data = Gradient(8, 8);
  const std::string jpeg = WriteJpeg(spec);
  const size_t height = SofHeightOffset(jpeg);
  ASSERT_NE(height, std::string::npos);
  std::string lossless = jpeg;
  lossless[height - 4] = static_cast<char>(0xC3);  // SOF0 -> SOF3
  ExpectInvalid(DecodeImage(lossless), "unsupported JPEG: Unsupported JPEG process: SOF type 0xc3");
  std::string twelve_bit = jpeg;
  twelve_bit[height - 1] = 12;  // sample precision
  ExpectInvalid(DecodeImage(twelve_bit), "unsupported JPEG: Unsupported JPEG data precision 12");
}

TEST(JpegCodec, UnknownColourSpaceIsRefused) {
  JpegSpec spec{.width = 8, .height = 8, .components = 2, .in_space = JCS_UNKNOWN, .jpeg_space = JCS_UNKNOWN};
  spec.data.assign(8 * 8 * 2, 100);
  ExpectInvalid(DecodeImage(WriteJpeg(spec)), "unsupported JPEG colour space (2 components");
}

// Progressive scripts: 1 + 4 * 63 scans per component (DC, then every AC coefficient on its own in four
// successive-approximation steps).
std::vector<jpeg_scan_info> ManyScans(int components) {
  std::vector<jpeg_scan_info> scans;
  for (int c = 0; c < components; ++c) scans.push_back({1, {c, 0, 0, 0}, 0, 0, 0, 0});
  for (int c = 0; c < components; ++c) {
    for (int k = 1; k < 64; ++k) {
      scans.push_back({1, {c, 0, 0, 0}, k, k, 0, 3});
      scans.push_back({1, {c, 0, 0, 0}, k, k, 3, 2});
      scans.push_back({1, {c, 0, 0, 0}, k, k, 2, 1});
      scans.push_back({1, {c, 0, 0, 0}, k, k, 1, 0});
    }
  }
  return scans;
}

TEST(JpegCodec, ScanLimitRefusesMoreThan500Scans) {
  // 253 scans: decodes.
  JpegSpec gray{.width = 16,
                .height = 16,
                .components = 1,
                .in_space = JCS_GRAYSCALE,
                .jpeg_space = JCS_GRAYSCALE,
                .scans = ManyScans(1)};
  gray.data.assign(16 * 16, 77);
  absl::StatusOr<RgbImage> image = DecodeImage(WriteJpeg(gray));
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_NEAR(image->at(5, 5)[0], 77, 2);
  // 759 scans: refused.
  JpegSpec colour{.width = 16, .height = 16, .full_chroma = true, .scans = ManyScans(3)};
  colour.data = Gradient(16, 16);
  ExpectInvalid(DecodeImage(WriteJpeg(colour)), "more than 500 scans");
}

// ------------------------------------------------------------------------------------------- refusals

TEST(DecodeErrors, EmptyInput) { ExpectInvalid(DecodeImage(""), "image is empty (0 bytes)"); }

TEST(DecodeErrors, InputAboveTheByteLimit) {
  const std::string png = *EncodePng(RgbImage{4, 4, std::vector<uint8_t>(48, 9)});
  ExpectInvalid(DecodeImage(png, {.max_bytes = 10}),
                absl::StrCat("image is ", png.size(), " bytes, above the limit of 10 bytes"));
  EXPECT_TRUE(DecodeImage(png, {.max_bytes = static_cast<int64_t>(png.size())}).ok());
}

TEST(DecodeErrors, UnsupportedFormatsAreNamed) {
  ExpectInvalid(DecodeImage(std::string("GIF89a\x01\x00\x01\x00\x80\x00\x00", 13)),
                "unsupported image format GIF: only PNG and JPEG are accepted");
  ExpectInvalid(DecodeImage(std::string("BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00", 12)),
                "unsupported image format BMP");
  ExpectInvalid(DecodeImage(std::string("RIFF\x10\x00\x00\x00WEBPVP8 ", 16)),
                "unsupported image format WebP");
  ExpectInvalid(DecodeImage(std::string("II*\x00\x08\x00\x00\x00", 8)), "unsupported image format TIFF");
  ExpectInvalid(DecodeImage("hello, world"),
                "unrecognized image format (first bytes 68 65 6c 6c 6f 2c 20 77): only PNG and JPEG");
  ExpectInvalid(DecodeImage(std::string("\x89PN", 3)), "PNG is truncated: 3 bytes end inside the signature");
  ExpectInvalid(DecodeImage(std::string("\xff\xd8", 2)),
                "JPEG is truncated: 2 bytes end inside the signature");
  ExpectInvalid(DecodeImage(std::string("\x89PX", 3)), "unrecognized image format (first bytes 89 50 58)");
}

TEST(DecodeErrors, ZeroSizePng) {
  ExpectInvalid(DecodeImage(HandMadePng(0, 5)), "PNG image has zero width or height (0x5)");
  ExpectInvalid(DecodeImage(HandMadePng(7, 0)), "PNG image has zero width or height (7x0)");
}

TEST(DecodeErrors, ZeroSizeJpeg) {
  JpegSpec spec{.width = 8, .height = 8};
  spec.data = Gradient(8, 8);
  std::string jpeg = WriteJpeg(spec);
  const size_t at = SofHeightOffset(jpeg);
  ASSERT_NE(at, std::string::npos);
  jpeg[at] = 0;
  jpeg[at + 1] = 0;
  ExpectInvalid(DecodeImage(jpeg), "JPEG image has zero width or height");
}

TEST(DecodeErrors, PngBombIsRefusedFromTheHeaderWithoutAllocating) {
  const std::string bomb = HandMadePng(50000, 50000);  // 7.5 GB as RGB, in a file of about 100 bytes
  ASSERT_LT(bomb.size(), 200u);
  const long rss_before = MaxRssKb();
  ExpectInvalid(DecodeImage(bomb),
                "PNG image is 50000x50000 = 2500000000 pixels, above the limit of 40000000 pixels");
  EXPECT_LT(MaxRssKb() - rss_before, 64 * 1024) << "peak RSS grew by more than 64 MiB";
  // Largest possible header values.
  ExpectInvalid(DecodeImage(HandMadePng(0xffffffffu, 0xffffffffu)), "above the limit of 40000000 pixels");
  // The limit is the caller's.
  ExpectInvalid(DecodeImage(HandMadePng(11, 10), {.max_pixels = 100}),
                "11x10 = 110 pixels, above the limit of 100");
}

TEST(DecodeErrors, JpegBombIsRefusedFromTheHeaderWithoutAllocating) {
  for (const bool progressive : {false, true}) {
    JpegSpec spec{.width = 16, .height = 16, .progressive = progressive};
    spec.data = Gradient(16, 16);
    std::string jpeg = WriteJpeg(spec);
    const size_t at = SofHeightOffset(jpeg);
    ASSERT_NE(at, std::string::npos);
    for (int i = 0; i < 4; i += 2) {  // height, then width: 50000 = 0xC350
      jpeg[at + i] = static_cast<char>(0xC3);
      jpeg[at + i + 1] = static_cast<char>(0x50);
    }
    const long rss_before = MaxRssKb();
    ExpectInvalid(DecodeImage(jpeg),
                  "JPEG image is 50000x50000 = 2500000000 pixels, above the limit of 40000000 pixels");
    EXPECT_LT(MaxRssKb() - rss_before, 64 * 1024) << "peak RSS grew by more than 64 MiB";
  }
}

TEST(DecodeErrors, PixelLimitBoundary) {
  const std::string png = *EncodePng(RgbImage{10, 10, std::vector<uint8_t>(300, 1)});
  EXPECT_TRUE(DecodeImage(png, {.max_pixels = 100}).ok());
  ExpectInvalid(DecodeImage(png, {.max_pixels = 99}), "10x10 = 100 pixels, above the limit of 99 pixels");
}

TEST(DecodeErrors, TruncatedPng) {
  const int w = 40, h = 30;
  const std::string png = *EncodePng(RgbImage{w, h, RandomBytes(w * h * 3, 5)});
  const size_t idat_end = EndOfIdat(png);
  ASSERT_GT(idat_end, 100u);
  for (size_t n = 1; n < png.size(); ++n) {
    absl::StatusOr<RgbImage> image = DecodeImage(std::string_view(png).substr(0, n));
    if (n < idat_end) {
      ASSERT_FALSE(image.ok()) << "prefix of " << n << " bytes decoded";
    }
    if (!image.ok()) {
      ASSERT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << image.status();
    }
  }
  ExpectInvalid(DecodeImage(std::string_view(png).substr(0, png.size() / 2)), "PNG is truncated");
  ExpectInvalid(DecodeImage(std::string_view(png).substr(0, 20)), "PNG is truncated");
}

TEST(DecodeErrors, TruncatedJpeg) {
  for (const bool progressive : {false, true}) {
    JpegSpec spec{.width = 40, .height = 24, .progressive = progressive};
    spec.data = Gradient(40, 24);
    const std::string jpeg = WriteJpeg(spec);
    for (size_t n = 1; n < jpeg.size(); ++n) {
      absl::StatusOr<RgbImage> image = DecodeImage(std::string_view(jpeg).substr(0, n));
      ASSERT_FALSE(image.ok()) << "prefix of " << n << " bytes decoded";
      ASSERT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << image.status();
    }
    ExpectInvalid(DecodeImage(std::string_view(jpeg).substr(0, jpeg.size() * 2 / 3)), "JPEG is truncated");
  }
}

TEST(DecodeErrors, CorruptPng) {
  const int w = 20, h = 20;
  const std::string png = *EncodePng(RgbImage{w, h, RandomBytes(w * h * 3, 6)});
  // A flipped byte inside IDAT: zlib's check (or the chunk's CRC) no longer matches.
  std::string bad = png;
  bad[EndOfIdat(png) - 20] ^= 0x55;
  ExpectInvalid(DecodeImage(bad), "corrupt PNG: IDAT");
  // A flipped CRC byte of IHDR.
  bad = png;
  bad[30] ^= 0x01;
  ExpectInvalid(DecodeImage(bad), "corrupt PNG: IHDR: CRC error");
  // Valid chunks around data that is not a zlib stream.
  const std::string garbage = Chunk("IDAT", std::string(300, '\x42'));
  const std::string good_start = png.substr(0, 33);  // signature + IHDR
  ExpectInvalid(DecodeImage(good_start + garbage + Chunk("IEND", "")), "corrupt PNG");
  // IHDR not first.
  ExpectInvalid(DecodeImage(png.substr(0, 8) + Chunk("IEND", "") + png.substr(8)),
                "the first chunk is not IHDR");
}

TEST(DecodeErrors, CorruptJpeg) {
  JpegSpec spec{.width = 64, .height = 64};
  spec.data = Gradient(64, 64);
  const std::string jpeg = WriteJpeg(spec);
  const size_t scan = ScanDataOffset(jpeg);
  ASSERT_NE(scan, std::string::npos);
  // A marker in the middle of the entropy-coded data: premature end of data segment.
  std::string bad = jpeg;
  const size_t mid = (scan + jpeg.size()) / 2;
  bad[mid] = static_cast<char>(0xFF);
  bad[mid + 1] = static_cast<char>(0xD9);
  ExpectInvalid(DecodeImage(bad), "corrupt JPEG");
  // A broken Huffman table definition.
  bad = jpeg;
  const size_t dht = bad.find("\xff\xc4");
  ASSERT_NE(dht, std::string::npos);
  for (size_t i = dht + 5; i < dht + 21; ++i) bad[i] = static_cast<char>(0xFF);  // code counts
  ExpectInvalid(DecodeImage(bad), "corrupt JPEG");
}

// Random damage must give a decoded image or InvalidArgument, never a crash (run this under ASan).
TEST(DecodeErrors, RandomDamageNeverCrashes) {
  const std::string png = *EncodePng(RgbImage{24, 16, RandomBytes(24 * 16 * 3, 8)});
  JpegSpec baseline{.width = 24, .height = 16};
  baseline.data = Gradient(24, 16);
  JpegSpec progressive = baseline;
  progressive.progressive = true;
  const std::string originals[] = {png, WriteJpeg(baseline), WriteJpeg(progressive)};
  std::mt19937 rng(99);
  for (const std::string& original : originals) {
    for (int trial = 0; trial < 400; ++trial) {
      std::string damaged = original;
      const int flips = 1 + rng() % 8;
      for (int f = 0; f < flips; ++f) damaged[3 + rng() % (damaged.size() - 3)] = static_cast<char>(rng());
      absl::StatusOr<RgbImage> image = DecodeImage(damaged);
      if (image.ok()) {
        EXPECT_EQ(image->pixels.size(), static_cast<size_t>(image->width) * image->height * 3);
      } else {
        EXPECT_EQ(image.status().code(), absl::StatusCode::kInvalidArgument) << image.status();
      }
    }
  }
}

// --------------------------------------------------------------------------------------------- raw RGB

TEST(RawRgb, WrapsBytesOfTheRightSize) {
  const std::vector<uint8_t> bytes = RandomBytes(5 * 3 * 3, 3);
  absl::StatusOr<RgbImage> image =
      RawRgbImage(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), 5, 3);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->width, 5);
  EXPECT_EQ(image->height, 3);
  EXPECT_EQ(image->pixels, bytes);
}

TEST(RawRgb, RefusesWrongSizesAndLimits) {
  ExpectInvalid(RawRgbImage(std::string(44, 'x'), 5, 3), "raw RGB data is 44 bytes, expected 45 (5x3x3)");
  ExpectInvalid(RawRgbImage(std::string(46, 'x'), 5, 3), "raw RGB data is 46 bytes, expected 45");
  ExpectInvalid(RawRgbImage("", 0, 3), "raw RGB image size must be positive, got 0x3");
  ExpectInvalid(RawRgbImage("", 4, -2), "raw RGB image size must be positive, got 4x-2");
  ExpectInvalid(RawRgbImage(std::string(300, 'x'), 10, 10, {.max_pixels = 99}),
                "raw RGB image is 10x10 = 100 pixels, above the limit of 99 pixels");
  // The pixel limit is checked before the size, so a huge claim never needs its bytes.
  ExpectInvalid(RawRgbImage("abc", 100000, 100000), "above the limit of 40000000 pixels");
}

TEST(DeclaredPixels, ReadsPngAndJpegHeadersWithoutDecoding) {
  EXPECT_EQ(*DeclaredPixels(HandMadePng(6324, 6324)), int64_t{6324} * 6324);
  EXPECT_EQ(*DeclaredPixels(HandMadePng(0xffffffffu, 3)), int64_t{0xffffffffu} * 3);
  EXPECT_EQ(*DeclaredPixels(HandMadePng(0xffffffffu, 0xffffffffu)), std::numeric_limits<int64_t>::max());
  for (int progressive = 0; progressive < 2; ++progressive) {
    JpegSpec spec;
    spec.width = 37;
    spec.height = 11;
    spec.progressive = progressive == 1;
    spec.data.assign(37 * 11 * 3, 90);
    const std::string jpeg = WriteJpeg(spec);
    EXPECT_EQ(*DeclaredPixels(jpeg), 37 * 11) << progressive;
    EXPECT_EQ(DecodeImage(jpeg)->width * DecodeImage(jpeg)->height, 37 * 11);
    // Cut before the frame header: no size.
    EXPECT_FALSE(DeclaredPixels(jpeg.substr(0, 20)).ok());
  }
  {
    // Junk between segments: libjpeg skips it (a warning) and so does the probe (found by fuzz_image).
    JpegSpec spec;
    spec.width = 5;
    spec.height = 3;
    spec.data.assign(5 * 3 * 3, 7);
    std::string jpeg = WriteJpeg(spec);
    jpeg.insert(20, "junk");  // after the JFIF APP0 segment (2 + 18 bytes)
    EXPECT_EQ(*DeclaredPixels(jpeg), 15);
  }
  EXPECT_EQ(DeclaredPixels("").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(DeclaredPixels("GIF89a....").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(DeclaredPixels(HandMadePng(5, 5).substr(0, 20)).ok());
}

}  // namespace
}  // namespace deltaserve::vision
