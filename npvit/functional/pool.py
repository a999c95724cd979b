"""Global and adaptive average pooling over the spatial axes."""
from __future__ import annotations

import numpy as np


def global_avg_pool_forward(x):
    """x: (N, C, H, W) -> y: (N, C), the mean over H and W."""
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(dy, x_shape):
    """dy: (N, C) -> dx: (N, C, H, W); every pixel gets an equal share 1/(H W)."""
    n, c, h, w = x_shape
    dx = (dy / (h * w)).reshape(n, c, 1, 1)
    return dx.repeat(h, axis=2).repeat(w, axis=3)


def adaptive_pool_matrix(n_in: int, n_out: int, dtype=np.float64) -> np.ndarray:
    """(n_out, n_in) averaging matrix of PyTorch's adaptive pooling along one axis.

    Bin i covers [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)): bins overlap when
    n_in is not a multiple of n_out (64 -> 6: bins of 11 with shared edges), and with
    n_out > n_in pixels repeat. Row i holds 1 / (bin length) over its bin.
    """
    a = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)          # ceil((i + 1) * n_in / n_out)
        a[i, start:end] = 1.0 / (end - start)
    return a.astype(dtype)


def adaptive_avg_pool_forward(x, size):
    """x: (N, C, H, W) -> y: (N, C, size[0], size[1]), as torch's AdaptiveAvgPool2d(size).

    Averaging is separable and linear, so y = P_h @ x @ P_w^T with the matrices of
    :func:`adaptive_pool_matrix`, and the backward is the transposed products."""
    h, w = x.shape[2:]
    p_h = adaptive_pool_matrix(h, size[0], x.dtype)
    p_w = adaptive_pool_matrix(w, size[1], x.dtype)
    return p_h @ (x @ p_w.T), (p_h, p_w)


def adaptive_avg_pool_backward(dy, cache):
    """dy: (N, C, size[0], size[1]) -> dx: (N, C, H, W)."""
    p_h, p_w = cache
    return p_h.T @ (dy @ p_w)
