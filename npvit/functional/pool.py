"""Global average pooling over the spatial axes."""
from __future__ import annotations


def global_avg_pool_forward(x):
    """x: (N, C, H, W) -> y: (N, C), the mean over H and W."""
    return x.mean(axis=(2, 3)), x.shape


def global_avg_pool_backward(dy, x_shape):
    """dy: (N, C) -> dx: (N, C, H, W); every pixel gets an equal share 1/(H W)."""
    n, c, h, w = x_shape
    dx = (dy / (h * w)).reshape(n, c, 1, 1)
    return dx.repeat(h, axis=2).repeat(w, axis=3)
