""""Does it look at the object?" as a number: the share of a layer's attention that falls inside
the object's box.

What is measured, per transformer layer:
  MobileViTv2  the context scores c_s (1, 1, P, N): for each of the P = 4 pixel positions a
               softmax over the N patches, pixel-shuffled to the block's (2 n_h, 2 n_w) map
               (as the score maps are drawn), so the map holds P units of score mass.
  MobileViT v1 the attention each patch RECEIVES: the (P, h, N, N) attention averaged over the
               h heads and the N query patches, one softmax-sized unit per pixel position,
               shuffled the same way (the "received" panel of the v1 figures).
The map's cells divide the network input evenly (cell (i, j) of an (m, n) map covers
[j W / n, (j + 1) W / n) x [i H / m, (i + 1) H / m)), each cell's mass spread evenly over it,
and the share inside the box is the mass of the box's part of each cell over the total. So a
map that is the same everywhere gives exactly the box's share of the input area (the chance
level, `box_area_share`), and a map whose mass all sits in cells inside the box gives 1.

The summary (`mean_share`) is the mean over EVERY layer of every block whose patch grid has
more than one patch: a 1-patch grid (the stride-32 block of a 64 px input) has a softmax over
one patch, always 1, which measures nothing and would only pull the mean towards chance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NpvitError
from .capture import AttentionRecord
from .maps import model_input, pixel_shuffle, run_with_capture


@dataclass(frozen=True)
class BoxMass:
    """One layer's share of attention inside the box."""
    stride: int         # output stride of the block (8, 16, 32)
    layer: int          # layer index in the block's transformer
    depth: int          # layers in that block
    patches: int        # N, patches in the block's grid (1: nothing to choose between)
    share: float        # mass inside the box / total mass, in [0, 1]


def _check_box(box, image_size) -> np.ndarray:
    box = np.asarray(box, np.float64)
    height, width = image_size
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise NpvitError(f"a box is 4 numbers x0 y0 x1 y1, got {np.asarray(box).tolist()}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise NpvitError(f"box {x0:g} {y0:g} {x1:g} {y1:g} is not a non-empty box inside the "
                         f"{width}x{height} network input (0 <= x0 < x1 <= {width}, "
                         f"0 <= y0 < y1 <= {height})")
    return box


def _cell_overlap(cells: int, length: float, low: float, high: float) -> np.ndarray:
    """(cells,): the fraction of each of ``cells`` equal cells of [0, length) inside [low, high)."""
    edges = np.arange(cells + 1) * (length / cells)
    inside = np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, None)
    return inside / (length / cells)


def mass_in_box(values: np.ndarray, image_size: tuple[int, int], box) -> float:
    """The share of a non-negative (m, n) map's mass inside ``box`` = [x0, y0, x1, y1] (pixels of
    the (H, W) input the map covers evenly), each cell's mass spread evenly over its area."""
    values = np.asarray(values, np.float64)
    (height, width), (x0, y0, x1, y1) = image_size, _check_box(box, image_size)
    if values.ndim != 2 or values.min() < 0 or not values.sum() > 0:
        raise NpvitError("mass_in_box needs a 2-D map of non-negative values with some mass")
    rows = _cell_overlap(values.shape[0], height, y0, y1)     # (m,)
    cols = _cell_overlap(values.shape[1], width, x0, x1)      # (n,)
    return float(rows @ values @ cols / values.sum())


def box_area_share(box, image_size: tuple[int, int]) -> float:
    """The box's share of the input's area: what a map that is the same everywhere puts in it."""
    x0, y0, x1, y1 = _check_box(box, image_size)
    return float((x1 - x0) * (y1 - y0) / (image_size[0] * image_size[1]))


def attention_mass_map(record: AttentionRecord) -> np.ndarray:
    """Image 0's (2 n_h, 2 n_w) map of context scores (v2) or received attention (v1)."""
    if record.kind == "context_scores":
        scores = record.weights[0]                                   # (1, P, N)
    else:
        p = record.patch_size[0] * record.patch_size[1]
        scores = record.weights[:p].mean(axis=(1, 2))[None]          # (P, h, N, N) -> (1, P, N)
    return pixel_shuffle(scores, record.grid, record.patch_size)[0]


def box_masses(records: list[AttentionRecord], image_size: tuple[int, int], box) -> list[BoxMass]:
    """Every layer's share of attention inside ``box`` (input pixels), in model order."""
    return [BoxMass(r.stride, r.layer, r.depth, r.grid[0] * r.grid[1],
                    mass_in_box(attention_mass_map(r), image_size, box)) for r in records]


def mean_share(masses: list[BoxMass], stride: int | None = None) -> float:
    """The mean share over the layers whose grid has more than one patch (module docstring);
    ``stride``: over the layers of that block only (8: the finest map)."""
    informative = [m.share for m in masses
                   if m.patches > 1 and (stride is None or m.stride == stride)]
    if not informative:
        raise NpvitError("no attention layer " + (f"at output stride {stride} " if stride else "")
                         + "sees more than one patch at this input size, so there is no choice "
                           "of where to look to measure; use a larger input")
    return float(np.mean(informative))


def score_mass_in_box(model, x, box) -> list[BoxMass]:
    """Run ``model`` on one image ``x`` ((3, H, W) or (1, 3, H, W) in [0, 1]) and return every
    layer's share of context-score mass (v2) or received attention (v1) inside ``box`` =
    [x0, y0, x1, y1] in pixels of x; `mean_share` summarises them."""
    x = model_input(model, x)
    _check_box(box, x.shape[2:])
    _, records = run_with_capture(model, x)
    return box_masses(records, x.shape[2:], box)
