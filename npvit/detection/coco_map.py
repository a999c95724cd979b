"""COCO box AP / AR in NumPy: the twelve numbers pycocotools' COCOeval prints for "bbox".

Same definitions as pycocotools (cocoeval.py: evaluateImg, accumulate, summarize), so the
numbers are the ones papers quote (mAP = AP@[.5:.95]):
- per image and category, detections sorted by score (stable), at most 100 kept; each is
  matched, at each IoU threshold t in 0.50, 0.55, ..., 0.95, greedily in score order to the
  unmatched ground-truth box of highest IoU >= t, preferring boxes that are not ignored (crowd
  boxes are ignored, can absorb many detections, and their IoU is inter / detection area);
- an area range (small < 32^2 <= medium < 96^2 <= large, using the annotation's "area") ignores
  the ground truth outside it and the unmatched detections outside it;
- per category, the detections of all images are ranked by score; precision is made monotone
  and read at the 101 recall points 0, 0.01, ..., 1 (0 beyond the highest recall reached);
  AP averages it over recall points, IoU thresholds and the categories that have ground truth.
- AR is the recall at the end of the ranking, averaged the same way, for 1, 10, 100 detections.

Input is plain data: the ground truth as the dict of a COCO instances json ("images",
"annotations" with image_id, category_id, bbox [x, y, w, h], area, iscrowd; "categories"), and
detections as dicts {image_id, category_id, bbox [x, y, w, h], score}, the results format.
Difference kept on purpose: pycocotools takes an annotation whose "id" is 0 for unmatched;
here a match is a match.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..errors import NpvitError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
               "large": (96 ** 2, 1e10)}
STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def bbox_iou(dt, gt, crowd):
    """dt (D, 4), gt (G, 4) as [x, y, w, h]; crowd (G,) bool -> (D, G) IoU; for a crowd box the
    union is the detection's own area (pycocotools' maskApi bbIou)."""
    w = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) \
        - np.maximum(dt[:, None, 0], gt[None, :, 0])
    h = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) \
        - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    dt_area, gt_area = dt[:, 2] * dt[:, 3], gt[:, 2] * gt[:, 3]
    union = np.where(crowd[None, :], dt_area[:, None], dt_area[:, None] + gt_area[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match(ious, gt_ignore, crowd):
    """Greedy matching of score-sorted detections at every IoU threshold at once.
    ious (D, G) with gt sorted non-ignored first -> (matched (T, D) bool, matched gt ignored
    (T, D) bool)."""
    T, (D, G) = len(IOU_THRESHOLDS), ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]        # (T, 1)
    gt_taken = np.zeros((T, G), dtype=bool)
    matched = np.zeros((T, D), dtype=bool)
    matched_ignored = np.zeros((T, D), dtype=bool)
    rows = np.arange(T)
    for d in range(D):
        free = ~gt_taken | crowd[None, :]                               # (T, G)
        good = free & (ious[d][None, :] >= thresholds)
        m = np.full(T, -1)
        # pycocotools walks the gt in order keeping the best IoU so far (later ones win ties),
        # and stops at the ignored ones once it holds a non-ignored match.
        for group in (~gt_ignore, gt_ignore):
            cand = good & group[None, :]
            if not cand.any():
                continue
            scores = np.where(cand, ious[d][None, :], -np.inf)[:, ::-1]
            last_best = G - 1 - scores.argmax(1)                       # (T,)
            todo = (m < 0) & cand.any(1)
            m[todo] = last_best[todo]
        hit = m >= 0
        matched[hit, d] = True
        matched_ignored[hit, d] = gt_ignore[m[hit]]
        gt_taken[rows[hit], m[hit]] = True
    return matched, matched_ignored


def _evaluate_image(gt, dt, area_range):
    """One image and category at one area range, as pycocotools' evaluateImg (maxDet 100)."""
    lo, hi = area_range
    gt_ignore = gt["crowd"] | (gt["area"] < lo) | (gt["area"] > hi)
    order = np.argsort(gt_ignore, kind="mergesort")
    gt_ignore, crowd = gt_ignore[order], gt["crowd"][order]
    ious = dt["ious"][:, order]
    matched, matched_ignored = _match(ious, gt_ignore, crowd)
    outside = (dt["area"] < lo) | (dt["area"] > hi)
    dt_ignore = matched_ignored | (~matched & outside[None, :])
    return dt["score"], matched, dt_ignore, gt_ignore


def _group(ground_truth: dict, detections: list[dict]):
    """{(image, category): arrays} for gt and dt; detections sorted by score, top 100."""
    image_ids = sorted(im["id"] for im in ground_truth["images"])
    known = set(image_ids)
    gts, dts = defaultdict(list), defaultdict(list)
    for a in ground_truth["annotations"]:
        gts[a["image_id"], a["category_id"]].append(a)
    for d in detections:
        if d["image_id"] not in known:
            raise NpvitError(f"a detection names image_id {d['image_id']}, which is not in the "
                             "ground truth's images")
        dts[d["image_id"], d["category_id"]].append(d)
    grouped = {}
    for key in set(gts) | set(dts):
        g, d = gts.get(key, []), dts.get(key, [])
        g_boxes = np.array([a["bbox"] for a in g], dtype=np.float64).reshape(-1, 4)
        g_arrays = {"crowd": np.array([bool(a.get("iscrowd", 0)) for a in g], dtype=bool),
                    "area": np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3]
                                      for a in g], dtype=np.float64)}
        scores = np.array([x["score"] for x in d], dtype=np.float64)
        order = np.argsort(-scores, kind="mergesort")[:MAX_DETECTIONS[-1]]
        d_boxes = np.array([d[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
        d_arrays = {"score": scores[order], "area": d_boxes[:, 2] * d_boxes[:, 3],
                    "ious": bbox_iou(d_boxes, g_boxes, g_arrays["crowd"])}
        grouped[key] = (g_arrays, d_arrays)
    return image_ids, grouped


def coco_evaluate(ground_truth: dict, detections: list[dict]) -> dict[str, float]:
    """{"AP": ..., "AP50": ..., ..., "AR_large": ...} as fractions in [0, 1] (-1 where no
    category has ground truth), equal to pycocotools' COCOeval(...).stats for iouType "bbox"."""
    image_ids, grouped = _group(ground_truth, detections)
    category_ids = sorted(c["id"] for c in ground_truth["categories"])
    T, R, K, A, M = (len(IOU_THRESHOLDS), len(RECALL_POINTS), len(category_ids), len(AREA_RANGES),
                     len(MAX_DETECTIONS))
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k, cat in enumerate(category_ids):
        keys = [(im, cat) for im in image_ids if (im, cat) in grouped]
        for a, area_range in enumerate(AREA_RANGES.values()):
            per_image = [_evaluate_image(*grouped[key], area_range) for key in keys]
            if not per_image:
                continue
            gt_ignore = np.concatenate([e[3] for e in per_image])
            num_gt = int(np.count_nonzero(~gt_ignore))
            if num_gt == 0:
                continue
            for m, max_det in enumerate(MAX_DETECTIONS):
                scores = np.concatenate([e[0][:max_det] for e in per_image])
                order = np.argsort(-scores, kind="mergesort")
                hit = np.concatenate([e[1][:, :max_det] for e in per_image], axis=1)[:, order]
                ignored = np.concatenate([e[2][:, :max_det] for e in per_image], axis=1)[:, order]
                tp = np.cumsum(hit & ~ignored, axis=1, dtype=np.float64)         # (T, D)
                fp = np.cumsum(~hit & ~ignored, axis=1, dtype=np.float64)
                for t in range(T):
                    rc = tp[t] / num_gt
                    pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if len(rc) else 0.0
                    pr = np.maximum.accumulate(pr[::-1])[::-1]     # precision made monotone
                    where = np.searchsorted(rc, RECALL_POINTS, side="left")
                    q = np.zeros(R)
                    reached = where < len(pr)
                    q[reached] = pr[where[reached]]
                    precision[t, :, k, a, m] = q
    return _summarize(precision, recall)


def _mean_valid(values) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _summarize(precision, recall) -> dict[str, float]:
    area = {name: i for i, name in enumerate(AREA_RANGES)}
    last = len(MAX_DETECTIONS) - 1
    stats = [_mean_valid(precision[:, :, :, 0, last]),
             _mean_valid(precision[0, :, :, 0, last]),
             _mean_valid(precision[5, :, :, 0, last])]
    stats += [_mean_valid(precision[:, :, :, area[n], last]) for n in ("small", "medium", "large")]
    stats += [_mean_valid(recall[:, :, 0, m]) for m in range(len(MAX_DETECTIONS))]
    stats += [_mean_valid(recall[:, :, area[n], last]) for n in ("small", "medium", "large")]
    return dict(zip(STAT_NAMES, stats))
