"""Element-wise activations, softmax and dropout, each a forward/backward pair."""
from __future__ import annotations

import math

import numpy as np

from .cache_blocks import blocks


def relu_forward(x):
    """y = max(x, 0), any shape."""
    mask = x > 0
    return x * mask, mask


def relu_backward(dy, mask):
    return dy * mask


def silu_forward(x, inplace: bool = False, halved: bool = False):
    """SiLU ("swish" in ml-cvnets): y = x * sigmoid(x), any shape.

    Computed as y = h (1 + tanh h) with h = x / 2, because sigmoid(x) = (1 + tanh(x/2)) / 2.
    Same function, cheaper here: NumPy's float32 tanh is about 3x faster than its exp
    (1M values, one thread: tanh 0.17 ms, exp 0.35-0.53 ms), and the four passes (halve, tanh,
    +1, multiply) took 0.45 ms where x / (1 + exp(-x)) took 0.8 ms. tanh saturates at +-1, so
    nothing overflows at any input. The passes run over cache-sized blocks (``cache_blocks``):
    a training batch's activations are tens of MB, and four passes over each block while it
    is in the cache beat four passes over the whole array ((8, 64, 128, 128): 5.1 vs 9.4 ms).
    inplace=True writes y over x: only for a caller that owns x (e.g. the fresh output of a
    conv that nobody else holds); it saves allocating a second array of x's size.
    halved=True: the caller passes h = x/2 instead of x, and the halving pass is skipped
    (ConvNormAct's inference path folds the 1/2 into its convolution's weights, where it costs
    a few kB instead of a pass over the feature map; halving is exact in binary floating point,
    so the result is bit for bit the same).
    The cache is (y, t) with t = 1 + tanh(x/2) = 2 sigmoid(x): backward needs only these, so
    x itself need not survive.
    """
    if not x.flags.c_contiguous:          # the blocks are slices of the flat array
        x, inplace = np.ascontiguousarray(x), True     # a fresh copy: ours to overwrite
    y = x if inplace else np.empty_like(x)
    t = np.empty_like(x)
    flat_x, flat_y, flat_t = x.reshape(-1), y.reshape(-1), t.reshape(-1)
    for part in blocks(x.size, 2 * x.itemsize):
        h = flat_y[part]                  # h = x/2 goes where y will be
        if not halved:
            np.multiply(flat_x[part], 0.5, out=h)
        elif not inplace:
            h[...] = flat_x[part]
        np.tanh(h, out=flat_t[part])
        flat_t[part] += 1                 # t = 1 + tanh(x/2) = 2 sigmoid(x)
        np.multiply(h, flat_t[part], out=h)
    return y, (y, t)


def silu_backward(dy, cache):
    # d/dx [x s(x)] = s + x s (1 - s) = s + y (1 - s) = s (1 - y) + y, with s = sigmoid(x) = t/2;
    # built up in one buffer, block by block as in the forward
    y, t = cache
    dy = np.ascontiguousarray(dy)
    grad = np.empty_like(y)
    flat_y, flat_t, flat_dy, flat_grad = y.reshape(-1), t.reshape(-1), dy.reshape(-1), grad.reshape(-1)
    for part in blocks(y.size, 4 * y.itemsize):
        g = np.subtract(1, flat_y[part], out=flat_grad[part])
        g *= flat_t[part]
        g *= 0.5
        g += flat_y[part]
        g *= flat_dy[part]
    return grad


# Python floats, not NumPy float64 scalars, so float32 inputs stay float32 (NEP 50).
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """Exact GELU (PyTorch's default): y = x * Phi(x), Phi the standard normal CDF."""
    # Phi(x) = erfc(-x / sqrt 2) / 2 rather than (1 + erf(x / sqrt 2)) / 2: for x << 0 the
    # latter is 1 plus a number close to -1, which cancels to zero and loses the tail.
    from scipy.special import erfc        # here, not at the top: it is 0.12 s of `import npvit`
    cdf = 0.5 * erfc(-x * _INV_SQRT2)
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    # d/dx [x Phi(x)] = Phi(x) + x phi(x)
    x, cdf = cache
    pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return dy * (cdf + x * pdf)


def softmax_forward(x, axis: int = -1, inplace: bool = False):
    """Softmax along ``axis`` (the max is subtracted first so exp never overflows).

    inplace=True writes the result over x (for a caller that owns x, such as fresh attention
    scores): the shift, exp and normalisation then run in one buffer without new allocations.
    """
    y = np.subtract(x, x.max(axis=axis, keepdims=True), out=x if inplace else None)
    np.exp(y, out=y)
    y /= y.sum(axis=axis, keepdims=True)
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


def dropout2d_forward(x, p: float, training: bool, rng: np.random.Generator | None = None):
    """Channel dropout (torch's Dropout2d): x (N, C, H, W); in training each whole (sample,
    channel) plane is zeroed with probability p and the rest scaled by 1/(1-p). The mask has
    shape (N, C, 1, 1) and broadcasts, so ``dropout_backward`` is its backward too."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x, None
    if rng is None:
        rng = np.random.default_rng()
    keep = rng.random((x.shape[0], x.shape[1], 1, 1)) >= p
    mask = keep.astype(x.dtype) / (1.0 - p) if p < 1.0 else np.zeros((*x.shape[:2], 1, 1), x.dtype)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask
