#!/usr/bin/env python3
"""pycocotools' answers for the C++ COCO evaluation (server/vision/coco_eval.h) to be checked against.

    make_coco_fixture.py OUT_DIR

Writes OUT_DIR/coco_cases.json: pycocotools' IoU and recall thresholds (np.linspace, as reprs that parse
back to the same doubles) and a list of cases, each with its category ids, images (ground truth
[x, y, w, h, category_id] and predictions [x, y, w, h, score, category_id], COCO xywh) and what
COCOeval(iouType='bbox') reports for them: stats[0] (mAP@[.5:.95]), stats[1] (@.5), stats[2] (@.75) and
the per-category AP (mean of precision[:, :, k, area all, maxDets 100] over entries > -1; -1 when the
category has no ground truth).

The cases are random (several seeds) and cover what the matching must get exactly right: images without
ground truth, images without predictions, a category without ground truth (with and without
predictions), a category with ground truth but no predictions, predictions of a category outside the
data set, many overlapping predictions per object, more than 100 predictions of one category in an
image (maxDets), equal scores (stable sorting), duplicate ground truth boxes (equal IoUs), integer
boxes with IoU exactly 0.5 and 0.75, zero-size predictions and a ground truth box of area above 1e10.

Run it with the project venv's python, which needs pycocotools (tested with 2.0.11); CTest runs it as
the vision_coco_fixtures fixture.
"""
import contextlib
import io
import json
import os
import random
import sys

import numpy as np

try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:
    sys.exit(f"pycocotools is not installed for {sys.executable}: "
             f"run `{sys.executable} -m pip install pycocotools==2.0.11`")


def rand_box(rng, size, integer):
    w = rng.uniform(4, size / 3)
    h = rng.uniform(4, size / 3)
    x = rng.uniform(0, size - w)
    y = rng.uniform(0, size - h)
    if integer:
        return [float(round(x)), float(round(y)), float(max(1, round(w))), float(max(1, round(h)))]
    return [x, y, w, h]


def jitter(rng, box, amount, integer):
    x, y, w, h = box
    out = [x + rng.gauss(0, amount * w), y + rng.gauss(0, amount * h),
           max(0.0, w * (1 + rng.gauss(0, amount))), max(0.0, h * (1 + rng.gauss(0, amount)))]
    if integer:
        out = [float(round(v)) for v in out]
    return out


def make_case(seed):
    """A random data set: (category_ids, images)."""
    rng = random.Random(seed)
    size = 640.0
    integer = seed % 3 == 2
    quantize = seed % 2 == 1  # scores in steps of 0.05: many ties
    good = seed >= 6          # scores that follow the localisation error: a higher mAP
    categories = [1, 2, 3, 5, 8, 13]
    with_gt = [1, 2, 3, 5]  # 8: predictions but no ground truth; 13: nothing at all
    no_predictions = 5      # ground truth but no predictions
    images = []
    for i in range(rng.randint(6, 24)):
        gts, dts = [], []
        if rng.random() > 0.2:  # some images have no ground truth
            for _ in range(rng.randint(1, 8)):
                gts.append(rand_box(rng, size, integer) + [rng.choice(with_gt)])
            if rng.random() < 0.3:  # a duplicate ground truth box: equal IoUs
                gts.append(list(gts[0]))
        if rng.random() > 0.15:  # some images have no predictions
            for g in gts:
                if g[4] == no_predictions:
                    continue
                for _ in range(rng.randint(0, 5)):  # overlapping predictions per object
                    cat = g[4] if rng.random() > 0.1 else rng.choice(with_gt)
                    amount = rng.choice([0.02, 0.1, 0.3])
                    score = rng.uniform(0.4, 1.0) * (1 - amount) if good else rng.random()
                    dts.append(jitter(rng, g[:4], amount, integer) + [score, cat])
            for _ in range(rng.randint(0, 6)):  # false positives
                score = rng.uniform(0.0, 0.6) if good else rng.random()
                dts.append(rand_box(rng, size, integer) + [score, rng.choice([1, 2, 3, 8])])
            if rng.random() < 0.2:  # a category outside the data set: pycocotools ignores it
                dts.append(rand_box(rng, size, integer) + [rng.random(), 99])
        images.append((gts, dts))

    # More than 100 predictions of one category in one image: only the 100 best count.
    gts, dts = images[0]
    base = rand_box(rng, size, integer)
    gts.append(base + [2])
    for _ in range(130):
        dts.append(jitter(rng, base, 0.2, integer) + [rng.random(), 2])

    # Integer boxes with IoU exactly 0.5 and 0.75 against a 10x10 box.
    gts, dts = images[-1]
    gts.append([100.0, 100.0, 10.0, 10.0, 3])
    dts.append([100.0, 100.0, 10.0, 20.0, 0.9, 3])  # IoU 100 / 200
    gts.append([300.0, 300.0, 10.0, 10.0, 3])
    dts.append([300.0, 300.0, 10.0, 7.5, 0.8, 3])   # IoU 75 / 100
    dts.append([400.0, 400.0, 0.0, 12.0, 0.7, 3])   # zero width
    if seed % 4 == 0:  # a ground truth box outside the "all" area range, and a prediction on it
        gts.append([0.0, 0.0, 2e5, 1e5 + 1, 1])
        dts.append([0.0, 0.0, 2e5, 1e5 + 1, 0.95, 1])
        dts.append([1.0, 1.0, 2e5, 1e5 + 1, 0.05, 1])

    for _, dts in images:
        for d in dts:
            if quantize:
                d[4] = round(d[4] * 20) / 20
    return categories, images


def evaluate(categories, images):
    gt = {"images": [{"id": i + 1} for i in range(len(images))],
          "categories": [{"id": c} for c in categories], "annotations": []}
    results = []
    for i, (gts, dts) in enumerate(images):
        for g in gts:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": g[4], "bbox": g[:4], "area": g[2] * g[3],
                                      "iscrowd": 0})
        for d in dts:
            results.append({"image_id": i + 1, "category_id": d[5], "bbox": d[:4], "score": d[4]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_category = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, 2]
        per_category[str(cat)] = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
    return {"map": float(ev.stats[0]), "map50": float(ev.stats[1]), "map75": float(ev.stats[2]),
            "per_category": per_category}, ev.params


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    params = None
    for seed in range(12):
        categories, images = make_case(seed)
        expected, params = evaluate(categories, images)
        cases.append({"name": f"seed{seed}", "category_ids": categories,
                      "images": [{"gt": gts, "dt": dts} for gts, dts in images], "expected": expected})
    fixture = {"iou_thresholds": [float(v) for v in params.iouThrs],
               "recall_thresholds": [float(v) for v in params.recThrs], "cases": cases}
    with open(os.path.join(out_dir, "coco_cases.json"), "w") as f:
        json.dump(fixture, f)
    print(f"wrote {len(cases)} COCO cases to {out_dir}/coco_cases.json")


if __name__ == "__main__":
    main()
