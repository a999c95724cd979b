"""Batch, layer and group normalisation, forward and backward.

All three standardise x over some axes, x_hat = (x - mean) / sqrt(var + eps) with the biased
variance, then apply a per-channel affine y = gamma * x_hat + beta. They differ only in the
axes: batch norm over (N, H, W) per channel, layer norm over the last axis per token, group
norm over (C/G, *spatial) per sample and group. Layer and group norm share the standardisation
and its backward (``_standardize_*``) and only choose axes and reshapes; batch norm, whose gamma
is constant over each of its groups (a channel), writes the same formulas with per-channel
sums that its backward can reuse (``batchnorm2d_backward``).

Backward of standardisation over M elements (the derivation llm.c's layernorm doc walks through):
    dx = (1/sigma) * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
"""
from __future__ import annotations

import numpy as np


# Layer and group norm standardise over the last axis (group norm after a reshape). Its means
# are BLAS products: a matrix-vector product with a vector of 1/D, and np.vecdot per row for the
# means of squares and products (no squared or product array). Layer norm's rows are short
# (D = 64-240 channels per token), where np.mean's per-row reduction is about twice as slow
# (A/B in one process, float32 (4, 256, 64): 0.118 ms -> 0.062 ms for the whole standardisation).
def _row_mean(a):
    """Mean over the last axis, kept as a size-1 axis."""
    return np.matmul(a, np.full(a.shape[-1], 1.0 / a.shape[-1], dtype=a.dtype))[..., None]


def _row_mean_product(a, b):
    """mean(a * b) over the last axis, kept as a size-1 axis."""
    return (np.vecdot(a, b) / a.shape[-1])[..., None]


def _standardize_forward(x, eps):
    mean = _row_mean(x)
    x_hat = x - mean                                     # centred now, standardised in place below
    var = _row_mean_product(x_hat, x_hat)                # biased, in the working dtype
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat *= inv_std
    return x_hat, inv_std, mean, var


def _standardize_backward(dx_hat, x_hat, inv_std):
    dx = x_hat * _row_mean_product(dx_hat, x_hat)      # x_hat * mean(dx_hat * x_hat) ...
    np.subtract(dx_hat, dx, out=dx)                      # ... subtracted from dx_hat in place
    dx -= _row_mean(dx_hat)
    dx *= inv_std
    return dx


# --- batch norm -------------------------------------------------------------------------------
# Batch norm's statistics are per channel over (N, H, W): N * C planes of H * W values, each plane
# one row of x.reshape(N * C, H * W). Its sums are taken per plane with BLAS (a matrix-vector
# product with ones; a dot product per plane, np.vecdot, for the sums of products) and then over
# the N samples: np.sum over axes (0, 2, 3) and a product array + sum are 2-3x slower (float32
# (8, 64, 128, 128): sum 1.44 -> 0.82 ms, sum(dy * x_hat) 4.56 -> 1.41 ms).
def _channel_sums(a):
    """a: (N, C, *spatial) -> (C,): the sum of each channel over samples and positions."""
    n, c = a.shape[:2]
    planes = a.reshape(n * c, -1)
    return (planes @ np.ones(planes.shape[1], dtype=a.dtype)).reshape(n, c).sum(axis=0)


def _channel_dots(a, b):
    """a, b: (N, C, *spatial) -> (C,): sum(a * b) per channel, without the product array."""
    n, c = a.shape[:2]
    return np.vecdot(a.reshape(n * c, -1), b.reshape(n * c, -1)).reshape(n, c).sum(axis=0)


def batchnorm2d_forward(x, gamma, beta, running_mean, running_var, training: bool,
                        momentum: float = 0.1, eps: float = 1e-5, inplace: bool = False):
    """x: (N, C, H, W); gamma, beta, running_mean, running_var: (C,).

    training: normalise with the batch statistics and update running_mean / running_var
    IN PLACE (as torch.nn.functional.batch_norm does): r <- (1 - momentum) r + momentum s,
    where the variance fed to the running average is the unbiased one (M / (M - 1)).
    eval: normalise with the running statistics.
    y = x_c * (gamma * inv_std) + beta with the centred x_c = x - mean; the cache keeps x_c
    (x_hat = x_c * inv_std is never stored: the backward folds inv_std into per-channel factors).
    inplace=True centres x in place (x_c is then x itself): only for a fresh x nobody else keeps.
    """
    c = x.shape[1]
    per_channel = (1, c) + (1,) * (x.ndim - 2)
    if training:
        m = x.size // c
        mean = _channel_sums(x) / m
        x_c = np.subtract(x, mean.reshape(per_channel), out=x if inplace else None)
        var = _channel_dots(x_c, x_c) / m                 # biased, from the centred values
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean
        running_var *= 1.0 - momentum
        running_var += momentum * var * (m / max(m - 1, 1))
        inv_std = 1.0 / np.sqrt(var + eps)
    else:
        x_c = np.subtract(x, running_mean.reshape(per_channel), out=x if inplace else None)
        inv_std = (1.0 / np.sqrt(running_var + eps)).astype(x.dtype)
    y = x_c * (gamma * inv_std).reshape(per_channel)
    y += beta.reshape(per_channel)
    return y, (x_c, inv_std, gamma, training)


def batchnorm2d_backward(dy, cache):
    """dy: (N, C, H, W) -> (dx, dgamma, dbeta). In eval mode the statistics are constants.

    With x_hat = x_c * inv_std and M = N * H * W values per channel, dbeta = sum(dy) and
    dgamma = sum(dy * x_hat) = inv_std * sum(dy * x_c). In training dx is the standardisation
    backward (module docstring) with dx_hat = gamma * dy; as gamma is constant over a channel's
    M values, mean(dx_hat) = gamma * dbeta / M and mean(dx_hat * x_hat) = gamma * dgamma / M,
    the two sums already taken, so
        dx = gamma * inv_std * (dy - dbeta / M - x_c * inv_std * dgamma / M),
    four passes over the feature map where the plain formula made eleven.
    """
    x_c, inv_std, gamma, training = cache
    c = dy.shape[1]
    per_channel = (1, c) + (1,) * (dy.ndim - 2)
    dbeta = _channel_sums(dy)
    dgamma = _channel_dots(dy, x_c) * inv_std
    if training:
        m = dy.size // c
        dx = x_c * (-inv_std * dgamma / m).reshape(per_channel)
        dx += (-dbeta / m).reshape(per_channel)
        dx += dy
        dx *= (gamma * inv_std).reshape(per_channel)
    else:
        dx = dy * (gamma * inv_std).reshape(per_channel)
    return dx, dgamma, dbeta


def fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps: float = 1e-5):
    """Fold an eval-mode BatchNorm into the convolution before it: returns (w', b') with
    conv(x, w', b') == batchnorm_eval(conv(x, w, b)).

    w: (C_out, C_in/G, kh, kw); b: (C_out,) or None; the BatchNorm arrays: (C_out,).
    In eval mode BN is the per-channel affine map y = s * (z - mean) + beta with
    s = gamma / sqrt(var + eps), and an affine map of a convolution is a convolution:
        w' = s * w (each output channel's filter scaled),  b' = s * (b - mean) + beta.
    Only valid with running statistics, i.e. never in training.
    """
    scale = gamma / np.sqrt(running_var + eps)           # (C_out,)
    w_folded = w * scale.reshape(-1, 1, 1, 1)
    b_folded = beta - running_mean * scale if b is None else beta + (b - running_mean) * scale
    return w_folded, b_folded


# --- layer norm -------------------------------------------------------------------------------
def layernorm_forward(x, gamma, beta, eps: float = 1e-5):
    """x: (..., D) normalised over its last axis; gamma, beta: (D,)."""
    x_hat, inv_std, _, _ = _standardize_forward(x, eps)
    y = x_hat * gamma
    y += beta
    return y, (x_hat, inv_std, gamma)


def layernorm_backward(dy, cache):
    """dy: (..., D) -> (dx, dgamma (D,), dbeta (D,))."""
    x_hat, inv_std, gamma = cache
    d = dy.shape[-1]
    dy_rows = dy.reshape(-1, d)
    ones = np.ones(dy_rows.shape[0], dtype=dy.dtype)     # sums over the rows as BLAS products
    dgamma = ones @ (dy_rows * x_hat.reshape(-1, d))
    dbeta = ones @ dy_rows
    dx = _standardize_backward(dy * gamma, x_hat, inv_std)
    return dx, dgamma, dbeta


# --- group norm -------------------------------------------------------------------------------
def groupnorm_forward(x, num_groups: int, gamma, beta, eps: float = 1e-5):
    """x: (N, C, *spatial); statistics per sample over each group of C/G channels and all
    spatial positions; gamma, beta: (C,). With num_groups=1 this is ml-cvnets' "LayerNorm2D"
    used by MobileViTv2 (one mean and variance per sample over C, P and N)."""
    n, c = x.shape[:2]
    xg = x.reshape(n, num_groups, -1)                     # (N, G, C/G * spatial)
    x_hat, inv_std, _, _ = _standardize_forward(xg, eps)
    x_hat = x_hat.reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = x_hat * gamma.reshape(shape)
    y += beta.reshape(shape)
    return y, (x_hat, inv_std, gamma, num_groups)


def groupnorm_backward(dy, cache):
    """dy: (N, C, *spatial) -> (dx, dgamma (C,), dbeta (C,))."""
    x_hat, inv_std, gamma, num_groups = cache
    n, c = dy.shape[:2]
    shape = (1, c) + (1,) * (dy.ndim - 2)
    dgamma = _channel_dots(dy, x_hat)
    dbeta = _channel_sums(dy)
    dx_hat = (dy * gamma.reshape(shape)).reshape(n, num_groups, -1)
    dx = _standardize_backward(dx_hat, x_hat.reshape(n, num_groups, -1), inv_std)
    return dx.reshape(dy.shape), dgamma, dbeta
