"""Solutions to the exercises of tutorial 10, and the wrong answers their checkers must reject."""
import numpy as np


def window_merge_by_reshapes(d_windows, height, width, ws):
    n_h, n_w, c = height // ws, width // ws, d_windows.shape[-1]
    b = d_windows.shape[0] // (n_h * n_w)
    t = d_windows.reshape(b, n_h, n_w, ws, ws, c)         # undo the last reshape
    t = t.transpose(0, 1, 3, 2, 4, 5)                     # swapping axes 2 and 3 is its own inverse
    return t.reshape(b, height, width, c)                 # undo the first reshape


def window_merge_without_transpose(d_windows, height, width, ws):
    """Wrong: reshapes straight back, so the tokens of a window land in one image row."""
    b = d_windows.shape[0] // ((height // ws) * (width // ws))
    return d_windows.reshape(b, height, width, d_windows.shape[-1])


def bias_table_backward(d_bias, index, table_size):
    d_table = np.zeros((d_bias.shape[0], table_size), dtype=d_bias.dtype)
    np.add.at(d_table, (slice(None), index), d_bias)      # repeated indices accumulate
    return d_table


def bias_table_backward_fancy_assign(d_bias, index, table_size):
    """Wrong: buffered fancy-index += keeps one pair's gradient per entry instead of the sum."""
    d_table = np.zeros((d_bias.shape[0], table_size), dtype=d_bias.dtype)
    d_table[:, index] += d_bias
    return d_table


WRONG_ANSWERS = {
    "window_merge_by_reshapes": window_merge_without_transpose,
    "bias_table_backward": bias_table_backward_fancy_assign,
}
