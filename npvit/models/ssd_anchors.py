"""SSD anchors ("priors") exactly as ml-cvnets' SSDAnchorGenerator makes them.

ml-cvnets cvnets/anchor_generator/ssd_anchor_generator.py (v0.2+; misc/anchor_generator.py in
v0.1, same numbers), with the released configs: six levels at output strides
16, 32, 64, 128, 256 and the global level (-1).

    scales s = linspace(0.1, 1.05, 7)              0.1, 0.258, 0.417, 0.575, 0.733, 0.892, 1.05
    level i: s_min = s[i], s_max = sqrt(s[i] * s[i+1])
    per location (y outer, x inner, row-major), centre (cx, cy) = ((x + .5) / W, (y + .5) / H):
        (s_min, s_min), (s_max, s_max),
        then for each aspect ratio r (levels 0-4: 2, 3; level 5: 2), with q = sqrt(r):
        (s_min * q, s_min / q), (s_min / q, s_min * q)
    -> 6 anchors per location on levels 0-4, 4 on the last; every coordinate clamped to [0, 1].

Anchors are (cx, cy, w, h), normalised to the network input, and they depend only on the
feature-map sizes: at 320x320 those are 20, 10, 5, 3, 2, 1, giving 3232 anchors.
"""
from __future__ import annotations

import numpy as np

MIN_SCALE, MAX_SCALE = 0.1, 1.05
# ml-cvnets writes the ratios as [[2, 3]] * 5 + [[2]] and dedups them with list(set(.)), which
# for these small ints iterates in ascending order.
ASPECT_RATIOS = ((2, 3),) * 5 + ((2,),)


def anchors_per_location(aspect_ratios=ASPECT_RATIOS) -> list[int]:
    """[6, 6, 6, 6, 6, 4]: two square anchors plus two per aspect ratio."""
    return [2 + 2 * len(r) for r in aspect_ratios]


def level_anchors(height: int, width: int, s_min: float, s_max: float, ratios) -> np.ndarray:
    """(height * width * (2 + 2 len(ratios)), 4) float64 centre-form anchors of one level."""
    shapes = [(s_min, s_min), (s_max, s_max)]
    for r in ratios:
        q = r ** 0.5
        shapes += [(s_min * q, s_min / q), (s_min / q, s_min * q)]
    shapes = np.array(shapes)                                   # (k, 2) as (w, h)
    cy, cx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width,
                         indexing="ij")                         # (H, W) each, y outer
    centres = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)     # (H*W, 1, 2)
    k = len(shapes)
    out = np.concatenate([np.broadcast_to(centres, (height * width, k, 2)),
                          np.broadcast_to(shapes, (height * width, k, 2))], axis=-1)
    return np.clip(out.reshape(-1, 4), 0.0, 1.0)


def ssd_anchors(feature_sizes, aspect_ratios=ASPECT_RATIOS, min_scale=MIN_SCALE,
                max_scale=MAX_SCALE) -> np.ndarray:
    """feature_sizes: [(h, w)] per level, in level order -> (A, 4) float64 (cx, cy, w, h)."""
    scales = np.linspace(min_scale, max_scale, len(feature_sizes) + 1)
    return np.concatenate([
        level_anchors(h, w, scales[i], (scales[i] * scales[i + 1]) ** 0.5, aspect_ratios[i])
        for i, (h, w) in enumerate(feature_sizes)])
