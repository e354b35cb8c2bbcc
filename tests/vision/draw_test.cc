// DrawBox, FillRect, MeasureLabel and DrawLabel: exact pixels, clipping, and degenerate input.
#include "vision/draw.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace deltaserve::vision {
namespace {

constexpr Rgb kRed{255, 0, 0};
constexpr Rgb kBlack{0, 0, 0};

RgbImage Blank(int w, int h) {
  return RgbImage{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3, 0)};
}

Rgb PixelAt(const RgbImage& image, int x, int y) {
  const uint8_t* p = image.at(x, y);
  return {p[0], p[1], p[2]};
}

int CountColour(const RgbImage& image, Rgb colour) {
  int n = 0;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) n += PixelAt(image, x, y) == colour ? 1 : 0;
  }
  return n;
}

// The image as text, '#' for red: what a failing test prints.
std::string Render(const RgbImage& image) {
  std::string out;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) out += PixelAt(image, x, y) == kRed ? '#' : '.';
    out += '\n';
  }
  return out;
}

TEST(Draw, FillRectClips) {
  RgbImage image = Blank(5, 4);
  FillRect(image, -3, -3, 2, 2, kRed);
  EXPECT_EQ(CountColour(image, kRed), 4);
  FillRect(image, 4, 3, 100, 100, kRed);
  EXPECT_EQ(PixelAt(image, 4, 3), kRed);
  EXPECT_EQ(CountColour(image, kRed), 5);
  FillRect(image, 3, 1, 3, 3, kRed);    // empty
  FillRect(image, 9, 9, 12, 12, kRed);  // outside
  EXPECT_EQ(CountColour(image, kRed), 5);
}

TEST(Draw, BoxCoversThePixelsItTouches) {
  RgbImage image = Blank(20, 20);
  DrawBox(image, 2.0f, 3.0f, 10.0f, 12.0f, kRed, 1);  // columns 2..9, rows 3..11
  const std::string expected_row3 = "..########..........";
  const std::string rendered = Render(image);
  EXPECT_EQ(rendered.substr(3 * 21, 20), expected_row3) << rendered;
  EXPECT_EQ(PixelAt(image, 2, 11), kRed) << rendered;
  EXPECT_EQ(PixelAt(image, 9, 11), kRed) << rendered;
  EXPECT_EQ(PixelAt(image, 10, 11), kBlack) << rendered;
  EXPECT_EQ(PixelAt(image, 2, 12), kBlack) << rendered;
  EXPECT_EQ(PixelAt(image, 5, 7), kBlack) << rendered;  // inside
  EXPECT_EQ(CountColour(image, kRed), 2 * 8 + 2 * 7) << rendered;
  // Fractional corners: the pixels they fall in.
  RgbImage same = Blank(20, 20);
  DrawBox(same, 2.4f, 3.9f, 9.1f, 11.5f, kRed, 1);
  EXPECT_EQ(same.pixels, image.pixels) << Render(same);
  // Corners in the other order.
  RgbImage swapped = Blank(20, 20);
  DrawBox(swapped, 10.0f, 12.0f, 2.0f, 3.0f, kRed, 1);
  EXPECT_EQ(swapped.pixels, image.pixels) << Render(swapped);
}

TEST(Draw, ThicknessGrowsInwards) {
  RgbImage image = Blank(12, 12);
  DrawBox(image, 1, 1, 11, 11, kRed, 2);  // pixels 1..10
  EXPECT_EQ(PixelAt(image, 0, 5), kBlack) << Render(image);
  EXPECT_EQ(PixelAt(image, 1, 5), kRed);
  EXPECT_EQ(PixelAt(image, 2, 5), kRed);
  EXPECT_EQ(PixelAt(image, 3, 5), kBlack);
  EXPECT_EQ(PixelAt(image, 9, 5), kRed);
  EXPECT_EQ(PixelAt(image, 10, 5), kRed);
  EXPECT_EQ(PixelAt(image, 11, 5), kBlack);
  EXPECT_EQ(CountColour(image, kRed), 100 - 36) << Render(image);
  // Thicker than the box: filled.
  RgbImage filled = Blank(12, 12);
  DrawBox(filled, 1, 1, 5, 5, kRed, 50);
  EXPECT_EQ(CountColour(filled, kRed), 16) << Render(filled);
  // thickness < 1 counts as 1.
  RgbImage thin = Blank(12, 12);
  DrawBox(thin, 1, 1, 5, 5, kRed, 0);
  EXPECT_EQ(CountColour(thin, kRed), 12) << Render(thin);
}

TEST(Draw, BoxesOutsideAreClippedAndBadInputDrawsNothing) {
  RgbImage image = Blank(10, 10);
  DrawBox(image, -5, -5, 30, 30, kRed, 3);  // every edge outside
  EXPECT_EQ(CountColour(image, kRed), 0) << Render(image);
  DrawBox(image, 7, 2, 40, 5, kRed, 1);  // right edge outside: left edge and parts of top and bottom
  EXPECT_EQ(CountColour(image, kRed), 3 + 3 + 1) << Render(image);
  RgbImage untouched = Blank(10, 10);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  DrawBox(untouched, nan, 0, 5, 5, kRed, 1);
  DrawBox(untouched, 0, 0, inf, 5, kRed, 1);
  DrawBox(untouched, 1e30f, 1e30f, 2e30f, 2e30f, kRed, 1);
  DrawBox(untouched, -1e30f, -1e30f, -2e30f, -2e30f, kRed, 1 << 30);
  EXPECT_EQ(CountColour(untouched, kRed), 0);
  DrawBox(untouched, -1e30f, -1e30f, 1e30f, 1e30f, kRed, 1 << 30);  // edges far outside the image
  EXPECT_EQ(CountColour(untouched, kRed), 0);
}

TEST(Draw, LabelMeasures) {
  EXPECT_EQ(MeasureLabel("").width, 0);
  EXPECT_EQ(MeasureLabel("").height, 0);
  EXPECT_EQ(MeasureLabel("a").width, 5);
  EXPECT_EQ(MeasureLabel("ab").width, 11);
  EXPECT_EQ(MeasureLabel("ab").height, 7);
  EXPECT_EQ(MeasureLabel("ab", 2).width, 22);
  EXPECT_EQ(MeasureLabel("ab", 2).height, 14);
  EXPECT_EQ(MeasureLabel("\xc3\xa9t\xc3\xa9").width, 17);  // "été": three characters
  EXPECT_EQ(MeasureLabel("x", 1000).height, 7 * 64);       // scale clamped
}

TEST(Draw, LabelDrawsGlyphPixels) {
  RgbImage image = Blank(8, 9);
  DrawLabel(image, 1, 1, "A", kRed);
  const std::string expected =
      "........\n"
      "..###...\n"
      ".#...#..\n"
      ".#...#..\n"
      ".#####..\n"
      ".#...#..\n"
      ".#...#..\n"
      ".#...#..\n"
      "........\n";
  EXPECT_EQ(Render(image), expected);

  RgbImage scaled = Blank(20, 20);
  DrawLabel(scaled, 0, 0, "A", kRed, 2);
  EXPECT_EQ(CountColour(scaled, kRed), 4 * CountColour(image, kRed));
}

TEST(Draw, LabelCoversTheCharacterSet) {
  const std::string text =
      "0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz .,:;%-_+=/()[]'\"!?#*<>@&|";
  const LabelSize size = MeasureLabel(text);
  RgbImage image = Blank(size.width, size.height);
  DrawLabel(image, 0, 0, text, kRed);
  // Every character but the spaces sets some pixel in its cell, and none is the missing-glyph box.
  RgbImage box = Blank(5, 7);
  DrawLabel(box, 0, 0, "~", kRed);  // not in the font
  EXPECT_EQ(CountColour(box, kRed), 20) << Render(box);
  for (size_t i = 0; i < text.size(); ++i) {
    RgbImage cell = Blank(5, 7);
    DrawLabel(cell, 0, 0, text.substr(i, 1), kRed);
    if (text[i] == ' ') {
      EXPECT_EQ(CountColour(cell, kRed), 0);
    } else {
      EXPECT_GT(CountColour(cell, kRed), 0) << text[i];
      EXPECT_NE(cell.pixels, box.pixels) << "'" << text[i] << "' draws as the missing glyph";
    }
  }
}

TEST(Draw, LabelsAreClipped) {
  RgbImage image = Blank(10, 10);
  DrawLabel(image, -3, -4, "Wg", kRed, 1);
  DrawLabel(image, 8, 8, "Wg", kRed, 3);
  DrawLabel(image, -1000000, 5, "far left", kRed);
  DrawLabel(image, std::numeric_limits<int>::max() - 2, std::numeric_limits<int>::max() - 2, "corner", kRed,
            64);
  DrawLabel(image, std::numeric_limits<int>::min(), std::numeric_limits<int>::min(), "corner", kRed, 64);
  EXPECT_GT(CountColour(image, kRed), 0);
}

}  // namespace
}  // namespace deltaserve::vision
