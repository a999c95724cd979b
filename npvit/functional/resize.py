"""Bilinear resizing with PyTorch's ``F.interpolate(mode="bilinear")`` semantics.

Bilinear interpolation is separable and linear, so resizing (H, W) -> (H_out, W_out) is
    y = A_h @ x @ A_w^T,
with A_h (H_out, H) and A_w (W_out, W) sparse interpolation matrices (at most two non-zeros a
row; one where the sample falls on, or is clamped to, a pixel).
The backward is then just the transposed products, dx = A_h^T @ dy @ A_w — the adjoint.

Where each output pixel samples (PyTorch, size given, no scale_factor):
  align_corners=True : src = dst * (in - 1) / (out - 1)      (corners map onto corners)
  align_corners=False: src = (dst + 0.5) * in / out - 0.5, clamped at 0 (pixel centres align)
No antialiasing: downsampling also reads only the two nearest input pixels, as PyTorch does.
MobileViT v1 uses align_corners=False (and resizes back after folding); v2 uses True.
"""
from __future__ import annotations

import numpy as np


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool, dtype=np.float64):
    """(n_out, n_in) matrix A with A @ v = v resampled bilinearly to n_out samples."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = dst * scale
    else:
        src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    a = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(a, (rows, i0), 1.0 - w1)
    np.add.at(a, (rows, i1), w1)
    return a.astype(dtype)


def resize_bilinear_forward(x, size, align_corners: bool):
    """x: (N, C, H, W) -> y: (N, C, size[0], size[1])."""
    h, w = x.shape[2:]
    a_h = interpolation_matrix(h, size[0], align_corners, x.dtype)
    a_w = interpolation_matrix(w, size[1], align_corners, x.dtype)
    y = a_h @ (x @ a_w.T)
    return y, (a_h, a_w)


def resize_bilinear_backward(dy, cache):
    """dy: (N, C, H_out, W_out) -> dx: (N, C, H, W)."""
    a_h, a_w = cache
    return a_h.T @ (dy @ a_w)


def resize_nearest(x, size):
    """x: (N, C, H, W) -> (N, C, size[0], size[1]), as ``F.interpolate(mode="nearest")``: output
    pixel d copies input pixel floor(d * in / out). (Used on logits before an argmax only, so
    it has no backward.)"""
    h, w = x.shape[2:]
    rows = np.minimum((np.arange(size[0]) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size[1]) * (w / size[1])).astype(np.int64), w - 1)
    return x[:, :, rows][:, :, :, cols]
