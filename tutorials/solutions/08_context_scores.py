"""Solutions to the exercises of tutorial 8, and the wrong answers their checkers must reject."""
import numpy as np


def pixel_shuffle_loops(scores, grid):
    n_h, n_w = grid
    out = np.empty((2 * n_h, 2 * n_w), dtype=scores.dtype)
    for i in range(n_h):
        for j in range(n_w):
            for a in range(2):
                for b in range(2):
                    out[2 * i + a, 2 * j + b] = scores[2 * a + b, i * n_w + j]
    return out


def pixel_shuffle_loops_transposed(scores, grid):
    """Wrong: reads pixel position p as 2b + a, which mirrors every 2x2 patch on its diagonal."""
    n_h, n_w = grid
    out = np.empty((2 * n_h, 2 * n_w), dtype=scores.dtype)
    for i in range(n_h):
        for j in range(n_w):
            for a in range(2):
                for b in range(2):
                    out[2 * i + a, 2 * j + b] = scores[2 * b + a, i * n_w + j]
    return out


def upsample_nearest_backward(d_map, s):
    h, w = d_map.shape[0] // s, d_map.shape[1] // s
    return d_map.reshape(h, s, w, s).sum(axis=(1, 3))          # every copy sends its gradient back


def upsample_nearest_backward_mean(d_map, s):
    """Wrong: averages the block instead of summing it (a mean is the backward of a pooling, not of a copy)."""
    h, w = d_map.shape[0] // s, d_map.shape[1] // s
    return d_map.reshape(h, s, w, s).mean(axis=(1, 3))


WRONG_ANSWERS = {
    "pixel_shuffle_loops": pixel_shuffle_loops_transposed,
    "upsample_nearest_backward": upsample_nearest_backward_mean,
}
