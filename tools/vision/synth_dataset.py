#!/usr/bin/env python3
"""Synthetic shapes detection dataset for the PADRe detector (numpy only, deterministic).

    synth_dataset.py --out DIR --split val --count 200 --seed 7 [--width 128 --height 128] [--start 0]

writes DIR/images/<file_name>.png and DIR/instances_<split>.json (COCO "instances" layout).

Image `i` of split `s` is a pure function of (seed, s, i, width, height): its random generator is
numpy's PCG64 seeded with SeedSequence([seed, crc32(s), i]), so any subset of any split can be
regenerated anywhere (bit-identical with the same numpy build; other builds may differ in the last bit
of a float, which can move a pixel by one grey level). Different splits never share a stream.

Contents of one image:
- a background: flat, a linear gradient, soft stripes, a (rotated) checkerboard, or blotches (a sum of
  gaussian blobs), in random colours;
- 1 to 6 objects, drawn in order, each one of the 4 classes (docs/vision.md order: 0 circle, 1 square,
  2 triangle, 3 star), a random colour with a soft shading gradient, contrasting with the background
  under it; squares, (equilateral) triangles and (5-pointed) stars are rotated by a random angle. An
  object's size is the diameter of its circumscribed circle: 10..56 px for a 128-px image, scaled with
  the longer side of other image sizes (so after letterboxing to 128 it is again 10..56 px), at most 90%
  of the shorter side. Objects lie entirely inside the image; a position is re-drawn (up to 10 times)
  when its box overlaps an earlier box by IoU > 0.35, so later objects may partly cover earlier ones;
- anti-aliased edges (4x4 supersampling), then gaussian pixel noise (sigma 0..8 grey levels).

Annotations: an object is annotated when at least 40% of its own coverage stays visible after the later
objects are drawn over it (more than 60% hidden: dropped). Its box is the full extent of the object's
geometry (the tight box of the circle or polygon, sub-pixel, in pixel coordinates where the image spans
[0, W] x [0, H] and pixel (x, y) covers [x, x+1) x [y, y+1)), not clipped to its visible part. `area` is
the visible coverage in pixels. The last object drawn is never covered, so every image has at least one
annotation.

COCO file: images[k] = {"id": i + 1, "file_name", "width", "height", "synth_index": i} for generator
index i (ids start at 1); annotations have ids 1.. in image order, "category_id" = class + 1 (categories
1 circle, 2 square, 3 triangle, 4 star), "bbox" [x, y, w, h] rounded to 1/1000 px, "area", "iscrowd" 0.

PNGs are written by the minimal encoder below (8-bit RGB, filter 0, zlib); read_png() decodes any
non-interlaced 8-bit PNG (grey, grey+alpha, RGB, RGBA; every filter type).
"""
import argparse
import json
import math
import os
import struct
import sys
import time
import zlib

import numpy as np

CLASS_NAMES = ["circle", "square", "triangle", "star"]
NUM_CLASSES = len(CLASS_NAMES)
BASE_SIZE = 128              # object sizes below are for this longer image side
MIN_OBJ, MAX_OBJ = 1, 6
SIZE_RANGE = (10.0, 56.0)    # circumscribed diameter, px at BASE_SIZE
MIN_VISIBLE = 0.4            # annotate objects with at least this fraction of their coverage visible
SUPERSAMPLE = 4
MAX_PLACEMENT_IOU = 0.35
PLACEMENT_TRIES = 10
NOISE_SIGMA_MAX = 8.0
MIN_CONTRAST = 45.0          # mean |object colour - background under it| over RGB, grey levels
STAR_INNER = (0.38, 0.5)     # inner / outer radius of stars
BACKGROUNDS = ("flat", "gradient", "stripes", "checker", "blotches")
BACKGROUND_P = (0.2, 0.25, 0.2, 0.15, 0.2)
GENERATOR_VERSION = 1


def split_code(split):
    return zlib.crc32(split.encode("utf-8")) & 0xFFFFFFFF


def image_rng(seed, split, index):
    return np.random.default_rng(np.random.SeedSequence([int(seed), split_code(split), int(index)]))


# ----------------------------------------------------------------------------------------------------
# Backgrounds


def _rand_colour(rng):
    return rng.uniform(0.0, 255.0, size=3)


def _near_colour(rng, base, spread):
    return np.clip(base + rng.uniform(-spread, spread, size=3), 0.0, 255.0)


def make_background(rng, height, width):
    kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_P))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs += 0.5
    ys += 0.5
    c1 = _rand_colour(rng)
    if kind == "flat":
        img = np.broadcast_to(c1, (height, width, 3)).copy()
    elif kind == "gradient":
        c2 = _rand_colour(rng)
        ang = rng.uniform(0.0, 2 * math.pi)
        t = xs * math.cos(ang) + ys * math.sin(ang)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        img = c1 + (c2 - c1) * t[..., None]
    elif kind == "stripes":
        c2 = _near_colour(rng, c1, 70.0)
        ang = rng.uniform(0.0, math.pi)
        period = rng.uniform(6.0, 24.0)
        phase = rng.uniform(0.0, 2 * math.pi)
        sharp = rng.uniform(0.5, 4.0)
        t = np.sin(2 * math.pi * (xs * math.cos(ang) + ys * math.sin(ang)) / period + phase)
        a = np.clip(0.5 + 0.5 * sharp * t, 0.0, 1.0)
        img = c1 + (c2 - c1) * a[..., None]
    elif kind == "checker":
        c2 = _near_colour(rng, c1, 50.0)
        ang = rng.uniform(0.0, math.pi / 2)
        cell = rng.uniform(4.0, 12.0)
        u = xs * math.cos(ang) + ys * math.sin(ang)
        v = -xs * math.sin(ang) + ys * math.cos(ang)
        a = (np.floor(u / cell) + np.floor(v / cell)) % 2
        img = c1 + (c2 - c1) * a[..., None]
    else:  # blotches
        img = np.broadcast_to(c1, (height, width, 3)).copy()
        n = int(rng.integers(3, 9))
        scale = max(height, width)
        for _ in range(n):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            sig = rng.uniform(0.05, 0.25) * scale
            col = _rand_colour(rng)
            w = rng.uniform(0.3, 0.9) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sig * sig))
            img = img + (col - img) * w[..., None]
    return img, kind


# ----------------------------------------------------------------------------------------------------
# Shapes: geometry relative to the centre, in pixels


def shape_vertices(cls, radius, angle, star_inner=0.45):
    """Polygon vertices (counter-clockwise, [n, 2]) of a square, triangle or star of circumradius
    `radius`, rotated by `angle`; None for the circle."""
    if cls == 0:
        return None
    if cls == 1:
        n, radii = 4, [radius] * 4
    elif cls == 2:
        n, radii = 3, [radius] * 3
    else:
        n, radii = 10, [radius if k % 2 == 0 else radius * star_inner for k in range(10)]
    # Point up (-y) before rotation; vertices evenly spaced.
    base = -math.pi / 2
    pts = []
    for k in range(n):
        a = base + angle + 2 * math.pi * k / n
        pts.append((radii[k] * math.cos(a), radii[k] * math.sin(a)))
    return np.array(pts, dtype=np.float64)


def shape_extent(cls, radius, verts):
    """(x1, y1, x2, y2) of the shape relative to its centre."""
    if cls == 0:
        return (-radius, -radius, radius, radius)
    return (float(verts[:, 0].min()), float(verts[:, 1].min()),
            float(verts[:, 0].max()), float(verts[:, 1].max()))


def _inside_polygon(px, py, verts):
    """Even-odd point in polygon test, vectorised over points."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(verts)
    for k in range(n):
        x1, y1 = verts[k]
        x2, y2 = verts[(k + 1) % n]
        cond = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= cond & (px < xint)
    return inside


def coverage(cls, cx, cy, radius, verts, box, ss=SUPERSAMPLE):
    """Anti-aliased coverage of the shape over the integer pixel window `box` = (x0, y0, x1, y1)
    (exclusive end), as float64 [y1 - y0, x1 - x0] in [0, 1]."""
    x0, y0, x1, y1 = box
    offs = (np.arange(ss) + 0.5) / ss
    sx = (np.arange(x0, x1)[:, None] + offs[None, :]).reshape(-1) - cx
    sy = (np.arange(y0, y1)[:, None] + offs[None, :]).reshape(-1) - cy
    px, py = np.meshgrid(sx, sy)
    if cls == 0:
        inside = px * px + py * py <= radius * radius
    else:
        inside = _inside_polygon(px, py, verts)
    h, w = y1 - y0, x1 - x0
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3))


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ----------------------------------------------------------------------------------------------------
# One image


def sample_image_size(rng, base=BASE_SIZE):
    """A random (width, height): half the time base x base, else a longer side in [0.75, 2] * base and
    an aspect ratio in [0.5, 1], either orientation. Used by the trainer (letterboxing practice)."""
    if rng.random() < 0.5:
        return base, base
    long_side = int(rng.integers(int(0.75 * base), 2 * base + 1))
    short_side = max(16, int(round(long_side * rng.uniform(0.5, 1.0))))
    if rng.random() < 0.5:
        return long_side, short_side
    return short_side, long_side


def generate_image(seed, split, index, width=BASE_SIZE, height=BASE_SIZE, random_size=False, keep_hidden=False):
    """Image `index` of `split`: (uint8 [H, W, 3] RGB, list of annotations). Each annotation is a dict
    {"class_id", "box": [x1, y1, x2, y2] (float, px), "area" (visible px), "visible" (fraction)}.
    random_size: the size comes from sample_image_size() (drawn first from the image's own generator).
    keep_hidden: list every object drawn, in drawing order, with "annotated": visible >= MIN_VISIBLE."""
    rng = image_rng(seed, split, index)
    if random_size:
        width, height = sample_image_size(rng)
    width, height = int(width), int(height)
    img, _ = make_background(rng, height, width)
    scale = max(width, height) / BASE_SIZE
    n = int(rng.integers(MIN_OBJ, MAX_OBJ + 1))
    objects = []
    for _ in range(n):
        cls = int(rng.integers(NUM_CLASSES))
        size = rng.uniform(*SIZE_RANGE) * scale
        size = max(6.0, min(size, 0.9 * min(width, height)))
        radius = size / 2
        angle = rng.uniform(0.0, 2 * math.pi)
        inner = rng.uniform(*STAR_INNER)
        verts = shape_vertices(cls, radius, angle, inner)
        ex = shape_extent(cls, radius, verts)
        box = None
        for _try in range(PLACEMENT_TRIES):
            cx = rng.uniform(-ex[0], width - ex[2])
            cy = rng.uniform(-ex[1], height - ex[3])
            box = (cx + ex[0], cy + ex[1], cx + ex[2], cy + ex[3])
            if all(_iou(box, o["box"]) <= MAX_PLACEMENT_IOU for o in objects):
                break
        win = (max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1]))),
               min(width, int(math.ceil(box[2]))), min(height, int(math.ceil(box[3]))))
        cov = coverage(cls, cx, cy, radius, verts, win)
        # Colour: contrasting with the background under the object.
        under = img[win[1]:win[3], win[0]:win[2]].reshape(-1, 3).mean(axis=0)
        colour = _rand_colour(rng)
        for _c in range(20):
            if np.abs(colour - under).mean() >= MIN_CONTRAST:
                break
            colour = _rand_colour(rng)
        shade_ang = rng.uniform(0.0, 2 * math.pi)
        shade_amp = rng.uniform(0.0, 30.0)
        ys, xs = np.mgrid[win[1]:win[3], win[0]:win[2]].astype(np.float64)
        t = ((xs + 0.5 - cx) * math.cos(shade_ang) + (ys + 0.5 - cy) * math.sin(shade_ang)) / max(radius, 1.0)
        fill = np.clip(colour + shade_amp * t[..., None], 0.0, 255.0)
        region = img[win[1]:win[3], win[0]:win[2]]
        img[win[1]:win[3], win[0]:win[2]] = region + (fill - region) * cov[..., None]
        objects.append({"class_id": cls, "box": box, "win": win, "cov": cov})
    # Visibility: transmission through the objects drawn later.
    trans = np.ones((height, width), dtype=np.float64)
    for o in reversed(objects):
        x0, y0, x1, y1 = o["win"]
        total = o["cov"].sum()
        vis = (o["cov"] * trans[y0:y1, x0:x1]).sum()
        o["area"] = float(vis)
        o["visible"] = float(vis / total) if total > 0 else 0.0
        trans[y0:y1, x0:x1] *= 1.0 - o["cov"]
    sigma = rng.uniform(0.0, NOISE_SIGMA_MAX)
    img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * sigma
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    anns = [{"class_id": o["class_id"], "box": [float(v) for v in o["box"]], "area": o["area"],
             "visible": o["visible"], "annotated": o["visible"] >= MIN_VISIBLE}
            for o in objects if keep_hidden or o["visible"] >= MIN_VISIBLE]
    if not keep_hidden:
        for a in anns:
            del a["annotated"]
    return img, anns


# ----------------------------------------------------------------------------------------------------
# Letterboxing in numpy (the trainer's data workers; padre_detector.letterbox() is the reference)


def letterbox_size(width, height, image_size):
    """(new_w, new_h): the longer side becomes image_size, the shorter floor(short * S / long + 0.5),
    in integers, at least 1."""
    if width >= height:
        return image_size, max(1, (2 * height * image_size + width) // (2 * width))
    return max(1, (2 * width * image_size + height) // (2 * height)), image_size


def _bilinear_axis(n_in, n_out):
    # PyTorch's upsample_bilinear2d, align_corners=False, output size given: src = (dst + 0.5) * in/out
    # - 0.5, negative clamped to 0.
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def letterbox_uint8(img, image_size):
    """uint8 [H, W, 3] -> (uint8 [S, S, 3] with the resized image top-left, (new_w, new_h)). The padding
    is left at 128 (the trainer overwrites it with exactly 0.5 on the device)."""
    h, w = img.shape[:2]
    nw, nh = letterbox_size(w, h, image_size)
    out = np.full((image_size, image_size, 3), 128, dtype=np.uint8)
    if (nw, nh) == (w, h):
        out[:h, :w] = img
        return out, (nw, nh)
    x = img.astype(np.float32) / np.float32(255.0)
    y0, y1, ly = _bilinear_axis(h, nh)
    x0, x1, lx = _bilinear_axis(w, nw)
    top = x[y0] * (1 - ly)[:, None, None] + x[y1] * ly[:, None, None]
    res = top[:, x0] * (1 - lx)[None, :, None] + top[:, x1] * lx[None, :, None]
    out[:nh, :nw] = np.clip(np.rint(res * 255.0), 0, 255).astype(np.uint8)
    return out, (nw, nh)


# ----------------------------------------------------------------------------------------------------
# PNG


def _png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(img, level=6):
    """uint8 [H, W, 3] (RGB) or [H, W] (grey) -> PNG bytes."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 2:
        colour_type = 0
        img = img[..., None]
    elif img.ndim == 3 and img.shape[2] == 3:
        colour_type = 2
    elif img.ndim == 3 and img.shape[2] == 4:
        colour_type = 6
    else:
        raise ValueError(f"unsupported image shape {img.shape}")
    h, w, c = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * c)], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, level))
            + _png_chunk(b"IEND", b""))


def write_png(path, img):
    with open(path, "wb") as f:
        f.write(encode_png(img))


def read_png(path_or_bytes):
    """Decodes a non-interlaced 8-bit PNG to uint8 [H, W, C] (C = 1, 2, 3 or 4)."""
    data = path_or_bytes
    if not isinstance(data, (bytes, bytearray)):
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, hdr = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if tag == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or interlace != 0 or ctype not in (0, 2, 4, 6):
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {ctype}, interlace {interlace}")
    c = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(h, 1 + w * c)
    out = np.zeros((h, w * c), dtype=np.int32)
    prev = np.zeros(w * c, dtype=np.int32)
    for y in range(h):
        ft, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if ft == 0:
            cur = line
        elif ft == 2:
            cur = (line + prev) & 255
        else:
            cur = np.zeros(w * c, dtype=np.int32)
            for x in range(w * c):
                a = cur[x - c] if x >= c else 0
                b = prev[x]
                if ft == 1:
                    p = a
                elif ft == 3:
                    p = (a + b) >> 1
                else:
                    cc = prev[x - c] if x >= c else 0
                    pa, pb, pc = abs(b - cc), abs(a - cc), abs(a + b - 2 * cc)
                    p = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
                cur[x] = (line[x] + p) & 255
        out[y] = cur
        prev = cur
    return out.astype(np.uint8).reshape(h, w, c)


# ----------------------------------------------------------------------------------------------------
# COCO


def coco_categories():
    return [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)]


def make_coco(split, seed, entries, extra_info=None):
    """COCO instances dict from entries (index, width, height, anns, file_name) (anns as generate_image()
    returns them)."""
    images, annotations = [], []
    for i, width, height, anns, name in entries:
        images.append({"id": i + 1, "file_name": name, "width": int(width), "height": int(height),
                       "synth_index": int(i)})
        for a in anns:
            x1, y1, x2, y2 = a["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": a["class_id"] + 1,
                                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                                "area": round(a["area"], 3), "iscrowd": 0})
    info = {"description": "deltaserve synthetic shapes (tools/vision/synth_dataset.py)",
            "generator_version": GENERATOR_VERSION, "seed": int(seed), "split": split,
            "category_id_is_class_plus_1": True}
    info.update(extra_info or {})
    return {"info": info, "images": images, "annotations": annotations, "categories": coco_categories()}


def image_file_name(split, index):
    return f"{split}_{index:06d}.png"


def write_dataset(out_dir, split, count, seed, width=BASE_SIZE, height=BASE_SIZE, start=0,
                  write_images=True):
    """Writes images/<split>_<index>.png and instances_<split>.json; returns the JSON path."""
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    entries = []
    for i in range(start, start + count):
        img, anns = generate_image(seed, split, i, width, height)
        name = image_file_name(split, i)
        if write_images:
            write_png(os.path.join(img_dir, name), img)
        entries.append((i, width, height, anns, name))
    doc = make_coco(split, seed, entries, {"start": int(start), "count": int(count), "width": int(width),
                                           "height": int(height)})
    path = os.path.join(out_dir, f"instances_{split}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--start", type=int, default=0, help="first generator index")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--width", type=int, default=BASE_SIZE)
    ap.add_argument("--height", type=int, default=BASE_SIZE)
    ap.add_argument("--no-images", action="store_true", help="write the JSON only")
    args = ap.parse_args(argv)
    t0 = time.time()
    path = write_dataset(args.out, args.split, args.count, args.seed, args.width, args.height, args.start,
                         write_images=not args.no_images)
    print(f"wrote {args.count} images ({args.width}x{args.height}) and {path} in {time.time() - t0:.1f}s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
