"""Where MobileViT looks: context score maps (v2, the MobileViTv2 paper's Fig. 5) and attention
maps (v1), as arrays. Drawing them is `npvit.viz.figures`' job.

The recipe, from ml-cvnets' ``LinearSelfAttention.visualize_context_scores`` (the code the
authors point to for the paper's maps in apple/ml-cvnets issue 44), for one layer's context
scores c_s of shape (1, 1, P, N):
  1. (1, 1, P, N) -> (1, P, n_h, n_w)      each pixel position's scores over the patch grid
  2. pixel shuffle -> (1, 1, 2 n_h, 2 n_w)  put pixel p = (a, b) of patch (i, j) back at
                                            (2 i + a, 2 j + b): the feature map's own layout
  3. min-max normalise to [0, 1]            for display only: the scores are a softmax over N
                                            and mostly tiny
  4. nearest-neighbour upsample to the image  (ml-cvnets: cv2.resize INTER_NEAREST to 80x80;
                                            here to the input's size so it lines up)
  5. colormap (jet)                         (ml-cvnets: cv2.COLORMAP_JET)
ml-cvnets calls that function inside every layer's forward, so it writes one map per layer;
the paper shows one per output stride. ``context_score_maps`` returns the LAST layer of each
block by default (the one whose output leaves the block) and every layer with per_layer=True.

For v1 the same steps turn multi-head attention rows into maps: the attention a chosen query
patch pays to every patch, per head, and the attention each patch receives on average.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import functional as F
from ..data import default_pipeline, preprocess
from ..errors import NpvitError
from ..nn import no_grad
from .capture import AttentionRecord, capture


# --- the steps ----------------------------------------------------------------------------------
def pixel_shuffle(scores: np.ndarray, grid: tuple[int, int], patch_size=(2, 2)) -> np.ndarray:
    """scores (C, P, N) -> (C, n_h * p_h, n_w * p_w), N = n_h * n_w in row-major grid order.

    out[c, i * p_h + a, j * p_w + b] = scores[c, a * p_w + b, i * n_w + j]: PyTorch's
    ``F.pixel_shuffle`` of the (1, P, n_h, n_w) reshape, and exactly the permutation that folds
    the block's tokens back into a feature map, so the block's own `fold_v2` does it."""
    (n_h, n_w), (p_h, p_w) = grid, patch_size
    c, p, n = scores.shape
    if p != p_h * p_w or n != n_h * n_w:
        raise NpvitError(f"scores of shape {scores.shape} do not fit a {n_h}x{n_w} grid of "
                         f"{p_h}x{p_w} patches")
    return F.fold_v2(scores[None], (n_h * p_h, n_w * p_w), p_h, p_w)[0]


def min_max_normalise(values: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] (float64). A constant map has nothing to show and becomes all zeros."""
    values = np.asarray(values, np.float64)
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def upsample_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W): output pixel (y, x) copies input (floor(y h / H), floor(x w / W))
    (PyTorch's ``mode="nearest"``, OpenCV's INTER_NEAREST). Integer factors repeat each pixel."""
    (h, w), (out_h, out_w) = values.shape[-2:], size
    rows = np.arange(out_h) * h // out_h
    cols = np.arange(out_w) * w // out_w
    return values[..., rows[:, None], cols[None, :]]


def heatmap(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map -> (H, W) in [0, 1]: min-max normalised, then nearest-upsampled."""
    return upsample_nearest(min_max_normalise(values), size)


def colorize(heat: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) RGB floats in [0, 1] through a matplotlib colormap."""
    import matplotlib  # imported here: slow to import, and only drawing needs it

    return matplotlib.colormaps[cmap](heat)[..., :3]


# --- running the model --------------------------------------------------------------------------
def model_input(model, image) -> np.ndarray:
    """One image as a (1, 3, H, W) batch: a PIL image is preprocessed with the model's default
    pipeline (256x256 crop); an array (3, H, W) or (1, 3, H, W) is taken as it is."""
    if isinstance(image, Image.Image):
        return preprocess(image, default_pipeline(model.name))[None]
    x = np.asarray(image)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[0] != 1:
        raise NpvitError(f"maps are drawn for one image: pass (3, H, W) or (1, 3, H, W), got {x.shape}")
    return x


def run_with_capture(model, x: np.ndarray) -> tuple[np.ndarray, list[AttentionRecord]]:
    """(logits (1, num_classes), one AttentionRecord per transformer layer) from ONE forward
    pass in eval mode, without gradients; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with no_grad(), capture(model) as records:
            logits = model(x)
    finally:
        model.train(was_training)
    return logits, records


def _chosen(records, per_layer: bool):
    return [r for r in records if per_layer or r.layer == r.depth - 1]


# --- MobileViTv2: context score maps ------------------------------------------------------------
@dataclass(frozen=True)
class ScoreMap:
    """One layer's context scores, placed where they belong."""
    stride: int             # output stride of the block (8, 16, 32)
    layer: int              # layer index in the block's transformer
    depth: int              # layers in that block
    values: np.ndarray      # (2 n_h, 2 n_w): the scores c_s at their pixels (each of the 4
                            # pixel positions' scores sums to 1 over the patches)
    heatmap: np.ndarray     # (H, W) in [0, 1]: min-max normalised, upsampled to the input


def score_maps(records: list[AttentionRecord], image_size: tuple[int, int],
               per_layer: bool = False) -> list[ScoreMap]:
    """Captured v2 records -> ScoreMaps (last layer of each block, or every layer)."""
    maps = []
    for r in _chosen(records, per_layer):
        if r.kind != "context_scores":
            raise NpvitError("context score maps need MobileViTv2 (separable attention) records")
        values = pixel_shuffle(r.weights[0], r.grid, r.patch_size)[0]     # (1, P, N) -> (h, w)
        maps.append(ScoreMap(r.stride, r.layer, r.depth, values, heatmap(values, image_size)))
    return maps


def context_score_maps(model, image, per_layer: bool = False) -> list[ScoreMap]:
    """The MobileViTv2 paper's context score maps for one image, at output strides 8, 16, 32:
    the last layer of each block, or every layer with per_layer=True."""
    if model.version != 2:
        raise NpvitError(f"{model.name} is MobileViT v1: it has multi-head attention, not "
                         f"context scores; use npvit.viz.attention_maps")
    x = model_input(model, image)
    _, records = run_with_capture(model, x)
    return score_maps(records, x.shape[2:], per_layer)


# --- MobileViT v1: attention maps ---------------------------------------------------------------
@dataclass(frozen=True)
class AttentionMaps:
    """One v1 layer's attention, for a query patch and on average."""
    stride: int
    layer: int
    depth: int
    query: tuple[int, int]          # (row, col) of the query patch in the (n_h, n_w) grid
    heads: np.ndarray               # (h, 2 n_h, 2 n_w): attention from the query patch's pixels,
                                    # per head (each pixel position's row sums to 1 over patches)
    received: np.ndarray            # (2 n_h, 2 n_w): attention each patch receives, averaged
                                    # over heads and query patches
    head_heatmaps: np.ndarray       # (h, H, W) in [0, 1], each head normalised on its own
    received_heatmap: np.ndarray    # (H, W) in [0, 1]


def query_patch(point: tuple[float, float], image_size, grid) -> tuple[int, int]:
    """The (row, col) patch of a (n_h, n_w) grid covering pixel (y, x) of an (H, W) input."""
    (y, x), (height, width), (n_h, n_w) = point, image_size, grid
    if not (0 <= y < height and 0 <= x < width):
        raise NpvitError(f"query point ({y}, {x}) is outside the {height}x{width} input")
    return min(int(y * n_h / height), n_h - 1), min(int(x * n_w / width), n_w - 1)


def head_attention_maps(records: list[AttentionRecord], image_size: tuple[int, int],
                        point: tuple[float, float] | None = None,
                        per_layer: bool = False) -> list[AttentionMaps]:
    """Captured v1 records -> AttentionMaps for the query patch under pixel ``point`` = (y, x)
    of the input (default: its centre)."""
    point = point if point is not None else (image_size[0] / 2, image_size[1] / 2)
    maps = []
    for r in _chosen(records, per_layer):
        if r.kind != "attention":
            raise NpvitError("attention maps need MobileViT v1 (multi-head attention) records")
        p = r.patch_size[0] * r.patch_size[1]
        row, col = query_patch(point, image_size, r.grid)
        attention = r.weights[:p]                                 # (P, h, N, N), image 0
        from_query = attention[:, :, row * r.grid[1] + col, :]    # (P, h, N)
        heads = pixel_shuffle(from_query.transpose(1, 0, 2), r.grid, r.patch_size)  # (h, 2n_h, 2n_w)
        received = attention.mean(axis=(1, 2))                    # (P, N): mean over heads, queries
        received = pixel_shuffle(received[None], r.grid, r.patch_size)[0]
        maps.append(AttentionMaps(
            r.stride, r.layer, r.depth, (row, col), heads, received,
            np.stack([heatmap(h, image_size) for h in heads]), heatmap(received, image_size)))
    return maps


def attention_maps(model, image, point: tuple[float, float] | None = None,
                   per_layer: bool = False) -> list[AttentionMaps]:
    """MobileViT v1's attention for one image at output strides 8, 16, 32: per head for the query
    patch under pixel ``point`` = (y, x) of the input (default: the centre), and the attention
    each patch receives; the last layer of each block, or every layer with per_layer=True."""
    if model.version != 1:
        raise NpvitError(f"{model.name} is MobileViTv2: its separable attention has no per-query "
                         f"attention weights; use npvit.viz.context_score_maps")
    x = model_input(model, image)
    _, records = run_with_capture(model, x)
    return head_attention_maps(records, x.shape[2:], point, per_layer)
