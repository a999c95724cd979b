"""Solutions to the exercises of tutorial 3, and the wrong answers their checkers must reject."""
import numpy as np

from npvit import functional as F


def interpolation_matrix(n_in, n_out, align_corners):
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = (i + 0.5) * n_in / n_out - 0.5
    src = np.clip(src, 0, n_in - 1)
    left = np.floor(src).astype(int)
    right = np.minimum(left + 1, n_in - 1)
    frac = src - left
    a = np.zeros((n_out, n_in))
    np.add.at(a, (np.arange(n_out), left), 1 - frac)
    np.add.at(a, (np.arange(n_out), right), frac)     # the same pixel again at the border
    return a


def interpolation_matrix_unclamped(n_in, n_out, align_corners):
    """Wrong: uses align_corners=False's positions without clamping the first one at 0."""
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.minimum((i + 0.5) * n_in / n_out - 0.5, n_in - 1)
    left = np.floor(src).astype(int)
    right = np.minimum(left + 1, n_in - 1)
    frac = src - left
    a = np.zeros((n_out, n_in))
    np.add.at(a, (np.arange(n_out), left), 1 - frac)   # left = -1 wraps to the last column
    np.add.at(a, (np.arange(n_out), right), frac)
    return a


def resize_backward(dy, in_hw, align_corners):
    a_h = F.interpolation_matrix(in_hw[0], dy.shape[2], align_corners)   # (H_out, H)
    a_w = F.interpolation_matrix(in_hw[1], dy.shape[3], align_corners)   # (W_out, W)
    return a_h.T @ dy @ a_w                                              # the adjoint


def resize_backward_resized_back(dy, in_hw, align_corners):
    """Wrong: resizes the gradient back to the input size (the inverse direction), which is not
    the adjoint: the weights of each output's two inputs are not the transposed ones."""
    dx, _ = F.resize_bilinear_forward(dy, in_hw, align_corners)
    return dx


WRONG_ANSWERS = {
    "interpolation_matrix": interpolation_matrix_unclamped,
    "resize_backward": resize_backward_resized_back,
}
