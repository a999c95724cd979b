"""The SSD multibox loss of ml-cvnets, forward and backward, and the anchor matching it needs.

Sources (apple/ml-cvnets, read at v0.4 / HEAD; the v0.1 files say the same):
cvnets/matcher_det/ssd_matcher.py, cvnets/misc/third_party/ssd_utils.py (assign_priors,
box_iou, hard_negative_mining), loss_fn/detection/ssd_multibox_loss.py; the released configs
set iou_threshold 0.5 and neg_pos_ratio 3.

Matching (per image), for ground-truth boxes g (T, 4) and anchors a (A, 4):
  1. IoU of every anchor with every box (corner form; ml-cvnets adds 1e-5 to the union);
  2. each anchor takes its best box; then each box claims its best anchor (later boxes win a
     contested anchor) and that anchor counts as a certain match (IoU set to 2);
  3. anchors whose best IoU is < 0.5 become background (label 0);
  4. the matched box is encoded relative to its anchor (npvit.models.ssd_boxes.encode_boxes):
     these offsets are the regression targets.

Loss over a batch, with positives P = anchors labelled > 0 and n = max(1, |P|):
  box:  smooth L1 (beta 1, summed) between predicted and target offsets of the positives;
  cls:  cross-entropy summed over the positives and the hardest negatives: per image the
        3 |P_image| background anchors with the largest background loss -log softmax(z)_0
        (hard negative mining; the choice itself is not differentiated, as in ml-cvnets);
  total = (box + cls) / n.
ml-cvnets can re-weight the box term during training from running averages
(max_monitor_iter); the released configs leave it off (-1), so the weight is 1.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..functional import (cross_entropy_backward, cross_entropy_forward, log_softmax,
                          smooth_l1_backward, smooth_l1_forward)
from ..models.ssd_boxes import center_to_corner, corner_to_center, encode_boxes

IOU_THRESHOLD = 0.5
NEG_POS_RATIO = 3


def box_iou(boxes_a, boxes_b, eps: float = 1e-5):
    """(M, 4) and (K, 4) corner boxes -> (M, K) IoU, ml-cvnets' box_iou (areas of inverted boxes
    clamp to 0; eps in the union)."""
    lt = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    rb = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    overlap = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(boxes_a[:, 2:] - boxes_a[:, :2], 0, None).prod(-1)
    area_b = np.clip(boxes_b[:, 2:] - boxes_b[:, :2], 0, None).prod(-1)
    return overlap / (area_a[:, None] + area_b[None, :] - overlap + eps)


def match_anchors(gt_boxes, gt_labels, anchors, iou_threshold: float = IOU_THRESHOLD):
    """gt_boxes (T, 4) corner form normalised like the anchors, gt_labels (T,) in 1..C-1,
    anchors (A, 4) centre form -> (target offsets (A, 4), target labels (A,) int64).

    Offsets are meaningful only where the label is > 0. An image without boxes gives all
    background (and zero offsets)."""
    gt_boxes, gt_labels = np.asarray(gt_boxes, dtype=anchors.dtype), np.asarray(gt_labels)
    if len(gt_labels) == 0:
        return np.zeros_like(anchors), np.zeros(len(anchors), dtype=np.int64)
    ious = box_iou(center_to_corner(anchors), gt_boxes)        # (A, T)
    best_box = ious.argmax(1)                                   # (A,) first maximum, as torch
    best_iou = ious.max(1)
    best_anchor = ious.argmax(0)                                # (T,)
    for box_index, anchor_index in enumerate(best_anchor):      # later boxes win, as in the loop
        best_box[anchor_index] = box_index
    best_iou[best_anchor] = 2.0
    labels = gt_labels[best_box].astype(np.int64)
    labels[best_iou < iou_threshold] = 0
    offsets = encode_boxes(corner_to_center(gt_boxes[best_box]), anchors)
    return offsets, labels


def hard_negative_mask(background_loss, labels, neg_pos_ratio: int = NEG_POS_RATIO):
    """background_loss, labels: (N, A) -> (N, A) bool: every positive, plus per image the
    neg_pos_ratio * (its positives) negatives with the largest background loss."""
    positive = labels > 0
    num_neg = positive.sum(1, keepdims=True) * neg_pos_ratio              # (N, 1)
    loss = np.where(positive, -np.inf, background_loss)
    rank = np.argsort(np.argsort(-loss, axis=1, kind="stable"), axis=1, kind="stable")
    return positive | (rank < num_neg)


class MultiboxLoss(NamedTuple):
    total: float   # (box + cls) / n: what is minimised
    box: float     # smooth L1 / n
    cls: float     # cross-entropy / n


def multibox_loss_forward(box_offsets, class_logits, target_offsets, target_labels,
                          neg_pos_ratio: int = NEG_POS_RATIO, label_smoothing: float = 0.0):
    """box_offsets (N, A, 4) and class_logits (N, A, C) from the network; targets from
    match_anchors stacked: target_offsets (N, A, 4), target_labels (N, A) int ->
    (MultiboxLoss, cache)."""
    positive = target_labels > 0
    num_pos = max(1, int(positive.sum()))
    box_sum, box_cache = smooth_l1_forward(box_offsets[positive], target_offsets[positive])

    background_loss = -log_softmax(class_logits, axis=2)[:, :, 0]
    chosen = hard_negative_mask(background_loss, target_labels, neg_pos_ratio)
    if chosen.any():
        ce_mean, ce_cache = cross_entropy_forward(class_logits[chosen], target_labels[chosen],
                                                  label_smoothing)
        cls_sum = ce_mean * int(chosen.sum())
    else:
        cls_sum, ce_cache = 0.0, None
    loss = MultiboxLoss((box_sum + cls_sum) / num_pos, box_sum / num_pos, cls_sum / num_pos)
    cache = (box_offsets.shape, class_logits.shape, box_offsets.dtype, positive, chosen, num_pos,
             box_cache, ce_cache)
    return loss, cache


def multibox_loss_backward(cache):
    """-> (dbox_offsets (N, A, 4), dclass_logits (N, A, C)): the gradient of ``total``."""
    box_shape, cls_shape, dtype, positive, chosen, num_pos, box_cache, ce_cache = cache
    dboxes = np.zeros(box_shape, dtype)
    dboxes[positive] = smooth_l1_backward(box_cache) / num_pos
    dlogits = np.zeros(cls_shape, dtype)
    if ce_cache is not None:
        # cross_entropy_backward is the gradient of the MEAN over the chosen anchors
        dlogits[chosen] = cross_entropy_backward(ce_cache) * (int(chosen.sum()) / num_pos)
    return dboxes, dlogits
