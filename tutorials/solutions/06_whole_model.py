"""Solutions to the exercises of tutorial 6, and the wrong answers their checkers must reject."""
import math

import numpy as np
from scipy.special import erfc


def gelu_backward(dy, x):
    # d/dx [x Phi(x)] = Phi(x) + x phi(x)
    cdf = 0.5 * erfc(-x / math.sqrt(2))                      # Phi(x), accurate in the far tail
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)      # phi(x)
    return dy * (cdf + x * pdf)


def gelu_backward_cdf_only(dy, x):
    """Wrong: forgets the product rule's second term x phi(x)."""
    return dy * 0.5 * erfc(-x / math.sqrt(2))


def sgd_nesterov_step(w, grad, buf, lr, momentum, weight_decay):
    g = grad + weight_decay * w
    buf = g.copy() if buf is None else momentum * buf + g
    return w - lr * (g + momentum * buf), buf


def sgd_plain_momentum_step(w, grad, buf, lr, momentum, weight_decay):
    """Wrong: steps along the buffer (heavy-ball momentum), not Nesterov's look-ahead g + mu b."""
    g = grad + weight_decay * w
    buf = g.copy() if buf is None else momentum * buf + g
    return w - lr * buf, buf


WRONG_ANSWERS = {
    "gelu_backward": gelu_backward_cdf_only,
    "sgd_nesterov_step": sgd_plain_momentum_step,
}
