#!/usr/bin/env python3
"""tools/vision/coco_map.py (the numpy COCO mAP the trainer uses) against pycocotools' COCOeval on
random predictions: mAP@[.5:.95], mAP@.5 and the whole precision table must be equal. Covers score ties,
more than 100 detections per image and class, crowd ground truth, classes without ground truth, images
without ground truth or predictions. Also hand-computed cases and eval_coco.py's command line.

    python tests/vision_py/test_coco_map.py     # numpy; the comparisons need pycocotools
Exit code 77 (CTest: skipped) when pycocotools is not installed, after the other tests passed.
"""
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VISION = os.path.join(ROOT, "tools", "vision")
sys.path.insert(0, VISION)
import coco_map  # noqa: E402
import synth_dataset as synth  # noqa: E402

try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    HAVE_PYCOCOTOOLS = True
except ImportError:
    HAVE_PYCOCOTOOLS = False
SKIP_MSG = "pycocotools is not installed (pip install pycocotools==2.0.11): numpy mAP not cross-checked"


def synth_gt(count=30, seed=7):
    entries = []
    for i in range(count):
        _, anns = synth.generate_image(seed, "val", i)
        entries.append((i, 128, 128, anns, synth.image_file_name("val", i)))
    return synth.make_coco("val", seed, entries)


def random_predictions(gt, rng, n_random=150, tie_decimals=2):
    preds = []
    img_ids = [im["id"] for im in gt["images"]]
    for a in gt["annotations"]:
        for _ in range(int(rng.integers(0, 4))):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.12 * max(w, h), 4)
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 5))
            preds.append({"image_id": a["image_id"], "category_id": cat,
                          "bbox": [x + j[0], y + j[1], max(0.5, w + j[2]), max(0.5, h + j[3])],
                          "score": float(np.round(rng.random(), tie_decimals))})
    for _ in range(n_random):
        x, y = rng.uniform(0, 110, 2)
        w, h = rng.uniform(2, 50, 2)
        preds.append({"image_id": int(rng.choice(img_ids)), "category_id": int(rng.integers(1, 5)),
                      "bbox": [x, y, w, h], "score": float(np.round(rng.random(), tie_decimals))})
    return preds


def pycoco(gt, preds):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gt.json")
        with open(path, "w") as f:
            json.dump(gt, f)
        with redirect_stdout(io.StringIO()):
            cg = COCO(path)
            cd = cg.loadRes(copy.deepcopy(preds))
            ev = COCOeval(cg, cd, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    return ev.stats, ev.eval["precision"][:, :, :, 0, 2]


@unittest.skipUnless(HAVE_PYCOCOTOOLS, SKIP_MSG)
class AgainstPycocotoolsTest(unittest.TestCase):
    def compare(self, gt, preds):
        stats, prec = pycoco(gt, preds)
        mine = coco_map.evaluate(gt, preds)
        np.testing.assert_array_equal(mine["precision"], prec)
        self.assertEqual(mine["map"], stats[0])
        self.assertEqual(mine["map50"], stats[1])
        self.assertEqual(mine["map75"], stats[2])
        return mine

    def test_random_predictions(self):
        gt = synth_gt()
        for seed in range(4):
            rng = np.random.default_rng(seed)
            r = self.compare(gt, random_predictions(gt, rng, tie_decimals=1 + seed % 3))
            self.assertGreater(r["map50"], 0.0)

    def test_more_than_100_per_image_and_class(self):
        gt = synth_gt(6)
        rng = np.random.default_rng(10)
        preds = random_predictions(gt, rng)
        for _ in range(250):                                  # image 1, class 1: 250 extra boxes
            x, y = rng.uniform(0, 100, 2)
            preds.append({"image_id": 1, "category_id": 1, "bbox": [x, y, 20.0, 20.0],
                          "score": float(np.round(rng.random(), 2))})
        self.compare(gt, preds)

    def test_crowd_missing_class_and_empty_images(self):
        gt = synth_gt(20)
        rng = np.random.default_rng(3)
        preds = random_predictions(gt, rng)
        gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 4]     # no stars at all
        for a in gt["annotations"][::7]:
            a["iscrowd"] = 1
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] not in (3, 4)]  # images without gt
        preds = [p for p in preds if p["image_id"] != 5]                                   # image without preds
        r = self.compare(gt, preds)
        self.assertEqual(r["per_class"]["star"]["ap"], -1.0)

    def test_eval_coco_cli(self):
        gt = synth_gt(10)
        preds = random_predictions(gt, np.random.default_rng(5))
        with tempfile.TemporaryDirectory() as tmp:
            g, p = os.path.join(tmp, "gt.json"), os.path.join(tmp, "pred.json")
            with open(g, "w") as f:
                json.dump(gt, f)
            with open(p, "w") as f:
                json.dump(preds, f)
            r = subprocess.run([sys.executable, os.path.join(VISION, "eval_coco.py"), g, p, "--numpy"],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            out = json.loads(r.stdout)
            self.assertEqual(out["map"], out["numpy"]["map"])
            self.assertEqual(out["map50"], out["numpy"]["map50"])
            self.assertEqual(len(out["stats"]), 12)
            self.assertTrue(out["tool"].startswith("pycocotools"))


class HandComputedTest(unittest.TestCase):
    def gt(self):
        return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                                {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 10], "area": 300, "iscrowd": 0}]}

    def test_perfect(self):
        gt = self.gt()
        preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                 for a in gt["annotations"]]
        r = coco_map.evaluate(gt, preds)
        # COCOeval's precision is tp / (tp + fp + eps): 1 - 2e-16, not 1.
        self.assertAlmostEqual(r["map"], 1.0, places=12)
        self.assertAlmostEqual(r["map50"], 1.0, places=12)

    def test_iou_072_counts_at_5_of_10_thresholds(self):
        gt = self.gt()
        # Same height, width 20 -> shifted: IoU = overlap / union; choose a shift giving 0.72.
        # [10, 30] vs [10 + s, 30 + s]: IoU = (20 - s) / (20 + s) = 0.72 -> s = 3.255...
        s = 20 * (1 - 0.72) / 1.72
        preds = [{"image_id": 1, "category_id": 1, "bbox": [10 + s, 10, 20, 20], "score": 0.9},
                 {"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 10], "score": 0.8}]
        r = coco_map.evaluate(gt, preds)
        self.assertAlmostEqual(r["per_class"]["a"]["ap"], 0.5, places=12)
        self.assertAlmostEqual(r["per_class"]["b"]["ap"], 1.0, places=12)
        self.assertAlmostEqual(r["map"], 0.75, places=12)
        self.assertAlmostEqual(r["map50"], 1.0, places=12)

    def test_false_positive_first_halves_precision(self):
        gt = self.gt()
        preds = [{"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.95},   # FP, ranked first
                 {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]
        r = coco_map.evaluate(gt, preds)
        self.assertAlmostEqual(r["per_class"]["a"]["ap"], 0.5, places=12)   # precision 1/2 at every recall
        self.assertEqual(r["per_class"]["b"]["ap"], 0.0)                      # gt, no detection

    def test_empty(self):
        r = coco_map.evaluate(self.gt(), [])
        self.assertEqual(r["map"], 0.0)


if __name__ == "__main__":
    result = unittest.main(exit=False).result
    if not result.wasSuccessful():
        sys.exit(1)
    if not HAVE_PYCOCOTOOLS:
        print(f"SKIPPED: {SKIP_MSG}", file=sys.stderr)
        sys.exit(77)
