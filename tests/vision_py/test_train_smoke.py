#!/usr/bin/env python3
"""Smoke test of tools/vision/train_detector.py on the CPU: a tiny PADRe detector trained for 30 steps
(--smoke) must lower its loss and export config.json + fp16 model.safetensors with the documented names
that reload to the very predictions the trainer logged; the softmax variant trains and exports too; the
time budget stops a run on time.

    python tests/vision_py/test_train_smoke.py          # torch + numpy; about 20 s on two cores
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VISION = os.path.join(ROOT, "tools", "vision")
sys.path.insert(0, VISION)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import padre_detector as pd  # noqa: E402
import train_detector as td  # noqa: E402
from test_padre_detector import documented_names  # noqa: E402

TRAIN = os.path.join(VISION, "train_detector.py")


def train(out, *extra):
    r = subprocess.run([sys.executable, TRAIN, "--smoke", "--out", out, *extra], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"train_detector.py failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    with open(os.path.join(out, "train_log.json")) as f:
        return json.load(f), r.stdout


class TrainSmokeTest(unittest.TestCase):
    tmp = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls.tmp.name, "padre")
        cls.log, cls.stdout = train(cls.out, "--mixer", "padre", "--seed", "3")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_loss_decreases(self):
        curve = self.log["loss_curve"]
        self.assertEqual(self.log["steps"], 30)
        self.assertGreaterEqual(len(curve), 5)
        first = curve[0]["loss"]
        last = sum(c["loss"] for c in curve[-2:]) / 2
        self.assertLess(last, 0.95 * first, curve)
        self.assertLess(curve[-1]["heat"], curve[0]["heat"])

    def test_log_contents(self):
        for key in ("steps", "images_seen", "unique_images", "train_time_s", "device", "val_map", "val_map50",
                    "loss_curve", "val", "config", "args"):
            self.assertIn(key, self.log)
        self.assertEqual(self.log["images_seen"], 30 * 16)
        self.assertEqual(self.log["device"], "cpu")
        self.assertTrue(0.0 <= self.log["val_map"] <= self.log["val_map50"] <= 1.0)
        self.assertIn("val_160x120", self.log["val"])
        self.assertIn("step 30", self.stdout)

    def test_export_files(self):
        with open(os.path.join(self.out, "config.json")) as f:
            cfg = json.load(f)
        self.assertEqual(set(cfg), set(pd.DEFAULT_CONFIG))
        self.assertEqual((cfg["mixer"], cfg["image_size"], cfg["hidden_size"], cfg["num_layers"]), ("padre", 64, 32, 2))
        with open(os.path.join(self.out, "model.safetensors"), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.assertEqual({k: v["shape"] for k, v in header.items()}, documented_names(cfg))
        self.assertEqual({v["dtype"] for v in header.values()}, {"F16"})

    def test_export_reloads_with_identical_outputs(self):
        model = pd.load_detector(self.out)
        # The exported weights are the final (EMA) weights of the checkpoint, rounded to fp16.
        ckpt = torch.load(os.path.join(self.out, "checkpoint.pt"), map_location="cpu", weights_only=False)
        for k, v in ckpt["ema"].items():
            torch.testing.assert_close(model.state_dict()[k], v.to(torch.float16).float(), rtol=0, atol=0)
        # The reloaded model reproduces the predictions the trainer logged for the val set.
        args = self.log["args"]
        val = td.ValSet(model.config, "val", args["val_seed"], args["val_count"], 128, 128)
        preds = val.predict(model, torch.device("cpu"))
        with open(os.path.join(self.out, "val_predictions.json")) as f:
            logged = json.load(f)
        self.assertEqual(len(preds), len(logged))
        for a, b in zip(preds, logged):
            self.assertEqual((a["image_id"], a["category_id"]), (b["image_id"], b["category_id"]))
            self.assertAlmostEqual(a["score"], b["score"], places=6)
            for u, v in zip(a["bbox"], b["bbox"]):
                self.assertAlmostEqual(u, v, places=3)

    def test_softmax_variant_and_time_budget(self):
        out = os.path.join(self.tmp.name, "softmax")
        log, _ = train(out, "--mixer", "softmax", "--max-steps", "8")
        self.assertEqual(log["steps"], 8)
        self.assertEqual(pd.load_detector(out).config["mixer"], "softmax")
        out = os.path.join(self.tmp.name, "timed")
        log, _ = train(out, "--mixer", "padre", "--max-steps", "1000000", "--minutes", "0.03")
        self.assertGreaterEqual(log["train_time_s"], 1.8)
        # Stopped by the budget (not the step limit); no upper bound on seconds, which a loaded machine can stretch.
        self.assertLess(log["steps"], 1000000)
        self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors")))


if __name__ == "__main__":
    unittest.main()
