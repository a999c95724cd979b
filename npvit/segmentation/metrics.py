"""Segmentation scores from a confusion matrix accumulated over a whole dataset, as ml-cvnets
computes them (engine/eval_segmentation.py, after FCN's score.py):

    C[t, p] = number of pixels of true class t predicted as p   (ignored pixels not counted)
    pixel accuracy = trace(C) / sum(C)
    IoU_c = C[c, c] / (sum_p C[c, p] + sum_t C[t, c] - C[c, c])  (intersection / union)
    mIoU  = mean of IoU_c

One difference: ml-cvnets averages over every class, so a class that appears in neither the
annotations nor the predictions (union 0, IoU 0/0) makes its mIoU NaN; npvit averages over the
classes with a non-empty union and says how many those are. On the full VOC and ADE20k
validation sets every class occurs, and the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scores:
    miou: float                 # mean IoU over the classes with a non-empty union
    pixel_accuracy: float
    iou: np.ndarray             # (C,) per-class IoU, NaN where the union is empty
    pixels: int                 # pixels counted (ignored ones excluded)
    classes_scored: int         # classes with a non-empty union


class ConfusionMatrix:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, target: np.ndarray, prediction: np.ndarray) -> None:
        """target, prediction: integer arrays of one shape; targets outside [0, C) (the ignore
        values 255 or -1) are not counted."""
        target, prediction = np.asarray(target), np.asarray(prediction)
        if target.shape != prediction.shape:
            raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ")
        c = self.num_classes
        keep = (target >= 0) & (target < c)
        pairs = c * target[keep].astype(np.int64) + prediction[keep]
        self.counts += np.bincount(pairs, minlength=c * c).reshape(c, c)

    def scores(self) -> Scores:
        h = self.counts.astype(np.float64)
        total = h.sum()
        union = h.sum(axis=0) + h.sum(axis=1) - np.diag(h)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, np.diag(h) / union, np.nan)
        scored = union > 0
        return Scores(float(iou[scored].mean()) if scored.any() else float("nan"),
                      float(np.trace(h) / total) if total else float("nan"),
                      iou, int(total), int(scored.sum()))
