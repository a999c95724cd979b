"""Fully connected layer: y = x W^T + b, over the last axis of x (any leading axes).

The leading axes are flattened so each product is ONE GEMM over all positions (NumPy's matmul
of a 3-D x runs one GEMM per leading index), and the bias gradient is a matrix-vector product
with ones (BLAS; 2-2.5x faster than np.sum over the rows). Forward + backward A/B on
mobilevit_xxs's token shapes (32, N, D): 0.82 at N = 16, 0.93 at N = 64, 0.99-1.02 at N = 256.
"""
from __future__ import annotations

import numpy as np


def linear_forward(x, w, b=None):
    """x: (..., in); w: (out, in); b: (out,) or None -> y: (..., out)."""
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*x.shape[:-1], w.shape[0])
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def linear_backward(dy, cache):
    """dy: (..., out) -> (dx (..., in), dw (out, in), db (out,) or None)."""
    x, w, has_bias = cache
    dy2 = dy.reshape(-1, dy.shape[-1])                # (positions, out)
    dx = (dy2 @ w).reshape(x.shape)
    dw = dy2.T @ x.reshape(-1, x.shape[-1])           # sum over every leading position
    db = np.ones(dy2.shape[0], dtype=dy.dtype) @ dy2 if has_bias else None
    return dx, dw, db
