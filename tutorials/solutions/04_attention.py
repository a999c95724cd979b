"""Solutions to the exercises of tutorial 4, and the wrong answers their checkers must reject."""
import numpy as np


def linformer_projection_backward(d_key_p, key, e):
    # K'[b, r, c] = sum_n E[r, n] K[b, n, c]:
    #   E[r, n] touches K'[b, r, c] for every b, c with factor K[b, n, c]  -> sum over b and c
    #   K[b, n, c] touches K'[b, r, c] for every r with factor E[r, n]     -> E^T dK'
    d_key = e.T @ d_key_p                                      # (k, p) @ (B, p, d) -> (B, k, d)
    d_e = np.einsum("brc,bnc->rn", d_key_p, key)               # (p, k), summed over the batch
    return d_key, d_e


def linformer_projection_backward_first_sample(d_key_p, key, e):
    """Wrong: the gradient of E from sample 0 only; E is shared, so the samples' shares add."""
    return e.T @ d_key_p, d_key_p[0] @ key[0].T


def tempered_softmax_backward(dy, s, tau):
    y = np.exp(s / tau - (s / tau).max(axis=-1, keepdims=True))
    y /= y.sum(axis=-1, keepdims=True)
    du = y * (dy - (dy * y).sum(axis=-1, keepdims=True))       # the softmax JVP, u = s / tau
    ds = du / tau                                              # du/ds = 1 / tau
    dtau = float((du * -s / tau ** 2).sum())                   # du/dtau = -s / tau^2, every entry
    return ds, dtau


def tempered_softmax_backward_forgets_tau(dy, s, tau):
    """Wrong: the softmax JVP alone, without the 1 / tau of the chain rule."""
    y = np.exp(s / tau - (s / tau).max(axis=-1, keepdims=True))
    y /= y.sum(axis=-1, keepdims=True)
    du = y * (dy - (dy * y).sum(axis=-1, keepdims=True))
    return du, float((du * -s / tau ** 2).sum())


WRONG_ANSWERS = {
    "linformer_projection_backward": linformer_projection_backward_first_sample,
    "tempered_softmax_backward": tempered_softmax_backward_forgets_tau,
}
