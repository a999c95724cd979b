# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 2. Batch, layer and group normalisation, forward and backward
#
# MobileViT uses three normalisations: **BatchNorm** after every convolution, **LayerNorm**
# inside the v1 transformer (over the d channels of each token) and **GroupNorm with one
# group** inside the v2 transformer. All three do the same two things:
#
# 1. *standardise* `x` over some set of M elements: `x_hat = (x - mean) / sqrt(var + eps)`,
#    with the biased variance (divide by M);
# 2. apply a per-channel affine map `y = gamma * x_hat + beta`.
#
# They differ **only in which elements share one mean and variance**. So npvit
# (`npvit/functional/norm.py`) writes the standardisation and its backward once, and each
# norm just picks the axes. This tutorial derives that backward step by step, in the way
# Karpathy's llm.c walks through layernorm, and then looks at why MobileViTv2 chose GroupNorm(1).

# %%
import matplotlib.colors
import numpy as np

import npvit
from npvit import functional as F
from npvit.gradcheck import numeric_gradient
from tutorial_setup import (FAST, Exercises, median_ms, optional_torch, plt, relative_error,
                            show, skip_without_torch)

rng = np.random.default_rng(0)
eps = 1e-5
exercises = Exercises("02")          # solutions: tutorials/solutions/02_normalization.py

# %% [markdown]
# ## Which elements share statistics
#
# For a feature map (N, C, H, W):
#
# | norm | one mean/variance per | over the axes | M |
# |---|---|---|---|
# | BatchNorm | channel | (N, H, W) | N H W |
# | LayerNorm (v1, tokens (B, k, d)) | token | d | d |
# | GroupNorm, G groups | sample and group | (C/G, H, W) | C H W / G |
#
# In the picture each colour is one set of elements normalised together (H and W are drawn as
# one axis): BatchNorm cuts across the batch, GroupNorm(1) takes a whole sample. Set i gets
# hue 0.618 i (mod 1), the golden-ratio step, so consecutive sets never get similar colours
# (the cell checks it for every pair of neighbouring cells within a sample).

# %%
n_demo, c_demo, hw_demo = 4, 6, 5
set_index = np.arange(20)
palette = matplotlib.colors.hsv_to_rgb(np.stack(
    [(0.618 * set_index) % 1, np.full(20, 0.6), np.where(set_index % 2, 0.95, 0.75)], axis=1))
labels = {
    "BatchNorm": lambda n, c, s: c,
    "LayerNorm over channels\n(v1: per token)": lambda n, c, s: n * hw_demo + s,
    "GroupNorm, 2 groups": lambda n, c, s: n * 2 + c // (c_demo // 2),
    "GroupNorm, 1 group\n(v2's 'LayerNorm2D')": lambda n, c, s: n,
}
fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
for ax, (title, group_of) in zip(axes, labels.items()):
    ids = np.array([[[group_of(n, c, s) for s in range(hw_demo)] for c in range(c_demo)]
                    for n in range(n_demo)])                         # (N, C, HW)
    grid = ids.transpose(1, 0, 2).reshape(c_demo, n_demo * hw_demo)  # rows: C, columns: (N, HW)
    rgb = palette[grid % 20]
    # neighbouring cells of different sets within a sample (the black lines part samples)
    # must not look alike
    same_sample = (np.arange(1, n_demo * hw_demo) % hw_demo != 0)[None, :]
    for a, b_, differ in ((rgb[:, 1:], rgb[:, :-1], (grid[:, 1:] != grid[:, :-1]) & same_sample),
                          (rgb[1:], rgb[:-1], grid[1:] != grid[:-1])):
        distance = np.linalg.norm(a - b_, axis=-1)[differ]
        assert distance.size == 0 or distance.min() > 0.5, title
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    for n in range(1, n_demo):
        ax.axvline(n * hw_demo - 0.5, color="k", lw=1.5)
    ax.set(title=title, xlabel="sample n (blocks) x position H*W", ylabel="channel c",
           xticks=[], yticks=[])
show(fig, "02_norm_axes")

# %% [markdown]
# ## The forward, one line at a time
#
# Take one group of M numbers `x_1..x_M` (a row, say). The forward pass, with every
# intermediate named:
#
# ```
# mu      = sum(x) / M
# xc      = x - mu
# var     = sum(xc^2) / M
# rstd    = (var + eps)^(-1/2)
# x_hat   = xc * rstd
# y       = gamma * x_hat + beta
# ```

# %%
def layernorm_steps(x, gamma, beta):
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc ** 2).mean(axis=-1, keepdims=True)
    rstd = (var + eps) ** -0.5
    x_hat = xc * rstd
    y = gamma * x_hat + beta
    return y, (xc, rstd, x_hat, gamma)


# %% [markdown]
# ## The backward, the same lines in reverse
#
# Walk the lines backwards, each time asking "what did this line's inputs contribute?".
# Every intermediate that was used twice collects two gradients.
#
# * `y = gamma x_hat + beta`: `dgamma = sum_rows(dy * x_hat)`, `dbeta = sum_rows(dy)`,
#   `dx_hat = dy * gamma`.
# * `x_hat = xc * rstd`: `dxc = dx_hat * rstd` (first use of xc) and
#   `drstd = sum(dx_hat * xc)`.
# * `rstd = (var + eps)^(-1/2)`: `dvar = -1/2 (var + eps)^(-3/2) drstd = -1/2 rstd^3 drstd`.
# * `var = sum(xc^2) / M`: `dxc += 2 xc dvar / M` (second use of xc).
# * `xc = x - mu`: `dx = dxc` and `dmu = -sum(dxc)`.
# * `mu = sum(x) / M`: `dx += dmu / M`.

# %%
def layernorm_steps_backward(dy, cache):
    xc, rstd, x_hat, gamma = cache
    m = xc.shape[-1]
    rows = tuple(range(dy.ndim - 1))
    dgamma, dbeta = (dy * x_hat).sum(axis=rows), dy.sum(axis=rows)
    dx_hat = dy * gamma
    dxc = dx_hat * rstd
    drstd = (dx_hat * xc).sum(axis=-1, keepdims=True)
    dvar = -0.5 * rstd ** 3 * drstd
    dxc = dxc + 2 * xc * dvar / m
    dmu = -dxc.sum(axis=-1, keepdims=True)
    dx = dxc + dmu / m
    return dx, dgamma, dbeta


# %% [markdown]
# ## ... which simplifies to one line
#
# Substitute and use `xc = x_hat / rstd`. With `mean()` over the M elements of the group:
#
# * `dvar * 2 xc / M = -rstd^3 * sum(dx_hat * xc) * xc / M = -rstd * x_hat * mean(dx_hat * x_hat)`;
# * `sum(xc) = 0`, so `dmu = -sum(dx_hat) rstd = -M rstd mean(dx_hat)`.
#
# Together:
#
# $$ dx = \mathrm{rstd} \cdot \big( \hat{dx} - \mathrm{mean}(\hat{dx}) - \hat{x}\, \mathrm{mean}(\hat{dx}\, \hat{x}) \big) $$
#
# Two reductions and no division by `M` anywhere visible. Read it as: the gradient is
# projected so it neither shifts the mean (subtract `mean(dx_hat)`) nor scales the spread
# (subtract the `x_hat` component) — a standardised vector is invariant to both.
# This is `_standardize_backward` in npvit. All three agree:

# %%
x = rng.standard_normal((5, 16)) * 3 + 1
gamma, beta = rng.standard_normal(16), rng.standard_normal(16)
dy = rng.standard_normal(x.shape)

y_steps, cache_steps = layernorm_steps(x, gamma, beta)
grads_steps = layernorm_steps_backward(dy, cache_steps)
x_hat, rstd = cache_steps[2], cache_steps[1]
dx_hat = dy * gamma
dx_formula = rstd * (dx_hat - dx_hat.mean(-1, keepdims=True)
                     - x_hat * (dx_hat * x_hat).mean(-1, keepdims=True))

y_npvit, cache = F.layernorm_forward(x, gamma, beta, eps)
grads_npvit = F.layernorm_backward(dy, cache)
assert np.allclose(y_steps, y_npvit)
assert np.allclose(grads_steps[0], dx_formula) and np.allclose(dx_formula, grads_npvit[0])
for a, b in zip(grads_steps, grads_npvit):
    assert np.allclose(a, b)
print("step-by-step backward == one-line formula == npvit.functional.layernorm_backward")

# %% [markdown]
# ## Finite differences for all three norms
#
# BatchNorm is checked in training mode, where the batch statistics depend on the input (in
# eval mode they are constants and the backward is just `dy * gamma * rstd`).

# %%
size = 4 if FAST else 6
x4 = rng.standard_normal((3, 6, size, size))
c6 = {"gamma": rng.standard_normal(6) + 1, "beta": rng.standard_normal(6)}


def check(name, forward_op, backward_op, inputs):
    caches = []

    def forward(**kw):
        y, cache = forward_op(**kw)
        caches.append(cache)
        return y

    def backward(g):
        dx, dgamma, dbeta = backward_op(g, caches[-1])
        return {"x": dx, "gamma": dgamma, "beta": dbeta}

    errors = npvit.check_gradients(forward, backward, inputs, max_coords=48 if FAST else None)
    print(f"{name:28s}", ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
    assert max(errors.values()) < 1e-7


check("BatchNorm2d (training)",
      lambda x, gamma, beta: F.batchnorm2d_forward(x, gamma, beta, np.zeros(6), np.ones(6), True),
      F.batchnorm2d_backward, {"x": x4.copy(), **c6})
check("LayerNorm over d",
      lambda x, gamma, beta: F.layernorm_forward(x, gamma, beta),
      F.layernorm_backward, {"x": rng.standard_normal((2, 7, 6)), **c6})
check("GroupNorm, 1 group",
      lambda x, gamma, beta: F.groupnorm_forward(x, 1, gamma, beta),
      F.groupnorm_backward, {"x": x4.copy(), **c6})
check("GroupNorm, 3 groups",
      lambda x, gamma, beta: F.groupnorm_forward(x, 3, gamma, beta),
      F.groupnorm_backward, {"x": x4.copy(), **c6})

# %% [markdown]
# ### Exercise 1: BatchNorm's training backward from scratch
#
# Write `batchnorm_train_backward(dy, x, gamma)` for x (N, C, H, W) in training mode: recompute
# `x_hat` and `rstd` from `x` (biased variance, `eps = 1e-5`) and apply the one-line formula
# with every `mean` taken over the axes BatchNorm shares, (N, H, W). Return `(dx, dgamma, dbeta)`.
# The checker compares with npvit's `batchnorm2d_backward` and with finite differences.


# %%
def batchnorm_train_backward(dy, x, gamma):
    """dy, x: (N, C, H, W); gamma: (C,) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    raise NotImplementedError


# %%
def check_batchnorm_backward(candidate):
    xs = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    gs, bs = rng.standard_normal(3) + 1, rng.standard_normal(3)
    y, cache = F.batchnorm2d_forward(xs, gs, bs, np.zeros(3), np.ones(3), True)
    up = rng.standard_normal(y.shape)
    got = candidate(up, xs.copy(), gs.copy())
    for name, mine, ref in zip(("dx", "dgamma", "dbeta"), got, F.batchnorm2d_backward(up, cache)):
        assert np.shape(mine) == ref.shape, f"{name} has shape {np.shape(mine)}, not {ref.shape}"
        err = relative_error(mine, ref)
        assert err < 1e-9, f"{name} differs from npvit's batchnorm2d_backward: relative error {err:.1e}"

    def forward():
        return F.batchnorm2d_forward(xs, gs, bs, np.zeros(3), np.ones(3), True)[0]
    num, idx = numeric_gradient(forward, xs, up, max_coords=30)
    err = relative_error(got[0].reshape(-1)[idx], num)
    assert err < 1e-5, f"dx differs from finite differences: relative error {err:.1e}"


exercises.check(batchnorm_train_backward, check_batchnorm_backward)

# %% [markdown]
# ### Exercise 2: GroupNorm with G groups
#
# Write `groupnorm_backward(dy, x, groups, gamma)` for x (N, C, P, N'): the same formula, with
# the means taken per sample over each group of C/G channels and all positions. A reshape to
# (N, G, C/G * P * N') makes every group one row. Return `(dx, dgamma, dbeta)`.


# %%
def groupnorm_backward(dy, x, groups, gamma):
    """dy, x: (N, C, P, N'); gamma: (C,) -> dx, dgamma (C,), dbeta (C,)."""
    raise NotImplementedError


# %%
def check_groupnorm_backward(candidate):
    for groups in (1, 2, 4):
        xs = rng.standard_normal((2, 4, 3, 5)) * 3 - 1
        gs, bs = rng.standard_normal(4) + 1, rng.standard_normal(4)
        y, cache = F.groupnorm_forward(xs, groups, gs, bs)
        up = rng.standard_normal(y.shape)
        got = candidate(up, xs.copy(), groups, gs.copy())
        for name, mine, ref in zip(("dx", "dgamma", "dbeta"), got, F.groupnorm_backward(up, cache)):
            assert np.shape(mine) == ref.shape, f"{name} has shape {np.shape(mine)}, not {ref.shape}"
            err = relative_error(mine, ref)
            assert err < 1e-9, f"{name} differs from npvit with {groups} groups: {err:.1e}"
        num, idx = numeric_gradient(lambda: F.groupnorm_forward(xs, groups, gs, bs)[0], xs, up,
                                    max_coords=30)
        err = relative_error(got[0].reshape(-1)[idx], num)
        assert err < 1e-5, f"dx differs from finite differences with {groups} groups: {err:.1e}"


exercises.check(groupnorm_backward, check_groupnorm_backward)

# %% [markdown]
# ## Why MobileViTv2 normalises with GroupNorm(1) — an interpretation
#
# The fact: MobileViTv2 keeps its transformer input in the convolution layout (B, d, P, N), so
# that every projection is a 1x1 convolution, and normalises it with what ml-cvnets calls
# `LayerNorm2D` — `nn.GroupNorm(num_groups=1)`, documented there as "Layer Normalization over
# a 4D input" (`cvnets/layers/normalization/layer_norm.py`): **one** mean and variance per
# sample over all of d, P and N, then a per-channel gamma and beta.
#
# The *why* is this tutorial's reading, not a statement of the MobileViTv2 paper, which does not
# discuss the choice: in that layout, GroupNorm(1) is the layer normalisation PyTorch offers
# without a transpose (a per-token LayerNorm over d would need the channels moved last, as v1
# does), and, like any layer normalisation, it keeps samples independent. Two properties of
# the choice, both checked below:
#
# 1. GroupNorm(1) on (B, d, P, N) is a LayerNorm over the flattened d*P*N numbers of each
#    sample (with gamma and beta broadcast per channel) — it is *not* the per-token LayerNorm
#    of v1.
# 2. Unlike BatchNorm, it never mixes samples: a sample is normalised the same way in any
#    batch, in training and in evaluation (there are no running statistics to drift, which
#    matters for the small batches of dense prediction that the v2 paper also targets).

# %%
b, d, p, n = 3, 8, 4, 10
xt = rng.standard_normal((b, d, p, n)) * 2 + 0.5
g8, b8 = rng.standard_normal(d), rng.standard_normal(d)
y_gn, _ = F.groupnorm_forward(xt, 1, g8, b8)

flat, _ = F.layernorm_forward(xt.reshape(b, -1), np.ones(d * p * n), np.zeros(d * p * n))
y_flat = flat.reshape(xt.shape) * g8.reshape(1, d, 1, 1) + b8.reshape(1, d, 1, 1)
assert np.allclose(y_gn, y_flat)

per_token, _ = F.layernorm_forward(xt.transpose(0, 2, 3, 1), g8, b8)   # v1-style, over d only
per_token = per_token.transpose(0, 3, 1, 2)
print("GroupNorm(1) == LayerNorm over (d, P, N):", np.allclose(y_gn, y_flat),
      "| == per-token LayerNorm over d:", np.allclose(y_gn, per_token))
assert not np.allclose(y_gn, per_token)

one_alone, _ = F.groupnorm_forward(xt[:1], 1, g8, b8)
assert np.allclose(one_alone, y_gn[:1])
x_bn = xt.reshape(b, d, p * n)[..., None]                               # (B, d, P*N, 1)
bn_batch, _ = F.batchnorm2d_forward(x_bn, g8, b8, np.zeros(d), np.ones(d), True)
bn_alone, _ = F.batchnorm2d_forward(x_bn[:1], g8, b8, np.zeros(d), np.ones(d), True)
print("sample 0 normalised alone vs in the batch: GroupNorm equal:",
      np.allclose(one_alone, y_gn[:1]), "| BatchNorm (training) equal:",
      np.allclose(bn_alone, bn_batch[:1]))
assert not np.allclose(bn_alone, bn_batch[:1])

# %% [markdown]
# ## BatchNorm at inference is an affine map — fold it into the convolution
#
# In eval mode BatchNorm uses fixed running statistics, so `bn(conv(x))` is
# `gamma (W x - mu) / sqrt(var + eps) + beta`, i.e. another convolution with weight
# `W * gamma / sqrt(var + eps)` (per output channel) and bias `beta - gamma mu / sqrt(var + eps)`.
# Inference engines fold it away; training must not (the statistics come from the batch).
# First by hand, then with npvit's `F.fold_batchnorm`, which does the same:

# %%
xc_in = rng.standard_normal((2, 4, 6, 6))
wc = rng.standard_normal((5, 4, 3, 3))
bn_g, bn_b = rng.random(5) + 0.5, rng.standard_normal(5)
run_mean, run_var = rng.standard_normal(5), rng.random(5) + 0.5
conv_out, _ = F.conv2d_forward(xc_in, wc, None, padding=1)
y_two_ops, _ = F.batchnorm2d_forward(conv_out, bn_g, bn_b, run_mean, run_var, training=False)
scale = bn_g / np.sqrt(run_var + eps)
y_folded, _ = F.conv2d_forward(xc_in, wc * scale.reshape(-1, 1, 1, 1), bn_b - run_mean * scale,
                               padding=1)
assert np.allclose(y_two_ops, y_folded)
w_npvit, b_npvit = F.fold_batchnorm(wc, None, bn_g, bn_b, run_mean, run_var, eps)
assert np.allclose(w_npvit, wc * scale.reshape(-1, 1, 1, 1)) and np.allclose(b_npvit, bn_b - run_mean * scale)
print("conv -> BatchNorm(eval) == one folded conv == F.fold_batchnorm's conv:",
      np.allclose(y_two_ops, y_folded))

# %% [markdown]
# ### Exercise 3: fold a BatchNorm into a convolution that has a bias
#
# The convolutions before npvit's BatchNorms have no bias, but a general folding must handle
# one. Write `fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps)` returning
# `(w', b')` with `conv(x, w', b') == batchnorm_eval(conv(x, w, b))`. The checker compares
# with the two layers run one after the other and with npvit's `F.fold_batchnorm`.


# %%
def fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps):
    """w: (C_out, C_in, kh, kw), b and the BatchNorm arrays: (C_out,) -> w', b'."""
    raise NotImplementedError


# %%
def check_fold_batchnorm(candidate):
    xs, ws, bs = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    g_, be = rng.random(4) + 0.5, rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.random(4) + 0.5
    w_f, b_f = candidate(ws.copy(), bs.copy(), g_, be, mean, var, eps)
    two_layers, _ = F.batchnorm2d_forward(F.conv2d_forward(xs, ws, bs, padding=1)[0], g_, be,
                                          mean, var, training=False)
    one_layer, _ = F.conv2d_forward(xs, w_f, b_f, padding=1)
    err = relative_error(one_layer, two_layers)
    assert err < 1e-9, f"the folded conv differs from conv -> BatchNorm: relative error {err:.1e}"
    for name, mine, ref in zip(("w'", "b'"), (w_f, b_f), F.fold_batchnorm(ws, bs, g_, be, mean, var, eps)):
        assert relative_error(mine, ref) < 1e-12, f"{name} differs from npvit's F.fold_batchnorm"


exercises.check(fold_batchnorm, check_fold_batchnorm)

# %% [markdown]
# ## Where npvit folds, and what it saves
#
# npvit's `ConvNormAct` (conv, BatchNorm, SiLU: most layers of both networks) runs the two
# layers in training and whenever gradients are wanted, and the folded convolution in eval
# mode under `npvit.nn.no_grad()` — the inference path (`npvit predict`, `npvit eval`). Inside
# `no_grad` no layer keeps a cache for backward either. Both paths give the same output; the
# cell measures both, for one layer and for the whole `mobilevitv2_050`, in this run: the time
# (median, one BLAS thread) and the peak memory NumPy allocated during the forward pass
# (`tracemalloc`, which sees NumPy's arrays).

# %%
import tracemalloc  # noqa: E402


def peak_mib(fn):
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2 ** 20


layer = npvit.nn.ConvNormAct(64, 64, kernel_size=3)
layer.bn.running_mean = rng.standard_normal(64).astype(np.float32) * 0.1   # not an identity
layer.bn.running_var = (rng.random(64) + 0.5).astype(np.float32)
layer.eval()
side = 32 if FAST else 64
xl = rng.random((1, 64, side, side)).astype(np.float32)
model = npvit.create_model("mobilevitv2_050").eval()
xm = rng.random((1, 3, 128 if FAST else 256, 128 if FAST else 256)).astype(np.float32)


def inference(module, inp):
    with npvit.nn.no_grad():
        return module(inp)


rows = []
for name, module, inp in ((f"ConvNormAct 64->64 3x3 on {side}x{side}", layer, xl),
                          (f"mobilevitv2_050 at {xm.shape[-1]}x{xm.shape[-1]}", model, xm)):
    assert np.allclose(module(inp), inference(module, inp), rtol=1e-4, atol=1e-4)
    two = median_ms(lambda: module(inp), repeats=3)
    folded = median_ms(lambda: inference(module, inp), repeats=3)
    mem_two, mem_folded = peak_mib(lambda: module(inp)), peak_mib(lambda: inference(module, inp))
    rows.append((name, two, folded, mem_two, mem_folded))
    print(f"{name:34s} conv + BN: {two:7.2f} ms, {mem_two:6.1f} MiB peak | folded, no_grad: "
          f"{folded:7.2f} ms, {mem_folded:6.1f} MiB  -> {two / folded:.2f}x faster, "
          f"{mem_two / mem_folded:.1f}x less memory")
assert rows[-1][4] < rows[-1][3]          # no caches kept: the whole model needs less memory

# %% [markdown]
# ## The same numbers as PyTorch

# %%
torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with torch's batch_norm, layer_norm and group_norm")
else:
    tnf = torch.nn.functional
    cases = {
        "batch_norm (training)": (
            lambda a, g_, b_: F.batchnorm2d_forward(a, g_, b_, np.zeros(6), np.ones(6), True),
            F.batchnorm2d_backward,
            lambda a, g_, b_: tnf.batch_norm(a, torch.zeros(6, dtype=a.dtype),
                                             torch.ones(6, dtype=a.dtype), g_, b_, True, 0.1, eps),
            (3, 6, 5, 5)),
        "layer_norm": (F.layernorm_forward, F.layernorm_backward,
                       lambda a, g_, b_: tnf.layer_norm(a, (6,), g_, b_, eps), (2, 9, 6)),
        "group_norm(1)": (lambda a, g_, b_: F.groupnorm_forward(a, 1, g_, b_), F.groupnorm_backward,
                          lambda a, g_, b_: tnf.group_norm(a, 1, g_, b_, eps), (3, 6, 4, 7)),
    }
    for name, (fwd, bwd, ref, shape) in cases.items():
        a = rng.standard_normal(shape) * 2 + 1
        g_, b_ = rng.standard_normal(6), rng.standard_normal(6)
        y, cache = fwd(a, g_, b_)
        up = rng.standard_normal(y.shape)
        dx, dg, db = bwd(up, cache)
        ta, tg, tb = (torch.tensor(v, requires_grad=True) for v in (a, g_, b_))
        ty = ref(ta, tg, tb)
        ty.backward(torch.from_numpy(up))
        errs = [relative_error(u, t.detach().numpy())
                for u, t in ((y, ty), (dx, ta.grad), (dg, tg.grad), (db, tb.grad))]
        print(f"{name:22s} relative errors y, dx, dgamma, dbeta:", ", ".join(f"{e:.1e}" for e in errs))
        assert max(errs) < 1e-10

# %% [markdown]
# **Summary.** One standardisation, three choices of axes. Its backward is
# `rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))` over the same axes.
# MobileViTv2's GroupNorm(1) normalises each sample over all of (d, P, N), never across the
# batch. At inference BatchNorm folds into the convolution before it (`F.fold_batchnorm`,
# taken by npvit under `no_grad`). Next: how a feature map becomes the sequences the transformer reads.
