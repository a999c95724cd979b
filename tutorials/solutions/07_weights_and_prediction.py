"""Solutions to the exercises of tutorial 7, and the wrong answers their checkers must reject."""
import numpy as np


def cross_entropy_grad(z, c, eps):
    p = np.exp(z - z.max())
    p /= p.sum()
    q = np.full_like(p, eps / p.size)                  # the smoothed target
    q[c] += 1.0 - eps
    return p - q                                       # dL/dz = softmax(z) - q


def cross_entropy_grad_unsmoothed(z, c, eps):
    """Wrong: ignores the label smoothing (right only when eps = 0)."""
    p = np.exp(z - z.max())
    p /= p.sum()
    p[c] -= 1.0
    return p


def inverted_residual_params(c_in, c_out, expand):
    mid = c_in * expand
    expand_conv = c_in * mid + 2 * mid                 # 1x1 weights + BN weight and bias
    depthwise = mid * 9 + 2 * mid                      # one 3x3 filter per channel + BN
    project = mid * c_out + 2 * c_out                  # 1x1 weights + BN
    return expand_conv + depthwise + project


def inverted_residual_params_without_norms(c_in, c_out, expand):
    """Wrong: forgets the BatchNorms' weights and biases."""
    mid = c_in * expand
    return c_in * mid + mid * 9 + mid * c_out


def transformer_layer_params(d, separable):
    norms = 2 * 2 * d                                  # two norms, a weight and a bias each
    mlp = (d * 2 * d + 2 * d) + (2 * d * d + d)        # d -> 2d -> d with biases
    if separable:
        attention = (d * (1 + 2 * d) + 1 + 2 * d) + (d * d + d)
    else:
        attention = (d * 3 * d + 3 * d) + (d * d + d)
    return norms + attention + mlp


def transformer_layer_params_without_biases(d, separable):
    """Wrong: counts the weight matrices only."""
    attention = d * (1 + 2 * d) + d * d if separable else 4 * d * d
    return 2 * 2 * d + attention + 4 * d * d


WRONG_ANSWERS = {
    "cross_entropy_grad": cross_entropy_grad_unsmoothed,
    "inverted_residual_params": inverted_residual_params_without_norms,
    "transformer_layer_params": transformer_layer_params_without_biases,
}
