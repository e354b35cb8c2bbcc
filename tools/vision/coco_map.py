#!/usr/bin/env python3
"""COCO-style box mAP in numpy, without pycocotools (the trainer's evaluation on machines without it).

    coco_map.py GT.json PREDICTIONS.json     # prints {"map": ..., "map50": ..., "map75": ..., "per_class": ...}

It reproduces pycocotools' COCOeval (iouType "bbox", area range "all", maxDets 100) step for step:
- IoU thresholds np.linspace(.5, .95, 10), recall thresholds np.linspace(0, 1, 101);
- per (image, category): detections stable-sorted by score (descending, file order on ties), the first 100
  kept; IoU as maskApi's bbIou on [x, y, w, h] (crowd ground truth: intersection over the detection's
  area); greedy matching per threshold, each detection to the unmatched ground truth of highest IoU
  (>= threshold; crowd / ignored ground truth last and reusable);
- per category: detections of all images (in ascending image id order) stable-sorted by score; precision
  made monotone, sampled at the recall thresholds (searchsorted, side "left"; 0 past the last recall);
  categories without ground truth are left out of the mean;
- mAP = mean over thresholds, recall points and categories; mAP@.5 the same at IoU 0.5.
Ground truth: COCO "instances" dict (images, annotations with bbox, area, category_id, iscrowd);
predictions: COCO results list ({"image_id", "category_id", "bbox", "score"}).
"""
import json
import sys

import numpy as np

IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = 100


def bb_iou(dt, gt, iscrowd):
    """maskApi.c bbIou: dt [m, 4], gt [n, 4] as [x, y, w, h] -> [m, n] (same float64 operations)."""
    dt = np.asarray(dt, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    da = (dt[:, 2] * dt[:, 3])[:, None]
    ga = (gt[:, 2] * gt[:, 3])[None, :]
    w = np.minimum((dt[:, 2] + dt[:, 0])[:, None], (gt[:, 2] + gt[:, 0])[None, :]) - np.maximum(dt[:, :1], gt[None, :, 0])
    h = np.minimum((dt[:, 3] + dt[:, 1])[:, None], (gt[:, 3] + gt[:, 1])[None, :]) - np.maximum(dt[:, 1:2], gt[None, :, 1])
    i = w * h
    crowd = np.asarray(iscrowd, dtype=bool).reshape(1, -1)
    u = np.where(crowd, da, da + ga - i)
    ok = (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, i / np.where(ok, u, 1.0), 0.0)


def _eval_img(gts, dts, max_det):
    """gts, dts: lists of dicts of one (image, category). Returns the per-image record or None."""
    if not gts and not dts:
        return None
    # COCOeval._prepare overwrites "ignore" with "iscrowd"; area range "all" is [0, 1e10].
    g_ign = np.array([1 if (g.get("iscrowd", 0) or g["area"] < 0 or g["area"] > 1e5 ** 2) else 0 for g in gts],
                     dtype=np.int64)
    gtind = np.argsort(g_ign, kind="mergesort")
    gts = [gts[i] for i in gtind]
    g_ign = g_ign[gtind]
    dtind = np.argsort([-d["score"] for d in dts], kind="mergesort")
    dts = [dts[i] for i in dtind[:max_det]]
    iscrowd = [int(g.get("iscrowd", 0)) for g in gts]
    ious = bb_iou([d["bbox"] for d in dts], [g["bbox"] for g in gts], iscrowd) if dts and gts else np.zeros((0, 0))
    T, G, D = len(IOU_THRS), len(gts), len(dts)
    gtm = np.zeros((T, G))
    dtm = np.zeros((T, D))
    dt_ig = np.zeros((T, D))
    if ious.size:
        for t_i, t in enumerate(IOU_THRS):
            for d_i in range(D):
                iou = min([t, 1 - 1e-10])
                m = -1
                for g_i in range(G):
                    if gtm[t_i, g_i] > 0 and not iscrowd[g_i]:
                        continue
                    if m > -1 and g_ign[m] == 0 and g_ign[g_i] == 1:
                        break
                    if ious[d_i, g_i] < iou:
                        continue
                    iou = ious[d_i, g_i]
                    m = g_i
                if m == -1:
                    continue
                dt_ig[t_i, d_i] = g_ign[m]
                dtm[t_i, d_i] = gts[m]["id"]
                gtm[t_i, m] = dts[d_i]["id"]
    area_out = np.array([d["area"] < 0 or d["area"] > 1e5 ** 2 for d in dts]).reshape(1, D)
    dt_ig = np.logical_or(dt_ig, np.logical_and(dtm == 0, np.repeat(area_out, T, 0)))
    return {"dtm": dtm, "dt_ig": dt_ig, "scores": [d["score"] for d in dts], "g_ign": g_ign}


def evaluate(gt, predictions, max_det=MAX_DETS):
    """gt: COCO instances dict; predictions: COCO results list. Returns {"map", "map50", "map75",
    "per_class": {name: {"ap", "ap50"}}, "precision": array [T, R, K]}."""
    img_ids = sorted({im["id"] for im in gt["images"]})
    img_set = set(img_ids)
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    gts, dts = {}, {}
    for a in gt["annotations"]:
        gts.setdefault((a["image_id"], a["category_id"]), []).append(a)
    for k, p in enumerate(predictions):
        if p["image_id"] not in img_set:
            raise ValueError(f"prediction for image {p['image_id']} not in the ground truth")
        b = p["bbox"]
        d = {"image_id": p["image_id"], "category_id": p["category_id"], "bbox": b, "score": p["score"],
             "area": b[2] * b[3], "id": k + 1}
        dts.setdefault((p["image_id"], p["category_id"]), []).append(d)
    T, R, K = len(IOU_THRS), len(REC_THRS), len(cat_ids)
    precision = -np.ones((T, R, K))
    for k, c in enumerate(cat_ids):
        E = [_eval_img(gts.get((i, c), []), dts.get((i, c), []), max_det) for i in img_ids]
        E = [e for e in E if e is not None]
        if not E:
            continue
        scores = np.concatenate([np.asarray(e["scores"], dtype=np.float64) for e in E])
        inds = np.argsort(-scores, kind="mergesort")
        dtm = np.concatenate([e["dtm"] for e in E], axis=1)[:, inds]
        dt_ig = np.concatenate([e["dt_ig"] for e in E], axis=1)[:, inds]
        g_ign = np.concatenate([e["g_ign"] for e in E])
        npig = np.count_nonzero(g_ign == 0)
        if npig == 0:
            continue
        tps = np.logical_and(dtm, np.logical_not(dt_ig))
        fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
        tp_sum = np.cumsum(tps, axis=1).astype(float)
        fp_sum = np.cumsum(fps, axis=1).astype(float)
        for t in range(T):
            tp, fp = tp_sum[t], fp_sum[t]
            nd = len(tp)
            rc = tp / npig
            pr = (tp / (fp + tp + np.spacing(1))).tolist()
            q = [0.0] * R
            for i in range(nd - 1, 0, -1):
                if pr[i] > pr[i - 1]:
                    pr[i - 1] = pr[i]
            for ri, pi in enumerate(np.searchsorted(rc, REC_THRS, side="left")):
                if pi >= nd:
                    break
                q[ri] = pr[pi]
            precision[t, :, k] = q

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    per_class = {}
    for k, c in enumerate(cats):
        per_class[c["name"]] = {"ap": mean(precision[:, :, k]), "ap50": mean(precision[0, :, k])}
    return {"map": mean(precision), "map50": mean(precision[0]), "map75": mean(precision[5]),
            "per_class": per_class, "precision": precision}


def detections_to_coco(image_id, detections, category_offset=1):
    """padre_detector.decode() output of one image -> COCO results entries."""
    out = []
    for d in detections:
        x1, y1, x2, y2 = d["box"]
        out.append({"image_id": image_id, "category_id": d["class_id"] + category_offset,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d["score"]})
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit("usage: coco_map.py GT.json PREDICTIONS.json")
    with open(argv[0], encoding="utf-8") as f:
        gt = json.load(f)
    with open(argv[1], encoding="utf-8") as f:
        preds = json.load(f)
    r = evaluate(gt, preds)
    r.pop("precision")
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
