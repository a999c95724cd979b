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


def cross_entropy_grad(z, y):
    # dL/dz_n = (softmax(z_n) - onehot(y_n)) / N for the mean over the batch
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)


def cross_entropy_grad_of_the_sum(z, y):
    """Wrong: the gradient of the summed loss; the mean's 1/N is forgotten."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p


WRONG_ANSWERS = {
    "share_backward": share_backward_without_normalisation,
    "cross_entropy_grad": cross_entropy_grad_of_the_sum,
}
