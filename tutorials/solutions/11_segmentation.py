"""Solutions to the exercises of tutorial 11, and the wrong answers their checkers must reject."""
import numpy as np


def adaptive_pool_rows(n, p):
    a = np.zeros((p, n))
    for i in range(p):
        start, end = (i * n) // p, -((-(i + 1) * n) // p)     # floor, ceil
        a[i, start:end] = 1.0 / (end - start)
    return a


def adaptive_pool_rows_floor(n, p):
    """Wrong: floors both ends, so bins never overlap and, for p > n, some are empty."""
    a = np.zeros((p, n))
    for i in range(p):
        start, end = (i * n) // p, ((i + 1) * n) // p
        a[i, start:end] = 1.0 / max(end - start, 1)
    return a


def pixel_cross_entropy_backward_by_hand(logits, targets, ignore_index):
    valid = targets != ignore_index                                   # (N, H, W)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)                                 # softmax over C
    onehot = np.arange(logits.shape[1])[None, :, None, None] == targets[:, None]
    return (p - onehot) * valid[:, None] / max(int(valid.sum()), 1)


def pixel_cross_entropy_backward_all_pixels(logits, targets, ignore_index):
    """Wrong: zero at ignored pixels, but divided by all pixels instead of the valid ones."""
    valid = targets != ignore_index
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.arange(logits.shape[1])[None, :, None, None] == targets[:, None]
    return (p - onehot) * valid[:, None] / valid.size


WRONG_ANSWERS = {"adaptive_pool_rows": adaptive_pool_rows_floor,
                 "pixel_cross_entropy_backward_by_hand": pixel_cross_entropy_backward_all_pixels}
