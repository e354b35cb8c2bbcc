#!/usr/bin/env python3
"""mAP of COCO-format box predictions with pycocotools (the reference the C++ mAP and coco_map.py are
checked against).

    eval_coco.py GT.json PREDICTIONS.json [--numpy]

GT.json: COCO instances (synth_dataset.py writes them; category_id = class + 1). PREDICTIONS.json: COCO
results, a list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}. Prints one JSON object:
{"map": mAP@[.5:.95], "map50": mAP@.5, "map75", "stats": COCOeval.stats (12 numbers), "num_predictions",
"num_images", "tool": "pycocotools <version>"}; with --numpy also "numpy": coco_map.py's figures. Area
range "all", maxDets 100 (stats[0] and stats[1]). An empty prediction list scores 0. pycocotools' own
progress output goes to stderr.
"""
import argparse
import contextlib
import json
import os
import sys


def evaluate_pycocotools(gt_path, pred_path):
    import pycocotools
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with open(pred_path, encoding="utf-8") as f:
        preds = json.load(f)
    with open(gt_path, encoding="utf-8") as f:
        num_images = len(json.load(f)["images"])
    version = getattr(pycocotools, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version
        version = pkg_version("pycocotools")
    out = {"num_predictions": len(preds), "num_images": num_images, "tool": f"pycocotools {version}"}
    if not preds:
        out.update({"map": 0.0, "map50": 0.0, "map75": 0.0, "stats": [0.0] * 12})
        return out
    with contextlib.redirect_stdout(sys.stderr):
        gt = COCO(gt_path)
        dt = gt.loadRes(preds)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats]
    out.update({"map": stats[0], "map50": stats[1], "map75": stats[2], "stats": stats})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="COCO box mAP with pycocotools")
    ap.add_argument("gt")
    ap.add_argument("predictions")
    ap.add_argument("--numpy", action="store_true", help="also report tools/vision/coco_map.py's figures")
    args = ap.parse_args(argv)
    out = evaluate_pycocotools(args.gt, args.predictions)
    if args.numpy:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import coco_map
        with open(args.gt, encoding="utf-8") as f:
            gt = json.load(f)
        with open(args.predictions, encoding="utf-8") as f:
            preds = json.load(f)
        r = coco_map.evaluate(gt, preds)
        out["numpy"] = {"map": r["map"], "map50": r["map50"], "map75": r["map75"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
