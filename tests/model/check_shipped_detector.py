#!/usr/bin/env python3
"""The shipped detectors reach their recorded accuracy through the C++ serving path.

For each model under models/ (padre-detector, padre-softmax): regenerates the held-out synthetic set the
trainer scored (tools/vision/synth_dataset.py, split val, 500 images, seed 7; deterministic), runs
deltaserve-detect-eval (PNG decode, letterbox, forward, peaks, NMS, clip, COCO mAP in C++), and checks
  - its mAP@[.5:.95] and mAP@.5 equal the model's train_log.json values within 0.002 (the trainer scored
    the same images with PyTorch; loading, pre- or post-processing regressions move it far more);
  - pycocotools on the predictions it wrote gives the C++ mAP to 1e-6.
Usage: check_shipped_detector.py --eval BIN --repo DIR --work DIR
"""
import argparse
import json
import pathlib
import subprocess
import sys

TOLERANCE = 0.002


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    repo, work = pathlib.Path(args.repo), pathlib.Path(args.work)
    data = work / "val500"
    if not (data / "instances_val.json").exists():
        subprocess.run([sys.executable, str(repo / "tools/vision/synth_dataset.py"), "--out", str(data), "--split",
                        "val", "--count", "500", "--seed", "7"], check=True)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    failures = []
    for name in ("padre-detector", "padre-softmax"):
        model = repo / "models" / name
        recorded = json.loads((model / "train_log.json").read_text())
        preds = work / f"{name}.predictions.json"
        out = subprocess.run([args.eval, "--model", str(model), "--coco", str(data / "instances_val.json"),
                              "--images", str(data / "images"), "--predictions", str(preds)],
                             check=True, capture_output=True, text=True).stdout
        got = json.loads(out.strip().splitlines()[-1])
        print(f"{name}: C++ mAP {got['map']:.6f} mAP@.5 {got['map50']:.6f}; recorded {recorded['val_map']:.6f} "
              f"{recorded['val_map50']:.6f}")
        for key, rec in (("map", recorded["val_map"]), ("map50", recorded["val_map50"])):
            if abs(got[key] - rec) > TOLERANCE:
                failures.append(f"{name}: {key} {got[key]:.6f} differs from the recorded {rec:.6f} by more than "
                                f"{TOLERANCE}")
        gt = COCO(str(data / "instances_val.json"))
        ev = COCOeval(gt, gt.loadRes(str(preds)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        for key, index in (("map", 0), ("map50", 1)):
            if abs(ev.stats[index] - got[key]) > 1e-6:
                failures.append(f"{name}: pycocotools {key} {ev.stats[index]:.6f} != C++ {got[key]:.6f}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
