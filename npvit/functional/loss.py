"""Losses, forward and backward: cross-entropy with label smoothing, and smooth L1.

With p = softmax(z) for the logits z of one sample and a target distribution q over the C
classes, the loss is the cross-entropy  L = -sum_c q_c log p_c.  Label smoothing (Szegedy et al.
2016; the MobileViT recipes use eps = 0.1) moves eps of the target's mass from the true class y
to all classes evenly:

    q_c = (1 - eps) [c == y] + eps / C

which is what PyTorch's ``F.cross_entropy(..., label_smoothing=eps)`` computes. The batch loss
is the mean over the N samples.

The gradient is the classic one: dL/dz = p - q per sample (the softmax Jacobian and the log
cancel), divided by N for the mean.
"""
from __future__ import annotations

import numpy as np

from ..errors import NpvitError


def log_softmax(z, axis: int = -1):
    """log softmax(z) = z - max - log(sum(exp(z - max))): subtracting the max first means exp
    never overflows, and taking the log of a sum of terms <= 1 (one of them exactly 1) never
    underflows to log(0)."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy_forward(logits, targets, label_smoothing: float = 0.0):
    """logits: (N, C) float; targets: (N,) integer class indices in [0, C).

    Returns (loss, cache): loss is a Python float, the mean over the batch.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise NpvitError(f"cross entropy needs logits (N, C) and targets (N,), "
                         f"got {logits.shape} and {targets.shape}")
    n, c = logits.shape
    if not np.issubdtype(targets.dtype, np.integer):
        raise NpvitError(f"cross entropy targets must be integer class indices, "
                         f"got {targets.dtype}")
    if targets.size and (targets.min() < 0 or targets.max() >= c):
        raise NpvitError(f"cross entropy targets must lie in [0, {c}), "
                         f"got {targets.min()}..{targets.max()}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise NpvitError(f"label_smoothing must be in [0, 1], got {label_smoothing}")

    logp = log_softmax(logits, axis=1)                       # (N, C)
    q = np.full_like(logp, label_smoothing / c)             # (N, C) smoothed one-hot target
    q[np.arange(n), targets] += 1.0 - label_smoothing
    loss = float(-(q * logp).sum() / n)
    return loss, (logp, q)


def cross_entropy_backward(cache):
    """-> dlogits (N, C) = (softmax(logits) - q) / N, the gradient of the mean loss."""
    logp, q = cache
    return (np.exp(logp) - q) / logp.shape[0]


def pixel_cross_entropy_forward(logits, targets, ignore_index: int = -1):
    """The segmentation loss: cross entropy at every pixel, averaged over the pixels whose
    target is not ``ignore_index`` (torch's ``F.cross_entropy(logits, targets,
    ignore_index=...)`` with mean reduction). ml-cvnets ignores 255 for PASCAL VOC (the object
    borders) and -1 for ADE20k (mask value 0, "other", shifted by -1).

    logits: (N, C, H, W) float; targets: (N, H, W) integers in [0, C) or == ignore_index.
    Returns (loss, cache); with no valid pixel at all the loss is 0 and so is its gradient
    (torch returns NaN there).
    """
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise NpvitError(f"pixel cross entropy needs logits (N, C, H, W) and targets (N, H, W), "
                         f"got {logits.shape} and {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise NpvitError(f"segmentation targets must be integer class indices, got {targets.dtype}")
    c = logits.shape[1]
    valid = targets != ignore_index                                  # (N, H, W)
    bad = valid & ((targets < 0) | (targets >= c))
    if bad.any():
        raise NpvitError(f"segmentation targets must lie in [0, {c}) or equal the ignore index "
                         f"{ignore_index}; found {targets[bad][0]}")
    logp = log_softmax(logits, axis=1)                               # (N, C, H, W)
    safe = np.where(valid, targets, 0)
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]   # (N, H, W) log p of target
    count = int(valid.sum())
    loss = float(-(picked * valid).sum() / count) if count else 0.0
    return loss, (logp, safe, valid, count)


def pixel_cross_entropy_backward(cache):
    """-> dlogits (N, C, H, W) = (softmax - onehot(target)) / count at valid pixels, 0 at ignored."""
    logp, safe, valid, count = cache
    if count == 0:
        return np.zeros_like(logp)
    grad = np.exp(logp)
    np.put_along_axis(grad, safe[:, None], np.take_along_axis(grad, safe[:, None], axis=1) - 1,
                      axis=1)
    grad *= valid[:, None] / count
    return grad


def smooth_l1_forward(pred, target, beta: float = 1.0):
    """Smooth L1 (Huber-like) loss SUMMED over all elements, as SSD's box loss uses it
    (torch ``F.smooth_l1_loss(..., reduction="sum")``): with d = pred - target,

        l(d) = 0.5 d^2 / beta   where |d| < beta,     |d| - 0.5 beta   elsewhere.

    pred, target: the same shape, any. Returns (loss as a Python float, cache)."""
    d = np.asarray(pred) - np.asarray(target)
    small = np.abs(d) < beta
    loss = np.where(small, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta).sum()
    return float(loss), (d, small, beta)


def smooth_l1_backward(cache):
    """-> dpred, the gradient of the summed loss: d / beta inside the quadratic zone, sign(d)
    outside (dtarget is its negative)."""
    d, small, beta = cache
    return np.where(small, d / beta, np.sign(d))
