// Drawing detections onto an RgbImage: box outlines and text labels in a built-in 5x7 bitmap font
// (for `deltaserve-cli detect --draw`). Everything is clipped to the image; nothing here fails.
#ifndef DELTASERVE_SERVER_VISION_DRAW_H_
#define DELTASERVE_SERVER_VISION_DRAW_H_

#include <string_view>

#include "vision/image.h"

namespace deltaserve::vision {

// Fills the pixels x0 <= x < x1, y0 <= y < y1 (clipped to the image).
void FillRect(RgbImage& image, int x0, int y0, int x1, int y1, Rgb colour);

// Outlines a box given in continuous pixel coordinates (pixel i spans [i, i + 1), as detections are):
// the outline runs over the pixels the box touches, columns floor(x0) .. ceil(x1) - 1 and rows
// floor(y0) .. ceil(y1) - 1 (at least one of each), and is `thickness` pixels wide, growing inwards.
// Corners may come in either order; boxes partly or wholly outside the image are clipped, and a box
// with a NaN or infinite coordinate draws nothing. thickness < 1 counts as 1.
void DrawBox(RgbImage& image, float x0, float y0, float x1, float y1, Rgb colour, int thickness = 2);

// The font: 5x7 glyphs in 6x8 cells (one pixel of spacing right and below), times `scale`. It has the
// ASCII letters (both cases), the digits, space and  ! " # % & ' ( ) * + , - . / : ; < = > ? @ [ ] _ |.
// Other characters draw as a hollow box (one per UTF-8 character, not per byte).
inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 7;
inline constexpr int kGlyphAdvance = 6;
inline constexpr int kLineHeight = 8;

// The size DrawLabel covers for `text`: width = characters * 6 * scale - scale (no trailing gap), height
// = 7 * scale; {0, 0} for empty text. scale is clamped to [1, 64].
struct LabelSize {
  int width = 0;
  int height = 0;
};
LabelSize MeasureLabel(std::string_view text, int scale = 1);

// Draws `text` on one line with its top-left corner at (x, y), in `colour`, each font pixel a
// scale x scale square (scale clamped to [1, 64]). Only the glyphs' pixels are written: for a label on
// a solid background, FillRect the MeasureLabel area (plus a margin) first.
void DrawLabel(RgbImage& image, int x, int y, std::string_view text, Rgb colour, int scale = 1);

}  // namespace deltaserve::vision

#endif  // DELTASERVE_SERVER_VISION_DRAW_H_
