#include "vision/image_codec.h"

// jpeglib.h needs FILE and size_t from <cstdio> before it: keep this order.
// clang-format off
#include <cstdio>
#include <csetjmp>
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
// clang-format on

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace deltaserve::vision {
namespace {

// A note on setjmp/longjmp. libpng and libjpeg report errors by calling an error function that must not
// return; ours longjmp back to a setjmp in a small function (PngReadHeader, JpegReadPixels, ...) whose
// frame, like the library frames and callbacks between it and the longjmp, holds no C++ object with a
// destructor: only pointers and plain structs. So the jump skips no destructor, and the C++ objects
// (the output vector, the Status) live in the callers, above the setjmp frame. Nothing here calls
// exit() or prints: warnings are dropped (PNG) or turned into errors (JPEG, see JpegOnEmitMessage).

constexpr size_t kMessageCapacity = 256;
constexpr int kMaxJpegScans = 500;  // as TurboJPEG's TJFLAG_LIMITSCANS

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// Zero size and the pixel limit, from a header's dimensions (before anything is allocated).
absl::Status CheckDimensions(absl::string_view format, uint64_t width, uint64_t height,
                             const DecodeLimits& limits) {
  if (width == 0 || height == 0) {
    return Invalid(absl::StrCat(format, " image has zero width or height (", width, "x", height, ")"));
  }
  const uint64_t pixels = width * height;  // both < 2^32: no overflow
  if (limits.max_pixels < 0 || pixels > static_cast<uint64_t>(limits.max_pixels)) {
    return Invalid(absl::StrCat(format, " image is ", width, "x", height, " = ", pixels,
                                " pixels, above the limit of ", limits.max_pixels, " pixels"));
  }
  return absl::OkStatus();
}

std::string FirstBytesHex(std::string_view bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < 8; ++i) {
    if (i != 0) out += ' ';
    absl::StrAppendFormat(&out, "%02x", static_cast<unsigned char>(bytes[i]));
  }
  return out;
}

bool StartsWith(std::string_view bytes, std::string_view prefix) {
  return bytes.size() >= prefix.size() && bytes.substr(0, prefix.size()) == prefix;
}

constexpr std::string_view kPngSignature("\x89PNG\r\n\x1a\n", 8);
constexpr std::string_view kJpegSignature("\xff\xd8\xff", 3);

// Names formats we recognise but do not decode, for a clearer message; empty if unknown.
std::string_view OtherFormatName(std::string_view b) {
  if (StartsWith(b, "GIF87a") || StartsWith(b, "GIF89a")) return "GIF";
  if (StartsWith(b, "BM")) return "BMP";
  if (b.size() >= 12 && StartsWith(b, "RIFF") && b.substr(8, 4) == "WEBP") return "WebP";
  if (StartsWith(b, std::string_view("II*\0", 4)) || StartsWith(b, std::string_view("MM\0*", 4))) {
    return "TIFF";
  }
  if (b.size() >= 12 && b.substr(4, 4) == "ftyp") {
    const std::string_view brand = b.substr(8, 4);
    if (brand == "avif" || brand == "avis") return "AVIF";
    if (brand == "heic" || brand == "heix" || brand == "mif1" || brand == "msf1") return "HEIF";
  }
  if (StartsWith(b, "\xff\x4f\xff\x51") || StartsWith(b, std::string_view("\0\0\0\x0cjP  ", 8))) {
    return "JPEG 2000";
  }
  if (StartsWith(b, std::string_view("\xff\x0a", 2)) ||
      StartsWith(b, std::string_view("\0\0\0\x0cJXL ", 8))) {
    return "JPEG XL";
  }
  if (StartsWith(b, std::string_view("\0\0\1\0", 4))) return "ICO";
  if (b.size() >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '7') return "PNM";
  if (StartsWith(b, "%PDF")) return "PDF";
  return {};
}

uint32_t ReadBigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// out = (c * a + 255 * (255 - a) + 127) / 255: c composited onto white.
inline uint8_t OnWhite(unsigned c, unsigned a) {
  return static_cast<uint8_t>((c * a + 255 * (255 - a) + 127) / 255);
}

// Compacts `count` RGBA pixels to RGB composited on white, in place (the RGB write never overtakes the
// RGBA read).
void CompositeRgbaOnWhite(uint8_t* data, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* in = data + 4 * i;
    const unsigned a = in[3];
    const uint8_t r = OnWhite(in[0], a), g = OnWhite(in[1], a), b = OnWhite(in[2], a);
    uint8_t* out = data + 3 * i;
    out[0] = r;
    out[1] = g;
    out[2] = b;
  }
}

// ---------------------------------------------------------------------------------------------- PNG

// Everything the libpng callbacks touch: plain data only (see the note on setjmp above).
struct PngContext {
  const unsigned char* data;
  size_t size;
  size_t offset;
  bool truncated;
  char message[kMessageCapacity];
};

[[noreturn]] void PngOnError(png_structp png, png_const_charp message) {
  auto* ctx = static_cast<PngContext*>(png_get_error_ptr(png));
  std::snprintf(ctx->message, sizeof(ctx->message), "%s", message != nullptr ? message : "unknown error");
  png_longjmp(png, 1);
}

void PngOnWarning(png_structp, png_const_charp) {}

void PngReadFromMemory(png_structp png, png_bytep out, size_t length) {
  auto* ctx = static_cast<PngContext*>(png_get_io_ptr(png));
  if (length > ctx->size - ctx->offset) {
    ctx->truncated = true;
    png_error(png, "the data ends early");
  }
  std::memcpy(out, ctx->data + ctx->offset, length);
  ctx->offset += length;
}

struct PngLayout {
  uint32_t width;
  uint32_t height;
  int channels;  // after the transforms: 3 (RGB) or 4 (RGBA)
  size_t rowbytes;
};

// Reads the chunks up to the image data and sets up the conversion to 8-bit RGB or RGBA.
bool PngReadHeader(png_structp png, png_infop info, PngLayout* layout) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // our own pixel limit was checked from IHDR
  // Metadata we never use is skipped unparsed (text and ICC profiles can be zlib-compressed).
  static const png_byte kIgnored[] = "tEXt\0zTXt\0iTXt\0iCCP\0eXIf\0sPLT\0hIST\0";
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, kIgnored, 7);
  png_read_info(png, info);
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  if (bit_depth == 16) png_set_scale_16(png);
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) {
    png_set_gray_to_rgb(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  layout->width = png_get_image_width(png, info);
  layout->height = png_get_image_height(png, info);
  layout->channels = png_get_channels(png, info);
  layout->rowbytes = png_get_rowbytes(png, info);
  return true;
}

bool PngReadRows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

absl::Status PngFailure(const PngContext& ctx) {
  if (ctx.truncated) return Invalid(absl::StrCat("PNG is truncated: ", ctx.message));
  return Invalid(absl::StrCat("corrupt PNG: ", ctx.message));
}

class PngReadGuard {
 public:
  PngReadGuard(png_structp png, png_infop info) : png_(png), info_(info) {}
  ~PngReadGuard() { png_destroy_read_struct(&png_, info_ != nullptr ? &info_ : nullptr, nullptr); }
  PngReadGuard(const PngReadGuard&) = delete;
  PngReadGuard& operator=(const PngReadGuard&) = delete;

 private:
  png_structp png_;
  png_infop info_;
};

absl::StatusOr<RgbImage> DecodePng(std::string_view bytes, const DecodeLimits& limits) {
  // Signature (8) + IHDR length (4) and type (4) + width and height (8): read them ourselves, so the
  // limits are checked before libpng allocates anything.
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 24) {
    return Invalid(absl::StrCat("PNG is truncated: ", bytes.size(), " bytes end inside the header"));
  }
  if (std::memcmp(data + 12, "IHDR", 4) != 0) {
    return Invalid("corrupt PNG: the first chunk is not IHDR");
  }
  const uint32_t header_width = ReadBigEndian32(data + 16);
  const uint32_t header_height = ReadBigEndian32(data + 20);
  if (absl::Status s = CheckDimensions("PNG", header_width, header_height, limits); !s.ok()) return s;

  PngContext ctx{};
  ctx.data = data;
  ctx.size = bytes.size();
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, PngOnError, PngOnWarning);
  if (png == nullptr) return absl::ResourceExhaustedError("PNG decoder could not be created");
  png_infop info = png_create_info_struct(png);
  PngReadGuard guard(png, info);
  if (info == nullptr) return absl::ResourceExhaustedError("PNG decoder could not be created");
  png_set_read_fn(png, &ctx, PngReadFromMemory);

  PngLayout layout{};
  if (!PngReadHeader(png, info, &layout)) return PngFailure(ctx);
  if (layout.width != header_width || layout.height != header_height ||
      (layout.channels != 3 && layout.channels != 4) ||
      layout.rowbytes != static_cast<size_t>(layout.width) * layout.channels) {
    return absl::InternalError(absl::StrCat("PNG decoder produced an unexpected layout: ", layout.width, "x",
                                            layout.height, " with ", layout.channels, " channels"));
  }

  RgbImage image;
  image.width = static_cast<int>(layout.width);
  image.height = static_cast<int>(layout.height);
  const size_t count = static_cast<size_t>(layout.width) * layout.height;
  image.pixels.resize(count * layout.channels);
  std::vector<png_bytep> rows(layout.height);
  for (uint32_t y = 0; y < layout.height; ++y) rows[y] = image.pixels.data() + y * layout.rowbytes;
  if (!PngReadRows(png, rows.data())) return PngFailure(ctx);
  if (layout.channels == 4) {
    CompositeRgbaOnWhite(image.pixels.data(), count);
    image.pixels.resize(count * 3);
  }
  return image;
}

// --------------------------------------------------------------------------------------------- JPEG

// Everything the libjpeg callbacks touch: plain data only (see the note on setjmp above). `mgr` comes
// first so that cinfo->err points at the whole struct.
struct JpegErrorContext {
  jpeg_error_mgr mgr;
  jpeg_progress_mgr progress;
  jmp_buf jump;
  bool truncated;
  bool empty;
  bool unsupported;
  char message[kMessageCapacity];
};

[[noreturn]] void JpegFail(j_common_ptr cinfo) {
  auto* ctx = reinterpret_cast<JpegErrorContext*>(cinfo->err);
  std::longjmp(ctx->jump, 1);
}

[[noreturn]] void JpegOnErrorExit(j_common_ptr cinfo) {
  auto* ctx = reinterpret_cast<JpegErrorContext*>(cinfo->err);
  char buffer[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buffer);
  // "Corrupt JPEG data: bad Huffman code" reads "corrupt JPEG: bad Huffman code" in our message.
  static constexpr char kPrefix[] = "Corrupt JPEG data: ";
  const char* text =
      std::strncmp(buffer, kPrefix, sizeof(kPrefix) - 1) == 0 ? buffer + sizeof(kPrefix) - 1 : buffer;
  std::snprintf(ctx->message, sizeof(ctx->message), "%s", text);
  switch (cinfo->err->msg_code) {
    case JERR_EMPTY_IMAGE:
      ctx->empty = true;
      break;
    case JERR_BAD_PRECISION:    // 12-bit samples
    case JERR_SOF_UNSUPPORTED:  // lossless and hierarchical JPEG
    case JERR_ARITH_NOTIMPL:
    case JERR_NOT_COMPILED:
    case JERR_CCIR601_NOTIMPL:
      ctx->unsupported = true;
      break;
    default:
      break;
  }
  JpegFail(cinfo);
}

// libjpeg reports damaged entropy-coded data as warnings and carries on, filling with gray; we stop
// instead (as TurboJPEG's TJFLAG_STOPONWARNING). Warnings about metadata only are let through.
void JpegOnEmitMessage(j_common_ptr cinfo, int msg_level) {
  if (msg_level >= 0) return;  // trace messages
  switch (cinfo->err->msg_code) {
    case JWRN_ADOBE_XFORM:      // unknown Adobe transform code: the default is used
    case JWRN_JFIF_MAJOR:       // unknown JFIF revision
    case JWRN_BOGUS_ICC:        // bad ICC marker: we ignore ICC profiles anyway
    case JWRN_EXTRANEOUS_DATA:  // junk bytes between markers
      return;
    case JWRN_JPEG_EOF:
      reinterpret_cast<JpegErrorContext*>(cinfo->err)->truncated = true;
      break;
    default:
      break;
  }
  JpegOnErrorExit(cinfo);
}

void JpegOnProgress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  if (reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number > kMaxJpegScans) {
    auto* ctx = reinterpret_cast<JpegErrorContext*>(cinfo->err);
    std::snprintf(ctx->message, sizeof(ctx->message), "progressive JPEG has more than %d scans (the limit)",
                  kMaxJpegScans);
    JpegFail(cinfo);
  }
}

// Creates the decompressor and reads the markers up to the first scan.
bool JpegReadHeader(jpeg_decompress_struct* cinfo, JpegErrorContext* err, const unsigned char* data,
                    size_t size) {
  cinfo->err = jpeg_std_error(&err->mgr);
  err->mgr.error_exit = JpegOnErrorExit;
  err->mgr.emit_message = JpegOnEmitMessage;
  if (setjmp(err->jump)) return false;
  jpeg_create_decompress(cinfo);
  err->progress.progress_monitor = JpegOnProgress;
  cinfo->progress = &err->progress;
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(cinfo, TRUE);
  return true;
}

bool JpegReadPixels(jpeg_decompress_struct* cinfo, JpegErrorContext* err, unsigned char* out,
                    size_t row_stride) {
  if (setjmp(err->jump)) return false;
  jpeg_start_decompress(cinfo);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out + static_cast<size_t>(cinfo->output_scanline) * row_stride;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

absl::Status JpegFailure(const JpegErrorContext& err) {
  if (err.empty) return Invalid(absl::StrCat("JPEG image has zero width or height (", err.message, ")"));
  if (err.truncated) return Invalid(absl::StrCat("JPEG is truncated: ", err.message));
  if (err.unsupported) return Invalid(absl::StrCat("unsupported JPEG: ", err.message));
  return Invalid(absl::StrCat("corrupt JPEG: ", err.message));
}

absl::StatusOr<RgbImage> DecodeJpeg(std::string_view bytes, const DecodeLimits& limits) {
  jpeg_decompress_struct cinfo{};
  JpegErrorContext err{};
  // Destroying a zeroed or created decompressor is safe; this runs on every path out.
  struct Destroy {
    jpeg_decompress_struct* cinfo;
    ~Destroy() { jpeg_destroy_decompress(cinfo); }
  } destroy{&cinfo};

  if (!JpegReadHeader(&cinfo, &err, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size())) {
    return JpegFailure(err);
  }
  if (absl::Status s = CheckDimensions("JPEG", cinfo.image_width, cinfo.image_height, limits); !s.ok()) {
    return s;
  }
  bool cmyk = false;
  switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
    case JCS_YCbCr:
    case JCS_RGB:
      cinfo.out_color_space = JCS_RGB;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      cinfo.out_color_space = JCS_CMYK;
      cmyk = true;
      break;
    default:
      return Invalid(absl::StrCat("unsupported JPEG colour space (", cinfo.num_components,
                                  " components of unknown meaning): only grayscale, YCbCr, RGB, CMYK "
                                  "and YCCK are accepted"));
  }
  const int channels = cmyk ? 4 : 3;
  RgbImage image;
  image.width = static_cast<int>(cinfo.image_width);
  image.height = static_cast<int>(cinfo.image_height);
  const size_t count = static_cast<size_t>(cinfo.image_width) * cinfo.image_height;
  image.pixels.resize(count * channels);
  if (!JpegReadPixels(&cinfo, &err, image.pixels.data(), static_cast<size_t>(image.width) * channels)) {
    return JpegFailure(err);
  }
  if (cinfo.output_width != cinfo.image_width || cinfo.output_height != cinfo.image_height ||
      cinfo.output_components != channels) {
    return absl::InternalError("JPEG decoder produced an unexpected layout");
  }
  if (cmyk) {
    const bool inverted = cinfo.saw_Adobe_marker;
    uint8_t* p = image.pixels.data();
    for (size_t i = 0; i < count; ++i) {
      unsigned c = p[4 * i], m = p[4 * i + 1], y = p[4 * i + 2], k = p[4 * i + 3];
      if (!inverted) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
      p[3 * i] = static_cast<uint8_t>((c * k + 127) / 255);
      p[3 * i + 1] = static_cast<uint8_t>((m * k + 127) / 255);
      p[3 * i + 2] = static_cast<uint8_t>((y * k + 127) / 255);
    }
    image.pixels.resize(count * 3);
  }
  return image;
}

}  // namespace

absl::StatusOr<RgbImage> DecodeImage(std::string_view bytes, const DecodeLimits& limits) {
  if (bytes.empty()) return Invalid("image is empty (0 bytes)");
  if (limits.max_bytes < 0 || bytes.size() > static_cast<uint64_t>(limits.max_bytes)) {
    return Invalid(
        absl::StrCat("image is ", bytes.size(), " bytes, above the limit of ", limits.max_bytes, " bytes"));
  }
  if (StartsWith(bytes, kPngSignature)) return DecodePng(bytes, limits);
  if (StartsWith(bytes, kJpegSignature)) return DecodeJpeg(bytes, limits);
  if (StartsWith(kPngSignature, bytes)) {
    return Invalid(absl::StrCat("PNG is truncated: ", bytes.size(), " bytes end inside the signature"));
  }
  if (StartsWith(kJpegSignature, bytes)) {
    return Invalid(absl::StrCat("JPEG is truncated: ", bytes.size(), " bytes end inside the signature"));
  }
  if (const std::string_view name = OtherFormatName(bytes); !name.empty()) {
    return Invalid(absl::StrCat("unsupported image format ", absl::string_view(name.data(), name.size()),
                                ": only PNG and JPEG are accepted"));
  }
  return Invalid(absl::StrCat("unrecognized image format (first bytes ", FirstBytesHex(bytes),
                              "): only PNG and JPEG are accepted"));
}

absl::StatusOr<RgbImage> RawRgbImage(std::string_view bytes, int width, int height,
                                     const DecodeLimits& limits) {
  if (width <= 0 || height <= 0) {
    return Invalid(absl::StrCat("raw RGB image size must be positive, got ", width, "x", height));
  }
  if (absl::Status s =
          CheckDimensions("raw RGB", static_cast<uint64_t>(width), static_cast<uint64_t>(height), limits);
      !s.ok()) {
    return s;
  }
  const uint64_t expected = static_cast<uint64_t>(width) * static_cast<uint64_t>(height) * 3;
  if (bytes.size() != expected) {
    return Invalid(absl::StrCat("raw RGB data is ", bytes.size(), " bytes, expected ", expected, " (", width,
                                "x", height, "x3)"));
  }
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.assign(reinterpret_cast<const uint8_t*>(bytes.data()),
                      reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size());
  return image;
}

absl::StatusOr<std::string> EncodePng(const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0) {
    return Invalid(absl::StrCat("cannot encode an image of size ", image.width, "x", image.height));
  }
  const uint64_t expected = static_cast<uint64_t>(image.width) * static_cast<uint64_t>(image.height) * 3;
  if (image.pixels.size() != expected) {
    return Invalid(absl::StrCat("cannot encode: image has ", image.pixels.size(),
                                " bytes of pixels, expected ", expected, " (", image.width, "x", image.height,
                                "x3)"));
  }
  // The simplified write API keeps libpng's setjmp inside libpng (png_safe_execute).
  png_image desc{};
  desc.version = PNG_IMAGE_VERSION;
  desc.width = static_cast<png_uint_32>(image.width);
  desc.height = static_cast<png_uint_32>(image.height);
  desc.format = PNG_FORMAT_RGB;
  std::string out(PNG_IMAGE_PNG_SIZE_MAX(desc), '\0');
  png_alloc_size_t size = out.size();
  if (!png_image_write_to_memory(&desc, out.data(), &size, /*convert_to_8bit=*/0, image.pixels.data(),
                                 /*row_stride=*/image.width * 3, /*colormap=*/nullptr)) {
    const std::string message = desc.message;
    png_image_free(&desc);
    return absl::InternalError(absl::StrCat("PNG encoding failed: ", message));
  }
  out.resize(size);
  return out;
}

absl::StatusOr<int64_t> DeclaredPixels(std::string_view bytes) {
  auto u8 = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[i])); };
  auto be16 = [&](size_t i) { return (u8(i) << 8) | u8(i + 1); };
  auto be32 = [&](size_t i) { return (be16(i) << 16) | be16(i + 2); };
  static constexpr char kPng[] = "\x89PNG\r\n\x1a\n";
  if (bytes.size() >= 24 && bytes.substr(0, 8) == std::string_view(kPng, 8) && bytes.substr(12, 4) == "IHDR") {
    // Two 32-bit sides can overflow int64 (found by fuzz_image): saturate, any such size is refused later.
    int64_t pixels = 0;
    if (__builtin_mul_overflow(static_cast<int64_t>(be32(16)), static_cast<int64_t>(be32(20)), &pixels))
      return std::numeric_limits<int64_t>::max();
    return pixels;
  }
  if (bytes.size() >= 4 && u8(0) == 0xff && u8(1) == 0xd8) {
    // Walk the markers up to the first frame header (SOF0..SOF15 but DHT C4, JPG C8, DAC CC) the way
    // libjpeg's marker reader does, so the size is the one it will decode: bytes between segments that
    // are not 0xFF are skipped, as are fill bytes (FF FF) and stuffed zeros (FF 00).
    const size_t n = bytes.size();
    size_t i = 2;
    while (true) {
      while (i < n && u8(i) != 0xff) ++i;
      while (i < n && u8(i) == 0xff) ++i;
      if (i >= n) break;
      const uint32_t marker = u8(i++);  // i is now at the segment's length, if it has one
      if (marker == 0x00 || marker == 0xd8 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue;
      if (marker == 0xda || marker == 0xd9) break;  // scan data or the end before any frame header
      if (i + 2 > n) break;
      if (marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc) {
        if (i + 7 > n) break;
        return static_cast<int64_t>(be16(i + 3)) * static_cast<int64_t>(be16(i + 5));  // height * width
      }
      // libjpeg reads a length below 2 and skips nothing more: the next marker is searched from there.
      const uint32_t length = be16(i);
      i += length < 2 ? 2 : length;
    }
  }
  return absl::NotFoundError("no PNG or JPEG header with a size");
}

}  // namespace deltaserve::vision
