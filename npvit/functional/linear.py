"""Fully connected layer: y = x W^T + b, over the last axis of x (any leading axes)."""
from __future__ import annotations


def linear_forward(x, w, b=None):
    """x: (..., in); w: (out, in); b: (out,) or None -> y: (..., out)."""
    y = x @ w.T
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def linear_backward(dy, cache):
    """dy: (..., out) -> (dx (..., in), dw (out, in), db (out,) or None)."""
    x, w, has_bias = cache
    dx = dy @ w
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dw = dy2.T @ x2                       # sum over every leading position
    db = dy2.sum(axis=0) if has_bias else None
    return dx, dw, db
