#include "vision/draw.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace deltaserve::vision {
namespace {

struct GlyphArt {
  char c;
  const char* rows[kGlyphHeight];  // kGlyphWidth characters each: '#' on, '.' off
};

// Our own 5x7 font, drawn here.
constexpr GlyphArt kFont[] = {
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {'A', {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'B', {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."}},
    {'C', {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."}},
    {'D', {"###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."}},
    {'E', {"#####", "#....", "#....", "####.", "#....", "#....", "#####"}},
    {'F', {"#####", "#....", "#....", "####.", "#....", "#....", "#...."}},
    {'G', {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"}},
    {'H', {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"}},
    {'I', {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'J', {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."}},
    {'K', {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"}},
    {'L', {"#....", "#....", "#....", "#....", "#....", "#....", "#####"}},
    {'M', {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"}},
    {'N', {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"}},
    {'O', {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'P', {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."}},
    {'Q', {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"}},
    {'R', {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"}},
    {'S', {".####", "#....", "#....", ".###.", "....#", "....#", "####."}},
    {'T', {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
    {'U', {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."}},
    {'V', {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'W', {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."}},
    {'X', {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"}},
    {'Y', {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."}},
    {'Z', {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"}},
    {'a', {".....", ".....", ".###.", "....#", ".####", "#...#", ".####"}},
    {'b', {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."}},
    {'c', {".....", ".....", ".###.", "#....", "#....", "#...#", ".###."}},
    {'d', {"....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"}},
    {'e', {".....", ".....", ".###.", "#...#", "#####", "#....", ".###."}},
    {'f', {"..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."}},
    {'g', {".....", ".####", "#...#", "#...#", ".####", "....#", ".###."}},
    {'h', {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'i', {"..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."}},
    {'j', {"...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##.."}},
    {'k', {"#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."}},
    {'l', {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'m', {".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"}},
    {'n', {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'o', {".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."}},
    {'p', {".....", ".....", "####.", "#...#", "####.", "#....", "#...."}},
    {'q', {".....", ".....", ".##.#", "#..##", ".####", "....#", "....#"}},
    {'r', {".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."}},
    {'s', {".....", ".....", ".###.", "#....", ".###.", "....#", "####."}},
    {'t', {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."}},
    {'u', {".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"}},
    {'v', {".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'w', {".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."}},
    {'x', {".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"}},
    {'y', {".....", ".....", "#...#", "#...#", ".####", "....#", ".###."}},
    {'z', {".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"}},
    {' ', {".....", ".....", ".....", ".....", ".....", ".....", "....."}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}},
    {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
    {';', {".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."}},
    {'%', {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"}},
    {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
    {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
    {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
    {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
    {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
    {'[', {".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."}},
    {']', {".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."}},
    {'\'', {"..#..", "..#..", ".#...", ".....", ".....", ".....", "....."}},
    {'"', {".#.#.", ".#.#.", ".#.#.", ".....", ".....", ".....", "....."}},
    {'!', {"..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."}},
    {'?', {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."}},
    {'#', {".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."}},
    {'*', {".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."}},
    {'<', {"...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."}},
    {'>', {".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."}},
    {'@', {".###.", "#...#", "....#", ".##.#", "#.#.#", "#.#.#", ".###."}},
    {'&', {".##..", "#..#.", "#.#..", ".#...", "#.#.#", "#..#.", ".##.#"}},
    {'|', {"..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."}},
};

constexpr GlyphArt kMissing = {'\0', {"#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####"}};

constexpr bool WellFormed(const GlyphArt& g) {
  for (const char* row : g.rows) {
    for (int i = 0; i < kGlyphWidth; ++i) {
      if (row[i] != '#' && row[i] != '.') return false;
    }
    if (row[kGlyphWidth] != '\0') return false;
  }
  return true;
}

constexpr bool FontWellFormed() {
  for (const GlyphArt& g : kFont) {
    if (!WellFormed(g) || static_cast<unsigned char>(g.c) >= 128) return false;
  }
  return WellFormed(kMissing);
}
static_assert(FontWellFormed(), "every glyph is 7 rows of 5 '#' or '.'");

// One glyph as 7 row masks, bit 4 the leftmost column.
using Glyph = std::array<uint8_t, kGlyphHeight>;

constexpr Glyph ToGlyph(const GlyphArt& art) {
  Glyph g{};
  for (int r = 0; r < kGlyphHeight; ++r) {
    for (int i = 0; i < kGlyphWidth; ++i) {
      if (art.rows[r][i] == '#') g[r] |= static_cast<uint8_t>(1u << (kGlyphWidth - 1 - i));
    }
  }
  return g;
}

struct FontTable {
  std::array<Glyph, 128> glyphs{};
  std::array<bool, 128> present{};
  Glyph missing{};
};

constexpr FontTable MakeFontTable() {
  FontTable t;
  for (const GlyphArt& art : kFont) {
    t.glyphs[static_cast<unsigned char>(art.c)] = ToGlyph(art);
    t.present[static_cast<unsigned char>(art.c)] = true;
  }
  t.missing = ToGlyph(kMissing);
  return t;
}

constexpr FontTable kFontTable = MakeFontTable();

const Glyph& GlyphFor(unsigned char c) {
  return c < 128 && kFontTable.present[c] ? kFontTable.glyphs[c] : kFontTable.missing;
}

// UTF-8 continuation bytes do not start a character.
bool StartsCharacter(unsigned char c) { return (c & 0xC0) != 0x80; }

int ClampScale(int scale) { return std::clamp(scale, 1, 64); }

// Pixel index a continuous coordinate falls in, kept within int range.
int FloorToPixel(double v) { return static_cast<int>(std::floor(std::clamp(v, -1e8, 1e8))); }
int CeilToPixel(double v) { return static_cast<int>(std::ceil(std::clamp(v, -1e8, 1e8))); }

}  // namespace

void FillRect(RgbImage& image, int x0, int y0, int x1, int y1, Rgb colour) {
  x0 = std::max(x0, 0);
  y0 = std::max(y0, 0);
  x1 = std::min(x1, image.width);
  y1 = std::min(y1, image.height);
  if (x0 >= x1 || y0 >= y1) return;
  if (image.pixels.size() < static_cast<size_t>(image.width) * image.height * 3) return;
  for (int y = y0; y < y1; ++y) {
    uint8_t* p = image.at(x0, y);
    for (int x = x0; x < x1; ++x, p += 3) {
      p[0] = colour.r;
      p[1] = colour.g;
      p[2] = colour.b;
    }
  }
}

void DrawBox(RgbImage& image, float x0, float y0, float x1, float y1, Rgb colour, int thickness) {
  if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) return;
  if (x1 < x0) std::swap(x0, x1);
  if (y1 < y0) std::swap(y0, y1);
  // Inclusive pixel ranges the box touches.
  const int left = FloorToPixel(x0), top = FloorToPixel(y0);
  const int right = std::max(CeilToPixel(x1) - 1, left), bottom = std::max(CeilToPixel(y1) - 1, top);
  const int t = std::clamp(thickness, 1, 1 << 20);
  // Four bands, each clipped by FillRect; the side bands may overlap the top and bottom ones.
  FillRect(image, left, top, right + 1, std::min(top + t, bottom + 1), colour);
  FillRect(image, left, std::max(bottom - t + 1, top), right + 1, bottom + 1, colour);
  FillRect(image, left, top, std::min(left + t, right + 1), bottom + 1, colour);
  FillRect(image, std::max(right - t + 1, left), top, right + 1, bottom + 1, colour);
}

LabelSize MeasureLabel(std::string_view text, int scale) {
  scale = ClampScale(scale);
  int64_t characters = 0;
  for (const char c : text) characters += StartsCharacter(static_cast<unsigned char>(c)) ? 1 : 0;
  if (characters == 0) return {};
  const int64_t width = characters * kGlyphAdvance * scale - scale;
  return {static_cast<int>(std::min<int64_t>(width, INT32_MAX)), kGlyphHeight * scale};
}

void DrawLabel(RgbImage& image, int x, int y, std::string_view text, Rgb colour, int scale) {
  scale = ClampScale(scale);
  int64_t pen = x;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (!StartsCharacter(c)) continue;
    if (pen >= image.width) break;
    if (pen + kGlyphWidth * scale > 0) {
      const Glyph& g = GlyphFor(c);
      for (int r = 0; r < kGlyphHeight; ++r) {
        for (int i = 0; i < kGlyphWidth; ++i) {
          if ((g[r] >> (kGlyphWidth - 1 - i)) & 1) {
            const int64_t px = pen + int64_t{i} * scale, py = int64_t{y} + int64_t{r} * scale;
            if (py >= image.height || py + scale <= 0) continue;
            FillRect(image, static_cast<int>(px), static_cast<int>(py), static_cast<int>(px + scale),
                     static_cast<int>(py + scale), colour);
          }
        }
      }
    }
    pen += kGlyphAdvance * scale;
  }
}

}  // namespace deltaserve::vision
