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


def min_max_normalise_backward(d_out, v):
    # out_j = (v_j - v[lo]) / R with R = v[hi] - v[lo]; lo, hi the positions of min and max.
    #   d out_j / d v_k = [j = k] / R - [k = lo] / R - (v_j - v[lo]) / R^2 ([k = hi] - [k = lo])
    lo, hi = np.argmin(v), np.argmax(v)
    r = v.flat[hi] - v.flat[lo]
    out = (v - v.flat[lo]) / r
    d_v = d_out / r
    d_v.flat[lo] -= d_out.sum() / r
    through_range = (d_out * out).sum() / r        # sum_j d_out_j (v_j - v[lo]) / R^2
    d_v.flat[hi] -= through_range
    d_v.flat[lo] += through_range
    return d_v


def min_max_normalise_backward_constant_range(d_out, v):
    """Wrong: treats min and max as constants, as if they did not depend on v."""
    return d_out / (v.max() - v.min())


WRONG_ANSWERS = {
    "pixel_shuffle_loops": pixel_shuffle_loops_transposed,
    "min_max_normalise_backward": min_max_normalise_backward_constant_range,
}
