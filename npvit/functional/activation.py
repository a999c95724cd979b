"""Element-wise activations, softmax and dropout, each a forward/backward pair."""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erfc, expit


def relu_forward(x):
    """y = max(x, 0), any shape."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dy, mask):
    return dy * mask


def silu_forward(x):
    """SiLU ("swish" in ml-cvnets): y = x * sigmoid(x), any shape."""
    s = expit(x)                          # stable sigmoid for large |x|
    return x * s, (x, s)


def silu_backward(dy, cache):
    # d/dx [x s(x)] = s + x s (1 - s)
    x, s = cache
    return dy * (s * (1 + x * (1 - s)))


# Python floats, not NumPy float64 scalars, so float32 inputs stay float32 (NEP 50).
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """Exact GELU (PyTorch's default): y = x * Phi(x), Phi the standard normal CDF."""
    # Phi(x) = erfc(-x / sqrt 2) / 2 rather than (1 + erf(x / sqrt 2)) / 2: for x << 0 the
    # latter is 1 plus a number close to -1, which cancels to zero and loses the tail.
    cdf = 0.5 * erfc(-x * _INV_SQRT2)
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    # d/dx [x Phi(x)] = Phi(x) + x phi(x)
    x, cdf = cache
    pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return dy * (cdf + x * pdf)


def softmax_forward(x, axis: int = -1):
    """Softmax along ``axis`` (the max is subtracted first so exp never overflows)."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dy, cache):
    # Jacobian-vector product of softmax: dx = y * (dy - sum(dy * y)).
    y, axis = cache
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def dropout_forward(x, p: float, training: bool, rng: np.random.Generator | None = None):
    """Inverted dropout: in training, zero each element with probability p and scale the rest
    by 1/(1-p), so eval needs no rescaling; in eval (or p == 0) it is the identity."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x, None
    if p == 1.0:                          # everything dropped (1/(1-p) would make 0/0)
        mask = np.zeros_like(x)
    else:
        if rng is None:
            rng = np.random.default_rng()
        mask = (rng.random(x.shape) >= p).astype(x.dtype) / (1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask
