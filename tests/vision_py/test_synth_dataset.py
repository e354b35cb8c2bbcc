#!/usr/bin/env python3
"""tools/vision/synth_dataset.py: determinism (image i of a split is a pure function of seed, split, i),
annotation sanity, the occlusion rule, the COCO file, the PNG encoder / decoder and the numpy letterbox.

    python tests/vision_py/test_synth_dataset.py          # numpy (+ torch for the letterbox check)
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VISION = os.path.join(ROOT, "tools", "vision")
sys.path.insert(0, VISION)
import synth_dataset as synth  # noqa: E402


class DeterminismTest(unittest.TestCase):
    def test_pure_function_of_seed_split_index(self):
        a = [synth.generate_image(7, "val", i) for i in range(6)]
        # Any subset, in any order, regenerates the same images.
        for i in (5, 2, 0):
            img, anns = synth.generate_image(7, "val", i)
            np.testing.assert_array_equal(img, a[i][0])
            self.assertEqual(anns, a[i][1])

    def test_streams_differ(self):
        base, _ = synth.generate_image(7, "val", 3)
        for other in [synth.generate_image(8, "val", 3)[0], synth.generate_image(7, "train", 3)[0],
                      synth.generate_image(7, "val", 4)[0]]:
            self.assertFalse(np.array_equal(base, other))

    def test_random_size_deterministic(self):
        sizes = set()
        for i in range(40):
            img1, anns1 = synth.generate_image(1, "train", i, random_size=True)
            img2, anns2 = synth.generate_image(1, "train", i, random_size=True)
            np.testing.assert_array_equal(img1, img2)
            self.assertEqual(anns1, anns2)
            sizes.add(img1.shape[:2])
        self.assertGreater(len(sizes), 5)
        self.assertIn((128, 128), sizes)


class AnnotationTest(unittest.TestCase):
    def check_images(self, width, height, count):
        n_drawn = n_annotated = 0
        classes = set()
        for i in range(count):
            img, objs = synth.generate_image(3, "check", i, width, height, keep_hidden=True)
            self.assertEqual(img.shape, (height, width, 3))
            self.assertEqual(img.dtype, np.uint8)
            self.assertTrue(1 <= len(objs) <= 6)
            self.assertTrue(objs[-1]["annotated"], "the last object drawn is never covered")
            self.assertAlmostEqual(objs[-1]["visible"], 1.0, places=9)
            _, anns = synth.generate_image(3, "check", i, width, height)
            self.assertEqual(len(anns), sum(o["annotated"] for o in objs))
            self.assertGreaterEqual(len(anns), 1)
            scale = max(width, height) / 128
            for o in objs:
                self.assertEqual(o["annotated"], o["visible"] >= 0.4)
                x1, y1, x2, y2 = o["box"]
                self.assertTrue(0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, o["box"])
                extent = max(x2 - x1, y2 - y1)
                self.assertGreaterEqual(extent, 0.5 * 10 * scale - 1e-9)
                self.assertLessEqual(extent, 56 * scale + 1e-9)
                self.assertIn(o["class_id"], range(4))
                classes.add(o["class_id"])
                if o["class_id"] == 0:               # circle: the box is square
                    self.assertAlmostEqual(x2 - x1, y2 - y1, places=9)
            for a in anns:
                self.assertGreater(a["area"], 0.0)
                x1, y1, x2, y2 = a["box"]
                self.assertLessEqual(a["area"], (x2 - x1) * (y2 - y1) + 1e-6)
            n_drawn += len(objs)
            n_annotated += len(anns)
        self.assertEqual(classes, {0, 1, 2, 3})
        return n_drawn, n_annotated

    def test_annotations_128(self):
        drawn, annotated = self.check_images(128, 128, 80)
        self.assertLess(annotated, drawn, "some objects should be more than 60% hidden")
        self.assertGreater(annotated, 0.75 * drawn)

    def test_annotations_160x120(self):
        self.check_images(160, 120, 30)

    def test_box_is_the_shapes_tight_extent(self):
        # Every shape's coverage reaches each side of its box and never leaves it (to within a pixel).
        rng = np.random.default_rng(0)
        for cls in range(4):
            for _ in range(5):
                radius = rng.uniform(5, 28)
                verts = synth.shape_vertices(cls, radius, rng.uniform(0, 6.3), 0.45)
                ex = synth.shape_extent(cls, radius, verts)
                cx, cy = 40.0 + rng.random(), 40.0 + rng.random()
                cov = synth.coverage(cls, cx, cy, radius, verts, (0, 0, 80, 80), ss=8)
                ys, xs = np.nonzero(cov > 0)
                self.assertLessEqual(abs(xs.min() - (cx + ex[0])), 1.0)
                self.assertLessEqual(abs(xs.max() + 1 - (cx + ex[2])), 1.0)
                self.assertLessEqual(abs(ys.min() - (cy + ex[1])), 1.0)
                self.assertLessEqual(abs(ys.max() + 1 - (cy + ex[3])), 1.0)
                if cls == 0:
                    self.assertAlmostEqual(cov.sum(), np.pi * radius ** 2, delta=0.02 * np.pi * radius ** 2)


class CocoAndPngTest(unittest.TestCase):
    def test_write_dataset_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            rc = subprocess.run([sys.executable, os.path.join(VISION, "synth_dataset.py"), "--out", tmp, "--split", "val",
                                 "--count", "6", "--seed", "7", "--width", "160", "--height", "120"],
                                capture_output=True, text=True, timeout=120)
            self.assertEqual(rc.returncode, 0, rc.stderr)
            with open(os.path.join(tmp, "instances_val.json")) as f:
                doc = json.load(f)
            self.assertEqual([c["id"] for c in doc["categories"]], [1, 2, 3, 4])
            self.assertEqual([c["name"] for c in doc["categories"]], synth.CLASS_NAMES)
            self.assertEqual([im["id"] for im in doc["images"]], [1, 2, 3, 4, 5, 6])
            ann_ids = [a["id"] for a in doc["annotations"]]
            self.assertEqual(ann_ids, list(range(1, len(ann_ids) + 1)))
            for im in doc["images"]:
                img = synth.read_png(os.path.join(tmp, "images", im["file_name"]))
                ref, anns = synth.generate_image(7, "val", im["synth_index"], 160, 120)
                np.testing.assert_array_equal(img, ref)
                mine = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
                self.assertEqual(len(mine), len(anns))
                for a, r in zip(mine, anns):
                    self.assertEqual(a["category_id"], r["class_id"] + 1)
                    x1, y1, x2, y2 = r["box"]
                    np.testing.assert_allclose(a["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-3)
                    self.assertEqual(a["iscrowd"], 0)

    def test_png_roundtrip(self):
        rng = np.random.default_rng(0)
        for shape in [(1, 1, 3), (7, 13, 3), (20, 9), (5, 6, 4)]:
            img = rng.integers(0, 256, size=shape, dtype=np.uint8)
            data = synth.encode_png(img)
            out = synth.read_png(data)
            np.testing.assert_array_equal(out.reshape(img.shape), img)

    def test_png_reader_filters(self):
        # Encode each row with filter types 0..4 by hand and check the decoder undoes them.
        rng = np.random.default_rng(1)
        h, w, c = 10, 7, 3
        img = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        rows = img.reshape(h, w * c).astype(np.int32)
        raw = b""
        prev = np.zeros(w * c, dtype=np.int32)
        for y in range(h):
            ft = y % 5
            cur = rows[y]
            a = np.concatenate([np.zeros(c, np.int32), cur[:-c]])
            b = prev
            cc = np.concatenate([np.zeros(c, np.int32), prev[:-c]])
            if ft == 0:
                pred = np.zeros_like(cur)
            elif ft == 1:
                pred = a
            elif ft == 2:
                pred = b
            elif ft == 3:
                pred = (a + b) >> 1
            else:
                pa, pb, pc = np.abs(b - cc), np.abs(a - cc), np.abs(a + b - 2 * cc)
                pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, cc))
            raw += bytes([ft]) + ((cur - pred) & 255).astype(np.uint8).tobytes()
            prev = cur

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        np.testing.assert_array_equal(synth.read_png(png), img)


class LetterboxTest(unittest.TestCase):
    def test_sizes(self):
        self.assertEqual(synth.letterbox_size(150, 100, 128), (128, 85))
        self.assertEqual(synth.letterbox_size(100, 150, 128), (85, 128))
        self.assertEqual(synth.letterbox_size(160, 120, 128), (128, 96))
        self.assertEqual(synth.letterbox_size(50, 90, 128), (71, 128))
        self.assertEqual(synth.letterbox_size(128, 128, 128), (128, 128))
        self.assertEqual(synth.letterbox_size(1000, 1, 128), (128, 1))

    def test_numpy_letterbox_matches_torch(self):
        try:
            import torch
            import padre_detector as pd
        except ImportError:
            self.skipTest("torch missing")
        cfg = pd.make_config(pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])
        for (w, h) in [(150, 100), (50, 90), (200, 200), (128, 128), (97, 131)]:
            img, _ = synth.generate_image(2, "lb", w, w, h)
            mine, (nw, nh) = synth.letterbox_uint8(img, 128)
            ref, info = pd.letterbox(img, cfg)
            self.assertEqual((nw, nh), (info["new_w"], info["new_h"]))
            ref = ref[0].permute(1, 2, 0).numpy()
            diff = np.abs(mine[:nh, :nw].astype(np.float64) - ref[:nh, :nw] * 255.0)
            self.assertLessEqual(diff.max(), 0.5 + 1e-3)
            self.assertTrue(np.all(mine[nh:] == 128) and np.all(mine[:, nw:] == 128))


if __name__ == "__main__":
    unittest.main()
