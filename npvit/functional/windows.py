"""Cut a channels-last feature map into non-overlapping square windows and put it back, as
TinyViT (timm ``TinyVitBlock``) does around its window attention.

x (B, H, W, C) is padded with zeros at the bottom and right up to multiples of the window
size ws, then cut into nH * nW windows of ws * ws tokens: windows (B * nH * nW, ws * ws, C),
window index b * nH * nW + i * nW + j, token index r * ws + c inside a window (row-major,
as timm's view/transpose/reshape orders them). Attention then runs inside each window, so
its cost is (number of windows) * (ws * ws)^2: linear in the number of tokens H * W.

Partition is zero-padding followed by a permutation; merge is the inverse permutation
followed by cropping the padding. Each is the other's adjoint, so the backward of partition
is merge and the backward of merge is partition (the padded positions get no gradient).
"""
from __future__ import annotations

import numpy as np

from .. import opcount


def _grid(h: int, w: int, window: int) -> tuple[int, int]:
    """Windows per column and per row after padding H, W up to multiples of ``window``."""
    return -(-h // window), -(-w // window)


def window_partition(x, window: int):
    """x: (B, H, W, C) -> windows (B * nH * nW, window * window, C), zero-padded."""
    b, h, w, c = x.shape
    n_h, n_w = _grid(h, w, window)
    if (n_h * window, n_w * window) != (h, w):
        padded = np.zeros((b, n_h * window, n_w * window, c), dtype=x.dtype)
        padded[:, :h, :w] = x
        x = padded
    t = x.reshape(b, n_h, window, n_w, window, c).transpose(0, 1, 3, 2, 4, 5)  # B nH nW r c C
    return t.reshape(b * n_h * n_w, window * window, c)


def window_merge(windows, out_hw, window: int):
    """windows (B * nH * nW, window * window, C) -> (B, H, W, C), the padding cropped."""
    h, w = out_hw
    n_h, n_w = _grid(h, w, window)
    c = windows.shape[-1]
    b = windows.shape[0] // (n_h * n_w)
    x = windows.reshape(b, n_h, n_w, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, n_h * window, n_w * window, c)
    return np.ascontiguousarray(x[:, :h, :w])


def window_partition_forward(x, window: int):
    """(out, cache) form of :func:`window_partition`; the cache is the (H, W) to crop back to."""
    windows = window_partition(x, window)
    opcount.copy("partition into windows", windows)
    return windows, (x.shape[1:3], window)


def window_partition_backward(dwindows, cache):
    """dwindows (B * nH * nW, ws * ws, C) -> dx (B, H, W, C): merge, padding dropped."""
    hw, window = cache
    return window_merge(dwindows, hw, window)


def window_merge_forward(windows, out_hw, window: int):
    """(out, cache) form of :func:`window_merge`."""
    x = window_merge(windows, out_hw, window)
    opcount.copy("merge windows", x)
    return x, (tuple(out_hw), window)


def window_merge_backward(dx, cache):
    """dx (B, H, W, C) -> dwindows: partition again (zero gradient on the padding)."""
    _, window = cache
    return window_partition(dx, window)
