"""Boxes for SSD: the anchor encoding, IoU, non-maximum suppression and each release's
post-processing, in NumPy.

Box forms: corner (x1, y1, x2, y2) and centre (cx, cy, w, h). The network predicts, per
anchor, offsets t = (t_x, t_y, t_w, t_h) relative to its anchor a (SSD paper, Eq. 2; ml-cvnets
cvnets/misc/box_utils.py), with the variances 0.1 (centre) and 0.2 (size):

    cx = a_cx + 0.1 t_x a_w      cy = a_cy + 0.1 t_y a_h
    w  = a_w exp(0.2 t_w)        h  = a_h exp(0.2 t_h)

NMS follows torchvision.ops.nms (which ml-cvnets calls): boxes sorted by score (ties keep
their order), and a box is dropped when its IoU with a kept, higher-scored box is > the
threshold, IoU = inter / (area_i + area_j - inter) with areas (x2 - x1) (y2 - y1) taken as they
are (a degenerate box has area <= 0; 0/0 gives NaN, which suppresses nothing), computed in the
boxes' own dtype as torchvision does.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


def center_to_corner(boxes):
    """(..., 4) (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    half = boxes[..., 2:] * 0.5
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def corner_to_center(boxes):
    """(..., 4) (x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return np.concatenate([(boxes[..., :2] + boxes[..., 2:]) * 0.5,
                           boxes[..., 2:] - boxes[..., :2]], axis=-1)


def decode_boxes(offsets, anchors, center_variance=CENTER_VARIANCE, size_variance=SIZE_VARIANCE):
    """offsets (..., A, 4) from the network, anchors (A, 4) centre form -> (..., A, 4) corner
    boxes, normalised like the anchors (not clipped)."""
    centres = offsets[..., :2] * center_variance * anchors[:, 2:] + anchors[:, :2]
    sizes = np.exp(offsets[..., 2:] * size_variance) * anchors[:, 2:]
    return center_to_corner(np.concatenate([centres, sizes], axis=-1))


def encode_boxes(boxes, anchors, center_variance=CENTER_VARIANCE, size_variance=SIZE_VARIANCE):
    """The inverse of decode: centre-form boxes (..., A, 4) and anchors (A, 4) -> offsets."""
    centres = (boxes[..., :2] - anchors[:, :2]) / anchors[:, 2:] / center_variance
    sizes = np.log(boxes[..., 2:] / anchors[:, 2:]) / size_variance
    return np.concatenate([centres, sizes], axis=-1)


def box_area(boxes):
    """(..., 4) corner boxes -> (...) areas (negative for boxes with x2 < x1 xor y2 < y1)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. boxes (N, 4) corner form, scores (N,) ->
    int64 indices of the kept boxes, highest score first."""
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    order = np.argsort(-scores, kind="stable")          # descending; ties keep index order
    x1, y1, x2, y2 = boxes.T
    areas = box_area(boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    zero = boxes.dtype.type(0)
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1:]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        # compared in float64 like torchvision's C++ (float IoU > double threshold)
        suppressed[rest[iou.astype(np.float64) > iou_threshold]] = True
    return np.array(keep, dtype=np.int64)


def batched_nms(boxes, scores, labels, iou_threshold: float) -> np.ndarray:
    """NMS within each label separately -> kept indices sorted by descending score (ties in
    index order), as torchvision.ops.batched_nms."""
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    keep = [np.flatnonzero(labels == c)[nms(boxes[labels == c], scores[labels == c], iou_threshold)]
            for c in np.unique(labels)]
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


class Detections(NamedTuple):
    """One image's detections."""
    boxes: np.ndarray    # (K, 4) corner form (x1, y1, x2, y2)
    scores: np.ndarray   # (K,) class probabilities
    labels: np.ndarray   # (K,) int64 softmax column 1..80 (or COCO category ids, see detect)


class PostProcess(NamedTuple):
    """One release's rule for turning (boxes, class probabilities) into detections."""
    name: str
    score_threshold: float     # keep a (anchor, class) only when its probability is > this
    top_k_per_class: int       # v0.2+: best k per class before NMS (0: all)
    iou_threshold: float       # NMS, within each class
    max_per_class: int         # v0.1: at most this many per class after NMS (0: no cap)
    max_per_image: int         # v0.2+: at most this many per image after NMS (0: no cap)


# ml-cvnets v0.2+ SingleShotMaskDetector.postprocess_detections with its defaults (conf 0.01,
# top_k 400, NMS 0.5, objects_per_image 200); v0.1 SingleShotDetector.predict (conf 0.05 from
# argparse, NMS 0.5 from the configs, num_objects_per_class 200). See dense/NOTES.md 2.4.
POSTPROCESS = {
    "cvnets-v0.2": PostProcess("cvnets-v0.2", 0.01, 400, 0.5, 0, 200),
    "cvnets-v0.1": PostProcess("cvnets-v0.1", 0.05, 0, 0.5, 200, 0),
}


def postprocess(boxes, probabilities, rule: PostProcess, score_threshold: float | None = None):
    """One image: boxes (A, 4) corner form, probabilities (A, C) softmax with column 0 =
    background -> Detections (labels = columns 1..C-1).

    v0.2+ (top_k_per_class > 0): per class the boxes scoring > threshold, the best top_k of
    them; one batched NMS over all classes; the first max_per_image by score.
    v0.1: per class, threshold then NMS then the first max_per_class; classes concatenated in
    class order (no global sort, no per-image cap).
    """
    threshold = rule.score_threshold if score_threshold is None else score_threshold
    picked_boxes, picked_scores, picked_labels = [], [], []
    for c in range(1, probabilities.shape[1]):
        candidates = np.flatnonzero(probabilities[:, c] > threshold)
        scores = probabilities[candidates, c]
        if rule.top_k_per_class:
            best = np.argsort(-scores, kind="stable")[:rule.top_k_per_class]
            candidates, scores = candidates[best], scores[best]
        if rule.max_per_class:
            kept = nms(boxes[candidates], scores, rule.iou_threshold)[:rule.max_per_class]
            candidates, scores = candidates[kept], scores[kept]
        picked_boxes.append(boxes[candidates])
        picked_scores.append(scores)
        picked_labels.append(np.full(len(candidates), c, dtype=np.int64))
    result = Detections(np.concatenate(picked_boxes).reshape(-1, 4), np.concatenate(picked_scores),
                        np.concatenate(picked_labels))
    if rule.top_k_per_class:
        keep = batched_nms(result.boxes, result.scores, result.labels, rule.iou_threshold)
        if rule.max_per_image:
            keep = keep[:rule.max_per_image]
        result = Detections(*(a[keep] for a in result))
    return result
