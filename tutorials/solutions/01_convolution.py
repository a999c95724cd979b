"""Solutions to the exercises of tutorial 1, and the wrong answers their checkers must reject."""
import numpy as np


def conv2d_backward_loops(dy, x, w, stride, pad):
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    _, _, ho, wo = dy.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(c_out)
    for s in range(n):
        for o in range(c_out):
            for a in range(ho):
                for bb in range(wo):
                    rows = slice(a * stride, a * stride + kh)
                    cols = slice(bb * stride, bb * stride + kw)
                    # y[s, o, a, bb] = b[o] + sum(w[o] * xp[s, :, rows, cols])
                    dw[o] += dy[s, o, a, bb] * xp[s, :, rows, cols]
                    dxp[s, :, rows, cols] += dy[s, o, a, bb] * w[o]
                    db[o] += dy[s, o, a, bb]
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, db


def conv2d_backward_loops_assigns(dy, x, w, stride, pad):
    """Wrong: writes dx with '=' where windows overlap, so only the last window's share stays."""
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    _, _, ho, wo = dy.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(c_out)
    for s in range(n):
        for o in range(c_out):
            for a in range(ho):
                for bb in range(wo):
                    rows = slice(a * stride, a * stride + kh)
                    cols = slice(bb * stride, bb * stride + kw)
                    dw[o] += dy[s, o, a, bb] * xp[s, :, rows, cols]
                    dxp[s, :, rows, cols] = dy[s, o, a, bb] * w[o]
                    db[o] += dy[s, o, a, bb]
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, db


def depthwise_conv2d_backward(dy, x, w, stride, pad):
    n, c, h, wd = x.shape
    k = w.shape[2]
    _, _, ho, wo = dy.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(k):
        for j in range(k):
            # the strided view of the padded input that tap (i, j) reads: (N, C, H_out, W_out)
            view = (slice(None), slice(None), slice(i, i + stride * (ho - 1) + 1, stride),
                    slice(j, j + stride * (wo - 1) + 1, stride))
            dw[:, 0, i, j] = (dy * xp[view]).sum(axis=(0, 2, 3))
            dxp[view] += dy * w[:, 0, i, j].reshape(1, c, 1, 1)
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw


def depthwise_conv2d_backward_first_sample(dy, x, w, stride, pad):
    """Wrong: the weight gradient of sample 0 only; it must sum over the batch."""
    dx, _ = depthwise_conv2d_backward(dy, x, w, stride, pad)
    _, dw = depthwise_conv2d_backward(dy[:1], x[:1], w, stride, pad)
    return dx, dw


WRONG_ANSWERS = {
    "conv2d_backward_loops": conv2d_backward_loops_assigns,
    "depthwise_conv2d_backward": depthwise_conv2d_backward_first_sample,
}
