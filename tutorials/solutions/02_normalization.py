"""Solutions to the exercises of tutorial 2, and the wrong answers their checkers must reject."""
import numpy as np


def batchnorm_train_backward(dy, x, gamma, eps=1e-5):
    axes = (0, 2, 3)                                     # BatchNorm's shared axes
    mu = x.mean(axis=axes, keepdims=True)
    rstd = (((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps) ** -0.5
    x_hat = (x - mu) * rstd
    dx_hat = dy * gamma.reshape(1, -1, 1, 1)
    dx = rstd * (dx_hat - dx_hat.mean(axis=axes, keepdims=True)
                 - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))
    return dx, (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def batchnorm_backward_as_in_eval(dy, x, gamma, eps=1e-5):
    """Wrong: treats the batch statistics as constants (the eval-mode backward)."""
    axes = (0, 2, 3)
    mu = x.mean(axis=axes, keepdims=True)
    rstd = (((x - mu) ** 2).mean(axis=axes, keepdims=True) + eps) ** -0.5
    x_hat = (x - mu) * rstd
    return dy * gamma.reshape(1, -1, 1, 1) * rstd, (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def groupnorm_backward(dy, x, groups, gamma, eps=1e-5):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)                        # one row per (sample, group)
    mu = xg.mean(axis=-1, keepdims=True)
    rstd = (((xg - mu) ** 2).mean(axis=-1, keepdims=True) + eps) ** -0.5
    x_hat = ((xg - mu) * rstd).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    dx_hat = (dy * gamma.reshape(shape)).reshape(n, groups, -1)
    xh = x_hat.reshape(n, groups, -1)
    dx = rstd * (dx_hat - dx_hat.mean(axis=-1, keepdims=True)
                 - xh * (dx_hat * xh).mean(axis=-1, keepdims=True))
    axes = (0,) + tuple(range(2, x.ndim))
    return dx.reshape(x.shape), (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def groupnorm_backward_per_channel(dy, x, groups, gamma, eps=1e-5):
    """Wrong: normalises every channel on its own (C groups) whatever ``groups`` says."""
    return groupnorm_backward(dy, x, x.shape[1], gamma, eps)


def fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps):
    scale = gamma / np.sqrt(running_var + eps)          # (C_out,)
    return w * scale.reshape(-1, 1, 1, 1), (b - running_mean) * scale + beta


def fold_batchnorm_unscaled_bias(w, b, gamma, beta, running_mean, running_var, eps):
    """Wrong: adds the conv bias without scaling it like the rest of the output."""
    scale = gamma / np.sqrt(running_var + eps)
    return w * scale.reshape(-1, 1, 1, 1), b - running_mean * scale + beta


WRONG_ANSWERS = {
    "batchnorm_train_backward": batchnorm_backward_as_in_eval,
    "groupnorm_backward": groupnorm_backward_per_channel,
    "fold_batchnorm": fold_batchnorm_unscaled_bias,
}
