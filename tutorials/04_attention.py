# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 4. Multi-head attention vs separable self-attention
#
# MobileViT (v1) uses the transformer's **multi-head self-attention** (MHA). Every token
# compares itself with every other token, so k tokens cost a (k x k) score matrix per head:
# O(k^2 d) time and O(k^2) memory. MobileViTv2 replaces it with **separable self-attention**:
# one score per token, one context vector for the whole sequence, O(k d). This tutorial
# derives both, writes both backward passes out in NumPy, says what each one can and cannot
# express, counts their operations, measures their memory, and redraws the paper's Fig. 1
# (latency against k) with honest timings.
#
# Set `NPVIT_FIG1_FULL=1` to time the paper's full range k = 256 ... 16384 (at the top, MHA's
# (h, k, k) float32 scores alone are 8 x 16384^2 x 4 bytes = 8 GiB); by default a small
# range runs.

# %%
import os
import time
import tracemalloc

import numpy as np
from matplotlib.ticker import FuncFormatter

import npvit
from npvit import functional as F
from npvit.bench import attention as bench
from npvit.gradcheck import check_gradients, numeric_gradient, relative_error, wrap_op
from npvit.opcount import count_ops
from tutorial_setup import (FAST, Exercises, cpu_name, median_ms, optional_torch, plt, show,
                            skip_without_torch)

rng = np.random.default_rng(0)
exercises = Exercises("04")          # solutions: tutorials/solutions/04_attention.py
FIG1_FULL = os.environ.get("NPVIT_FIG1_FULL", "") not in ("", "0")

# %% [markdown]
# ## The softmax and its backward, derived
#
# Both attentions end in a softmax, so its backward comes first. For one row `s` of k scores,
# `y_i = exp(s_i) / sum_j exp(s_j)`. The quotient rule gives every partial derivative:
#
# $$ \frac{\partial y_i}{\partial s_j} = \frac{e^{s_i}[i=j]}{\sum e} - \frac{e^{s_i} e^{s_j}}{(\sum e)^2}
#    = y_i [i = j] - y_i y_j, \qquad J = \mathrm{diag}(y) - y y^T . $$
#
# The backward needs `ds = J^T dy` for an upstream gradient `dy`. J is symmetric, and
#
# $$ ds_j = \sum_i dy_i\,(y_i [i=j] - y_i y_j) = y_j\,dy_j - y_j \sum_i dy_i y_i
#    = y_j \big(dy_j - \langle dy, y \rangle\big). $$
#
# So `ds = y * (dy - sum(dy * y))`: O(k) per row instead of building the (k x k) Jacobian.
# Below: the Jacobian from the formula against one built column by column with finite
# differences, and the O(k) product against the Jacobian and against npvit's `softmax_backward`.
# (`relative_error` in tutorials 4, 5, 6 and 8 is npvit's `max |a - b| / max(|a|, |b|)` over
# the whole array, the number `check_gradients` reports: scale-free, so entries that are
# nearly zero do not turn rounding noise into a large error, as tutorial 1's element-wise
# version can.)

# %%
def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))     # minus the max: exp never overflows
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_by_hand(dy, y):
    """ds = J^T dy = y * (dy - <dy, y>), along the last axis."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


s, dy = rng.standard_normal(6), rng.standard_normal(6)
y = softmax(s)
jacobian = np.diag(y) - np.outer(y, y)
step = 1e-6
jacobian_fd = np.stack([(softmax(s + step * e) - softmax(s - step * e)) / (2 * step)
                        for e in np.eye(6)], axis=1)                   # column j: d y / d s_j
y_npvit, softmax_cache = F.softmax_forward(s)
errs = {"J vs finite differences": relative_error(jacobian, jacobian_fd),
        "y*(dy - <dy,y>) vs J^T dy": relative_error(softmax_backward_by_hand(dy, y), jacobian.T @ dy),
        "vs npvit softmax_backward": relative_error(softmax_backward_by_hand(dy, y),
                                                    F.softmax_backward(dy, softmax_cache))}
print(", ".join(f"{n}: {e:.1e}" for n, e in errs.items()))
assert errs["J vs finite differences"] < 1e-8 and max(list(errs.values())[1:]) < 1e-14

# %% [markdown]
# ## Multi-head self-attention
#
# Tokens `X` (k, d) (one sample; a batch just adds a leading axis). With h heads of width
# `d_h = d / h`:
#
# $$ [Q\,|\,K\,|\,V] = X W_{qkv}^T + b_{qkv}, \qquad
#    A_j = \mathrm{softmax}\!\Big(\frac{Q_j K_j^T}{\sqrt{d_h}}\Big), \qquad
#    Y = [A_1 V_1 | \dots | A_h V_h]\, W_{proj}^T + b_{proj}, $$
#
# where `Q_j` (k, d_h) are the columns of head j and the softmax runs over each row (over the
# keys). Written out with NumPy, head by head, keeping what the backward will need:


# %%
def mha_forward_by_hand(x, w_qkv, b_qkv, w_proj, b_proj, h):
    """x (k, d) -> y (k, d), cache."""
    k, d = x.shape
    d_h = d // h
    q, key, v = np.split(x @ w_qkv.T + b_qkv, 3, axis=1)              # (k, d) each
    attention, heads = [], []
    for j in range(h):
        cols = slice(j * d_h, (j + 1) * d_h)
        a = softmax(q[:, cols] @ key[:, cols].T / np.sqrt(d_h))        # (k, k), rows sum to 1
        attention.append(a)
        heads.append(a @ v[:, cols])                                   # (k, d_h)
    o = np.concatenate(heads, axis=1)                                  # (k, d)
    return o @ w_proj.T + b_proj, (x, q, key, v, attention, o, w_qkv, w_proj)


k, d, h = 10, 8, 2
mha_params = {"w_qkv": rng.standard_normal((3 * d, d)) / np.sqrt(d),
              "b_qkv": rng.standard_normal(3 * d) * 0.1,
              "w_proj": rng.standard_normal((d, d)) / np.sqrt(d),
              "b_proj": rng.standard_normal(d) * 0.1}
x = rng.standard_normal((2, k, d))
y_mha, mha_cache = F.multi_head_attention_forward(x, **mha_params, num_heads=h)
for b in range(2):
    assert relative_error(y_mha[b], mha_forward_by_hand(x[b], **mha_params, h=h)[0]) < 1e-14
print("npvit MHA == by hand; attention weights", mha_cache["attention"].shape, "= (B, h, k, k)")

# %% [markdown]
# ### Its backward, written out
#
# Go back through the lines, per head (`s = 1/sqrt(d_h)`, `S = s Q K^T`, `O = A V`):
#
# * `Y = O W^T + b`: `dW = dY^T O`, `db = sum_k dY`, `dO = dY W`;
# * `O = A V`:  `dV = A^T dO`,  `dA = dO V^T`;
# * softmax per row (derived above): `dS = A * (dA - rowsum(dA * A))`;
# * `S = s Q K^T`: `dQ = s dS K`,  `dK = s dS^T Q`;
# * the three head gradients stack back into the fused layout `[dQ | dK | dV]` (k, 3d), and
#   the first linear layer gives `dW_qkv = [dQ|dK|dV]^T X`, `db_qkv`, `dX = [dQ|dK|dV] W_qkv`.
#
# `dA` and `dS` are (k x k) as well: the backward pays the quadratic cost again.

# %%
def mha_backward_by_hand(dy, cache):
    """dy (k, d) -> dx, dw_qkv, db_qkv, dw_proj, db_proj."""
    x, q, key, v, attention, o, w_qkv, w_proj = cache
    d_h = q.shape[1] // len(attention)
    dw_proj, db_proj, do = dy.T @ o, dy.sum(axis=0), dy @ w_proj
    dq, dkey, dv = np.zeros_like(q), np.zeros_like(key), np.zeros_like(v)
    for j, a in enumerate(attention):
        cols = slice(j * d_h, (j + 1) * d_h)
        dv[:, cols] = a.T @ do[:, cols]
        da = do[:, cols] @ v[:, cols].T                                # (k, k)
        ds = softmax_backward_by_hand(da, a)                           # (k, k)
        dq[:, cols] = ds @ key[:, cols] / np.sqrt(d_h)
        dkey[:, cols] = ds.T @ q[:, cols] / np.sqrt(d_h)
    dqkv = np.concatenate([dq, dkey, dv], axis=1)                      # (k, 3d)
    return dqkv @ w_qkv, dqkv.T @ x, dqkv.sum(axis=0), dw_proj, db_proj


# against npvit (a batch of 2: the parameter gradients are the sums over the samples)
g = rng.standard_normal(y_mha.shape)
by_hand = [mha_backward_by_hand(g[b], mha_forward_by_hand(x[b], **mha_params, h=h)[1])
           for b in range(2)]
ours = (np.stack([by_hand[0][0], by_hand[1][0]]),                      # dx per sample
        *(a + b for a, b in zip(by_hand[0][1:], by_hand[1][1:])))      # parameters: summed
npvit_grads = F.multi_head_attention_backward(g, mha_cache)
errs = [relative_error(a, b) for a, b in zip(ours, npvit_grads)]
print("MHA backward by hand vs npvit (dx, dW_qkv, db_qkv, dW_proj, db_proj):",
      ", ".join(f"{e:.0e}" for e in errs))
assert max(errs) < 1e-13

# and against finite differences, on every input and parameter
mha_forward, mha_backward = wrap_op(
    lambda x, w_qkv, b_qkv, w_proj, b_proj: mha_forward_by_hand(x, w_qkv, b_qkv, w_proj, b_proj, h),
    mha_backward_by_hand, ["x", "w_qkv", "b_qkv", "w_proj", "b_proj"])
errors = check_gradients(mha_forward, mha_backward, {"x": x[0].copy(), **mha_params},
                         max_coords=24 if FAST else None)
print("MHA backward by hand vs finite differences:", ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## Separable self-attention (MobileViTv2, Section 3.2 of the paper)
#
# Keep the v2 layout `x` (B, d, P, N) (a plain sequence of k tokens is the case P = 1,
# N = k). One 1x1 convolution maps d channels to `1 + 2d`: a single **query score** `i` per
# token (the row `W_I`), keys `K` and values `V`. Then
#
# $$ c_s = \mathrm{softmax}_N(i) \in \mathbb{R}^{N}, \qquad
#    c_v = \sum_{n} c_s[n]\, K[:, n] \in \mathbb{R}^{d}, \qquad
#    y = W_O\big(\mathrm{ReLU}(V) \odot c_v\big), $$
#
# for each of the P pixel positions separately. There are no heads and no 1/sqrt(d) — and
# no (k x k) array: the largest intermediate is the output of that first convolution,
# `(1 + 2d, k)` (i, K and V stacked).
#
# **What the three steps are.**
#
# * `i = W_I x + b_I` is a dot product of every token with one learned vector `W_I` (d,). In
#   MHA's terms `W_I` is a **single latent query**, the same for every input, compared with
#   every token; `c_s` is the one row of attention weights it produces.
# * `c_v = sum_n c_s[n] K[:, n]` is **attention pooling**: that latent query's attention
#   output, a weighted average of the keys — one d-vector summarising the whole sequence
#   (like a learned [CLS] token's attention, or Perceiver's single latent).
# * `ReLU(V) * c_v` is **gating**: every token keeps its own (rectified) values and scales
#   each channel by the same global context vector, then `W_O` mixes the channels.
#
# **What it can express, and what not.** In MHA every query has its own row of weights, so
# token n can fetch token m specifically (the token most similar to itself, its neighbour in
# a learned pattern); the k x k matrix can have rank k. In separable attention all tokens
# receive the same `c_v`: written as an attention matrix it is `1 c_s^T`, every row equal,
# rank 1 — content-dependent *selection* of other tokens per query is impossible in one
# layer. What MHA cannot do in one layer is the gating: a head's output `sum_m A_nm V_m` is a
# convex combination of the values (A >= 0, rows sum to 1), so it never leaves their range and
# is linear in V; separable attention multiplies a token's own features by global context.
# Both are permutation-equivariant over the tokens (neither sees positions; in MobileViT the
# convolutions do).

# %%
def separable_forward_by_hand(x, w_qkv, b_qkv, w_out, b_out):
    """x (B, d, P, N) -> y (B, d, P, N), cache."""
    d = x.shape[1]
    qkv = np.einsum("od,bdpn->bopn", w_qkv[:, :, 0, 0], x) + b_qkv.reshape(1, -1, 1, 1)
    i, key, v = qkv[:, :1], qkv[:, 1:1 + d], qkv[:, 1 + d:]          # (B,1,P,N), (B,d,P,N) x 2
    c_s = softmax(i)                                                  # over N: (B, 1, P, N)
    c_v = (key * c_s).sum(axis=-1, keepdims=True)                     # (B, d, P, 1)
    relu_v = np.maximum(v, 0)
    out = relu_v * c_v                                                # (B, d, P, N)
    y = np.einsum("od,bdpn->bopn", w_out[:, :, 0, 0], out) + b_out.reshape(1, -1, 1, 1)
    return y, (x, key, v, c_s, c_v, relu_v, out, w_qkv, w_out)


sep_params = {"w_qkv": rng.standard_normal((1 + 2 * d, d, 1, 1)) / np.sqrt(d),
              "b_qkv": rng.standard_normal(1 + 2 * d) * 0.1,
              "w_out": rng.standard_normal((d, d, 1, 1)) / np.sqrt(d),
              "b_out": rng.standard_normal(d) * 0.1}
xs = rng.standard_normal((2, d, 4, k))                                  # (B, d, P, N)
y_sep, sep_cache = F.separable_attention_forward(xs, **sep_params)
assert relative_error(y_sep, separable_forward_by_hand(xs, **sep_params)[0]) < 1e-14
print("npvit separable attention == by hand; context scores", sep_cache["context_scores"].shape,
      "= (B, 1, P, N)")

# the two claims above, on these examples (sample 0, pixel position 0, head 0)
c_s = sep_cache["context_scores"][0, 0, 0]                             # (N,)
as_attention = np.broadcast_to(c_s, (k, k))                            # every query row is c_s
mha_attention = mha_cache["attention"][0, 0]
print("rank of the k x k weights: MHA", np.linalg.matrix_rank(mha_attention),
      "| separable as an attention matrix", np.linalg.matrix_rank(as_attention))
assert np.linalg.matrix_rank(as_attention) == 1 and np.linalg.matrix_rank(mha_attention) == k
mha_sample_cache = mha_forward_by_hand(x[0], **mha_params, h=h)[1]
values, head_outputs = mha_sample_cache[3], mha_sample_cache[5]        # V and O, (k, d) each
for j in range(h):   # each head's output lies within the range of its values, channel by channel
    cols = slice(j * d // h, (j + 1) * d // h)
    assert np.all(head_outputs[:, cols] >= values[:, cols].min(axis=0) - 1e-12)
    assert np.all(head_outputs[:, cols] <= values[:, cols].max(axis=0) + 1e-12)
print("every MHA head output lies within the range of its values (a convex combination)")

# %% [markdown]
# ### Its backward, written out
#
# Again line by line, from the output back:
#
# * the output 1x1 convolution is a linear layer on every (p, n) position:
#   `dW_O = sum dy out^T`, `db_O = sum dy`, `dout = W_O^T dy`;
# * `out = ReLU(V) * c_v` with `c_v` broadcast over N, so its gradient **sums** over N:
#   `dc_v = sum_N(dout * ReLU(V))`, and `dV = (dout * c_v) * [V > 0]`;
# * `c_v = sum_N K * c_s`: `dK = dc_v * c_s` (broadcast back over N) and
#   `dc_s = sum_d(dc_v * K)` (c_s was broadcast over the d channels);
# * softmax over N (derived above): `di = c_s * (dc_s - sum_N(dc_s * c_s))`;
# * stack `[di | dK | dV]` (B, 1 + 2d, P, N) and go back through the first 1x1 convolution.
#
# Every array is (B, 1 + 2d or less, P, N) — O(k d) both ways.

# %%
def separable_backward_by_hand(dy, cache):
    """dy (B, d, P, N) -> dx, dw_qkv, db_qkv, dw_out, db_out."""
    x, key, v, c_s, c_v, relu_v, out, w_qkv, w_out = cache
    dw_out = np.einsum("bopn,bdpn->od", dy, out)[:, :, None, None]
    db_out = dy.sum(axis=(0, 2, 3))
    dout = np.einsum("od,bopn->bdpn", w_out[:, :, 0, 0], dy)
    dc_v = (dout * relu_v).sum(axis=-1, keepdims=True)                # (B, d, P, 1)
    dv = dout * c_v * (v > 0)
    dkey = dc_v * c_s                                                 # (B, d, P, N)
    dc_s = (dc_v * key).sum(axis=1, keepdims=True)                    # (B, 1, P, N)
    di = softmax_backward_by_hand(dc_s, c_s)
    dqkv = np.concatenate([di, dkey, dv], axis=1)                     # (B, 1 + 2d, P, N)
    dw_qkv = np.einsum("bopn,bdpn->od", dqkv, x)[:, :, None, None]
    dx = np.einsum("od,bopn->bdpn", w_qkv[:, :, 0, 0], dqkv)
    return dx, dw_qkv, dqkv.sum(axis=(0, 2, 3)), dw_out, db_out


g = rng.standard_normal(y_sep.shape)
ours = separable_backward_by_hand(g, separable_forward_by_hand(xs, **sep_params)[1])
errs = [relative_error(a, b) for a, b in zip(ours, F.separable_attention_backward(g, sep_cache))]
print("separable backward by hand vs npvit (dx, dW_qkv, db_qkv, dW_out, db_out):",
      ", ".join(f"{e:.0e}" for e in errs))
assert max(errs) < 1e-13

sep_forward, sep_backward = wrap_op(separable_forward_by_hand, separable_backward_by_hand,
                                    ["x", "w_qkv", "b_qkv", "w_out", "b_out"])
errors = check_gradients(sep_forward, sep_backward, {"x": xs, **sep_params},
                         max_coords=24 if FAST else None)
print("separable backward by hand vs finite differences:",
      ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
assert max(errors.values()) < 1e-7

# %% [markdown]
# ### A kink: where finite differences are wrong
#
# `ReLU(V)` has no derivative at V = 0. If a value sits closer to 0 than the finite-difference
# step h, `V + h` and `V - h` fall on different sides and the centred difference returns a
# *mix* of the two one-sided slopes, while the backward (which uses `[V > 0]`) is exact.
# Below, one value channel is put at `+h/3` for every token (its weights zeroed, its bias
# h/3): of the step from `V - h` to `V + h` only the part above zero, 4h/3 of 2h, has the
# slope, so with the usual h = 1e-6 the finite difference of that bias is a third too small.
# A step smaller than the distance to the kink fixes it. When a gradient check fails on a
# network with ReLUs, look for inputs near a kink before blaming the backward (tutorial 1
# says how likely that is with random inputs).

# %%
value_row = 1 + d                                     # the first value channel in [i | K | V]
kinked = {n: p.copy() for n, p in sep_params.items()}
kinked["w_qkv"][value_row] = 0.0
kinked["b_qkv"][value_row] = 1e-6 / 3                # V[:, 0] = h/3 for every token
kinked_inputs = {"x": xs, **kinked}
sep_forward(**kinked_inputs)
exact = sep_backward(g)["b_qkv"][value_row]
numeric = []
for step in (1e-6, 1e-8):
    bias = kinked["b_qkv"]
    old = bias[value_row]
    bias[value_row] = old + step
    plus = np.sum(sep_forward(**kinked_inputs) * g)
    bias[value_row] = old - step
    minus = np.sum(sep_forward(**kinked_inputs) * g)
    bias[value_row] = old
    numeric.append((plus - minus) / (2 * step))
kink_errors = [abs(n - exact) / abs(exact) for n in numeric]
print(f"d loss / d b_V at the kink: backward {exact:.6f}, finite differences h=1e-6: "
      f"{numeric[0]:.6f} (error {kink_errors[0]:.2f}), h=1e-8: {numeric[1]:.6f} (error {kink_errors[1]:.0e})")
assert abs(kink_errors[0] - 1 / 3) < 0.01 and kink_errors[1] < 1e-3

# %% [markdown]
# What each one computes for a sequence of k tokens: MHA a (k x k) weight matrix per head
# (each row: how one token mixes all the others), separable attention one row of k context
# scores (how much each token contributes to the shared context).

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.15, 1.3]},
                               layout="constrained")
im = ax0.imshow(mha_attention, cmap="viridis", vmin=0)
fig.colorbar(im, ax=ax0, label="weight (rows sum to 1)", shrink=0.85)
ax0.set(title=f"MHA: attention weights A, head 0 ({k} x {k})", xlabel="key token",
        ylabel="query token")
ax1.bar(range(k), c_s, color="tab:orange")
ax1.set(title=f"separable: context scores c_s (1 x {k}), one row for every query",
        xlabel="token n", ylabel="score (sums to 1)", ylim=(0, None))
show(fig, "04_attention_vs_context_scores.png")
assert np.allclose(mha_cache["attention"].sum(-1), 1) and np.allclose(sep_cache["context_scores"].sum(-1), 1)

# %% [markdown]
# ## Counting the operations
#
# Each step of npvit's attention functions reports itself to `npvit.opcount`, which reads the
# sizes off the arrays that were really used (tutorial code can't fudge them). From the
# formulas, for k tokens of width d (h heads):
#
# * MHA multiply-adds: qkv projection `3 k d^2`, scores `k^2 d`, `A V` another `k^2 d`,
#   output projection `k d^2` — total `4 k d^2 + 2 k^2 d`;
# * separable: the 1x1 conv to `1 + 2d` rows `k d (1 + 2d)`, output conv `k d^2` —
#   total `k (3 d^2 + d)`; the context vector and products are element-wise, O(k d).
#
# The counter must agree with these formulas exactly. The largest array MHA makes is the
# (h, k, k) score tensor; separable attention's is the (1 + 2d, k) output of its first 1x1
# convolution.

# %%
d_c, h_c = 64, 4
mha_mod, sep_mod = npvit.nn.MultiHeadAttention(d_c, h_c), npvit.nn.SeparableSelfAttention(d_c)
ks = [64, 128, 256, 512]
counts = {}
for kk in ks:
    tokens = rng.standard_normal((1, kk, d_c)).astype(np.float32)
    with npvit.nn.no_grad():
        with count_ops() as c_mha:
            mha_mod(tokens)
        with count_ops() as c_sep:
            sep_mod(tokens)
    counts[kk] = (c_mha, c_sep)
    assert c_mha.macs == 4 * kk * d_c ** 2 + 2 * kk ** 2 * d_c
    assert c_sep.macs == kk * (3 * d_c ** 2 + d_c)
    assert c_mha.largest.shape == (1, h_c, kk, kk)
    assert c_sep.largest.shape == (1, 1 + 2 * d_c, 1, kk)
    print(f"k={kk:4d}: MHA {c_mha.macs:>12,d} multiply-adds, largest {c_mha.largest.shape}; "
          f"separable {c_sep.macs:>11,d}, largest {c_sep.largest.shape}")
print()
print(counts[ks[-1]][1].table())

# %% [markdown]
# ## Memory, measured
#
# The counter lists the arrays the code reports; `tracemalloc` (Python's allocation tracer,
# which NumPy reports every buffer to) sees *every* allocation, temporaries included. The peak
# traced memory of one float32 forward pass, against k, for the same d = 64 and h = 4, next
# to the size of one (h, k, k) float32 array:

# %%
def peak_mib(run):
    """Peak traced memory (MiB) of one call: every NumPy buffer, temporaries included."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


mem_ks = [256, 512, 1024, 2048] if FAST else [256, 512, 1024, 2048, 4096]
mha_args = (mha_mod.qkv.weight.data, mha_mod.qkv.bias.data, mha_mod.proj.weight.data, mha_mod.proj.bias.data)
sep_args = (sep_mod.qkv_proj.weight.data, sep_mod.qkv_proj.bias.data, sep_mod.out_proj.weight.data,
            sep_mod.out_proj.bias.data)
memory = {"MHA": [], "separable": []}
for kk in mem_ks:
    tokens = rng.standard_normal((1, kk, d_c)).astype(np.float32)
    channels_first = np.ascontiguousarray(tokens.transpose(0, 2, 1)[:, :, None, :])   # (1, d, 1, k)
    memory["MHA"].append(peak_mib(lambda: F.multi_head_attention_forward(tokens, *mha_args, num_heads=h_c)))
    memory["separable"].append(peak_mib(lambda: F.separable_attention_forward(channels_first, *sep_args)))
    print(f"k={kk:5d}: peak MHA {memory['MHA'][-1]:8.2f} MiB, separable {memory['separable'][-1]:6.2f} MiB "
          f"(one (h, k, k) float32 array: {h_c * kk * kk * 4 / 2**20:7.2f} MiB, "
          f"one (1 + 2d, k): {(1 + 2 * d_c) * kk * 4 / 2**20:.2f} MiB)")

fig, ax = plt.subplots(figsize=(6.2, 4))
ax.loglog(mem_ks, memory["MHA"], "o-", base=2, label="MHA, measured peak")
ax.loglog(mem_ks, memory["separable"], "D-", base=2, label="separable, measured peak")
ax.loglog(mem_ks, [h_c * kk * kk * 4 / 2 ** 20 for kk in mem_ks], "k:", base=2,
          label="one (h, k, k) float32 array")
ax.loglog(mem_ks, [(1 + 2 * d_c) * kk * 4 / 2 ** 20 for kk in mem_ks], "k--", base=2,
          label="one (1 + 2d, k) float32 array")
ax.set_xticks(mem_ks, [str(kk) for kk in mem_ks])
ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
ax.set(xlabel="tokens k", ylabel="peak traced memory (MiB)",
       title=f"One forward pass, d={d_c}, h={h_c}, float32 (tracemalloc)")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
show(fig, "04_attention_memory.png")
for kk, m_mha, m_sep in zip(mem_ks, memory["MHA"], memory["separable"]):
    assert m_mha >= h_c * kk * kk * 4 / 2 ** 20            # the k x k scores must exist
    assert m_sep < 8 * (1 + 2 * d_c) * kk * 4 / 2 ** 20    # a few O(k d) arrays, nothing k x k
assert memory["separable"][-1] / memory["separable"][0] < 1.2 * mem_ks[-1] / mem_ks[0]   # linear in k

# %% [markdown]
# ## Linformer, the third curve
#
# The paper's Fig. 1 also draws **Linformer** (Wang et al. 2020), the best-known earlier
# attempt to make attention linear in k. It keeps MHA but first projects the k keys and the
# k values down to p rows with two learned (p x k) matrices E and F:
#
# $$ K' = E K,\quad V' = F V \in \mathbb{R}^{p \times d}, \qquad
#    A_j = \mathrm{softmax}\Big(\frac{Q_j K_j'^T}{\sqrt{d_h}}\Big) \in \mathbb{R}^{k \times p}. $$
#
# The score matrix is (k x p) instead of (k x k): O(k p d) time, linear in k for a fixed p.
# The price: E and F have k columns, so a layer is tied to one sequence length (one image size,
# in a vision model) — one reason MobileViTv2 looked for another way. npvit has it as
# `F.linformer_attention_forward`; its attention rows sum to 1 over the p projected tokens:

# %%
p_lin = 4
e_proj, f_proj = rng.standard_normal((2, p_lin, k)) / np.sqrt(k)
y_lin, lin_cache = F.linformer_attention_forward(x, mha_params["w_qkv"], mha_params["b_qkv"], e_proj,
                                                 f_proj, mha_params["w_proj"], mha_params["b_proj"],
                                                 num_heads=h)
print("Linformer: y", y_lin.shape, "attention", lin_cache["attention"].shape, "= (B, h, k, p)")
assert lin_cache["attention"].shape == (2, h, k, p_lin)
assert np.allclose(lin_cache["attention"].sum(-1), 1)

# %% [markdown]
# ## The paper's Fig. 1: latency against the number of tokens
#
# One forward pass of MHA, Linformer and separable attention (float32, batch 1), for growing
# k. A timing is only worth plotting if it is measured carefully:
#
# * **one thread, for real**: `median_ms` (tutorial_setup) limits the BLAS and OpenMP pools
#   NumPy calls to one thread with `threadpoolctl` while it times (a multi-threaded BLAS on a
#   busy machine makes small-k timings jump around);
# * one **warm-up** run first (caches, page faults of fresh buffers), then several
#   **repeats**, and the **median** (robust to the odd slow run);
# * **CPU time** (`time.process_time`) rather than wall-clock time: with one thread it is the
#   work the unit does, while the wall clock also counts the time the operating system spent
#   running other programs — on a shared machine that can be most of it. Both are printed;
#   the plot shows CPU time;
# * the slope of log latency against log k: about 2 for O(k^2), about 1 for O(k). On small
#   k the quadratic term hides behind the `k d^2` projections; it takes over once k exceeds a
#   few times d.
#
# The paper's setting is d = 512, h = 8, p = 256; by default this runs a smaller one.
# `npvit bench attention` (the command line) runs the same units.

# %%
if FIG1_FULL:
    fig1 = dict(ks=[256 * 2 ** i for i in range(7)], dim=512, heads=8, proj_len=256, repeats=5)
elif FAST:
    fig1 = dict(ks=[128, 256, 512, 1024, 2048], dim=128, heads=8, proj_len=64, repeats=5)
else:
    fig1 = dict(ks=[128, 256, 512, 1024, 2048, 4096], dim=256, heads=8, proj_len=128, repeats=7)
UNITS = ("MHA", "Linformer", "separable")


latency, wall, ops = {u: [] for u in UNITS}, {u: [] for u in UNITS}, {u: [] for u in UNITS}
for kk in fig1["ks"]:
    for unit in UNITS:
        run = bench.make_unit(unit, kk, fig1["dim"], fig1["heads"], fig1["proj_len"], rng)
        with count_ops() as counter:               # one more pass, to count what it does
            run()
        ops[unit].append(counter.macs + counter.elementwise)
        latency[unit].append(median_ms(run, repeats=fig1["repeats"], clock=time.process_time))
        wall[unit].append(median_ms(run, repeats=fig1["repeats"]))
        del run
    print(f"k={kk:5d}: " + ", ".join(f"{u} {latency[u][-1]:8.3f} ms CPU ({wall[u][-1]:8.3f} wall)"
                                     for u in UNITS))
large_k = fig1["ks"][len(fig1["ks"]) // 2]
slopes = {}
for unit in UNITS:
    big = [(kk, t) for kk, t in zip(fig1["ks"], latency[unit]) if kk >= large_k]
    slopes[unit] = float(np.polyfit(*np.log2(np.array(big)).T, 1)[0])
    print(f"{unit:10s} slope of log CPU time vs log k for k >= {large_k}: {slopes[unit]:.2f}")

fig, (ax_t, ax_ops) = plt.subplots(1, 2, figsize=(12, 4.6))
for unit, marker in zip(UNITS, "osD"):
    ax_t.loglog(fig1["ks"], latency[unit], marker=marker, base=2,
                label=f"{unit} (slope {slopes[unit]:.2f} for k ≥ {large_k})")
    ax_ops.plot(fig1["ks"], ops[unit], marker=marker, label=unit)
ax_ops.set_xscale("log", base=2)
ax_ops.set_yscale("log")                        # counts in powers of ten: 10^7, 10^8, ...
for ax in (ax_t, ax_ops):
    ax.set_xticks(fig1["ks"], [str(kk) for kk in fig1["ks"]])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_xlabel("tokens k")
ax_t.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
ax_t.set(ylabel=f"CPU time, median of {fig1['repeats']} runs after 1 warm-up (ms)",
         title=f"measured: d={fig1['dim']}, h={fig1['heads']}, Linformer p={fig1['proj_len']}, "
               "float32, batch 1,\none thread (threadpoolctl)")
ax_ops.set(ylabel="multiply-adds + element-wise ops (counted)",
           title="operations of one forward pass (counted, exact)")
fig.suptitle(f"The MobileViTv2 paper's Fig. 1 on this machine: {cpu_name()}", fontsize=10)
fig.tight_layout()
show(fig, "04_fig1_latency.png")

# the counted operations (right panel) scale as the formulas say, whatever the timer measured
assert all(b == 2 * a for a, b in zip(ops["separable"], ops["separable"][1:]))

# %% [markdown]
# ## The same numbers as PyTorch
#
# MHA against `torch.nn.functional.scaled_dot_product_attention` (which also scales by
# 1/sqrt(d_h) and applies the softmax over keys), separable attention against the same
# formula in torch with autograd — forward and every gradient, in float64.

# %%
torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with PyTorch attention")
else:
    tnf = torch.nn.functional
    g = rng.standard_normal(y_mha.shape)
    ours = (y_mha,) + F.multi_head_attention_backward(g, mha_cache)
    tx = torch.tensor(x, requires_grad=True)
    tp = {n: torch.tensor(v, requires_grad=True) for n, v in mha_params.items()}
    q, key, v = tnf.linear(tx, tp["w_qkv"], tp["b_qkv"]).chunk(3, dim=-1)
    split = lambda t: t.reshape(2, k, h, d // h).transpose(1, 2)       # (B, h, k, d_h)
    o = tnf.scaled_dot_product_attention(split(q), split(key), split(v))
    ty = tnf.linear(o.transpose(1, 2).reshape(2, k, d), tp["w_proj"], tp["b_proj"])
    ty.backward(torch.from_numpy(g))
    theirs = [ty, tx.grad, tp["w_qkv"].grad, tp["b_qkv"].grad, tp["w_proj"].grad, tp["b_proj"].grad]
    errs = [relative_error(a, t.detach().numpy()) for a, t in zip(ours, theirs)]
    print("MHA vs torch (y, dx, dW_qkv, db_qkv, dW_proj, db_proj):", ", ".join(f"{e:.0e}" for e in errs))
    assert max(errs) < 1e-10

    g = rng.standard_normal(y_sep.shape)
    ours = (y_sep,) + F.separable_attention_backward(g, sep_cache)
    tx = torch.tensor(xs, requires_grad=True)
    tp = {n: torch.tensor(v, requires_grad=True) for n, v in sep_params.items()}
    i, key, v = tnf.conv2d(tx, tp["w_qkv"], tp["b_qkv"]).split([1, d, d], dim=1)
    c_v = (key * i.softmax(dim=-1)).sum(dim=-1, keepdim=True)
    ty = tnf.conv2d(tnf.relu(v) * c_v, tp["w_out"], tp["b_out"])
    ty.backward(torch.from_numpy(g))
    theirs = [ty, tx.grad, tp["w_qkv"].grad, tp["b_qkv"].grad, tp["w_out"].grad, tp["b_out"].grad]
    errs = [relative_error(a, t.detach().numpy()) for a, t in zip(ours, theirs)]
    print("separable vs torch (y, dx, dW_qkv, db_qkv, dW_out, db_out):", ", ".join(f"{e:.0e}" for e in errs))
    assert max(errs) < 1e-10

# %% [markdown]
# ## Exercises
#
# Fill in a function and run the cell after it: the checker compares your answer with npvit
# and with finite differences and prints whether it is right (solutions, read them last:
# `tutorials/solutions/04_attention.py`).
#
# ### Exercise 4.1: Linformer's projection backward
#
# Linformer computes `K' = E K` for every sample: `key` (B, k, d), `e` (p, k), `key_p`
# (B, p, d). Given `d_key_p = dL/dK'`, return `(d_key, d_e)`. Write `K'[b, r, c] = sum_n
# E[r, n] K[b, n, c]` and ask, as in the backward rules above, which outputs each entry of E
# and of K touched. (E is shared by the samples of the batch.)


# %%
def linformer_projection_backward(d_key_p, key, e):
    """d_key_p: (B, p, d), key: (B, k, d), e: (p, k) -> d_key (B, k, d), d_e (p, k)."""
    raise NotImplementedError


# %%
def check_linformer_projection_backward(candidate):
    r = np.random.default_rng(41)
    key, e = r.standard_normal((3, 7, 5)), r.standard_normal((4, 7))
    d_key_p = r.standard_normal((3, 4, 5))
    d_key, d_e = candidate(d_key_p, key.copy(), e.copy())
    assert np.shape(d_key) == key.shape and np.shape(d_e) == e.shape, "d_key must be (B, k, d), d_e (p, k)"
    # npvit: K'^T = K^T E^T is a linear layer on x = K^T (B, d, k) with weight E
    _, cache = F.linear_forward(key.transpose(0, 2, 1), e)
    dx_ref, de_ref, _ = F.linear_backward(d_key_p.transpose(0, 2, 1), cache)
    assert relative_error(d_key, dx_ref.transpose(0, 2, 1)) < 1e-12, "d_key differs from npvit's"
    assert relative_error(d_e, de_ref) < 1e-12, "d_e differs from npvit's (is it summed over the batch?)"
    num, idx = numeric_gradient(lambda: e @ key, e, d_key_p, rng=r)
    assert relative_error(np.reshape(d_e, -1)[idx], num) < 1e-8, "d_e differs from finite differences"


exercises.check(linformer_projection_backward, check_linformer_projection_backward)

# %% [markdown]
# ### Exercise 4.2: a softmax with a learned temperature
#
# Some attention variants learn the sharpness of their softmax: `y = softmax(s / tau)` over
# the last axis, with a scalar temperature `tau > 0`. Given `dy`, return `(ds, dtau)`. Use the
# softmax's Jacobian-vector product derived at the top of this tutorial for `u = s / tau`,
# then the chain rule to s and to tau (tau touches every entry, so its gradient is a sum).


# %%
def tempered_softmax_backward(dy, s, tau):
    """dy, s: (..., k); tau: float -> ds (..., k), dtau (float)."""
    raise NotImplementedError


# %%
def check_tempered_softmax_backward(candidate):
    r = np.random.default_rng(42)
    s, dy, tau = r.standard_normal((3, 6)) * 2, r.standard_normal((3, 6)), np.array(0.7)
    ds, dtau = candidate(dy, s.copy(), float(tau))
    assert np.shape(ds) == s.shape and np.size(dtau) == 1, "ds must have the shape of s, dtau one number"
    y, cache = F.softmax_forward(s / tau)
    assert relative_error(ds, F.softmax_backward(dy, cache) / tau) < 1e-12, \
        "ds differs from npvit's softmax_backward, divided by tau"
    num, _ = numeric_gradient(lambda: F.softmax_forward(s / tau)[0], tau, dy)
    assert relative_error(dtau, num) < 1e-7, f"dtau = {float(dtau):.6f}, finite differences say {num[0]:.6f}"


exercises.check(tempered_softmax_backward, check_tempered_softmax_backward)

# %% [markdown]
# **Summary.** MHA builds (k x k) weights per head — `4 k d^2 + 2 k^2 d` multiply-adds and a
# k^2 buffer; separable attention computes k context scores and one context vector —
# `k (3 d^2 + d)` and nothing larger than (1 + 2d, k). Both backward passes are written out above
# and checked against npvit, finite differences and PyTorch; the memory and the latency were
# measured in this run. Next: the blocks these units live in.
