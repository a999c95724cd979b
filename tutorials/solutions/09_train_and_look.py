"""Solutions to the exercises of tutorial 9, and the wrong answers their checkers must reject."""
import numpy as np


def share_backward(values, r, c):
    # s = r^T V c / S with S = sum(V): the quotient rule gives (r_i c_j S - r^T V c) / S^2
    total = values.sum()
    share = r @ values @ c / total
    return (np.outer(r, c) - share) / total


def share_backward_without_normalisation(values, r, c):
    """Wrong: differentiates the mass inside the box, r^T V c, and divides by S as if S were a
    constant: it forgets that raising any cell also raises the total."""
    return np.outer(r, c) / values.sum()


WRONG_ANSWERS = {
    "share_backward": share_backward_without_normalisation,
}
