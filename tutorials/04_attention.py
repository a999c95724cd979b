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
# derives both, back-propagates both, counts their operations, and redraws the paper's Fig. 1
# (latency against k).
#
# Set `NPVIT_FIG1_FULL=1` to time the paper's full range k = 256 ... 16384 (minutes, and
# MHA needs many GiB at the top); by default a small range runs in seconds.

# %%
import os

import numpy as np

import npvit
from npvit import functional as F
from npvit.bench import attention as bench
from npvit.gradcheck import relative_error, wrap_op
from npvit.opcount import count_ops
from tutorial_setup import FAST, optional_torch, plt, show, skip_without_torch

rng = np.random.default_rng(0)
FIG1_FULL = os.environ.get("NPVIT_FIG1_FULL", "") not in ("", "0")

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
# keys). Written out with NumPy, head by head:


# %%
def mha_by_hand(x, w_qkv, b_qkv, w_proj, b_proj, h):
    k, d = x.shape
    q, key, v = np.split(x @ w_qkv.T + b_qkv, 3, axis=-1)             # (k, d) each
    heads = []
    for j in range(h):
        cols = slice(j * d // h, (j + 1) * d // h)
        scores = q[:, cols] @ key[:, cols].T / np.sqrt(d // h)         # (k, k)
        a = np.exp(scores - scores.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)                              # softmax over keys
        heads.append(a @ v[:, cols])                                   # (k, d_h)
    return np.concatenate(heads, axis=1) @ w_proj.T + b_proj


k, d, h = 10, 8, 2
mha_params = {"w_qkv": rng.standard_normal((3 * d, d)) / np.sqrt(d),
              "b_qkv": rng.standard_normal(3 * d) * 0.1,
              "w_proj": rng.standard_normal((d, d)) / np.sqrt(d),
              "b_proj": rng.standard_normal(d) * 0.1}
x = rng.standard_normal((2, k, d))
y_mha, mha_cache = F.multi_head_attention_forward(x, **mha_params, num_heads=h)
for s in range(2):
    assert np.allclose(y_mha[s], mha_by_hand(x[s], **mha_params, h=h))
print("npvit MHA == by hand; attention weights", mha_cache["attention"].shape, "= (B, h, k, k)")

# %% [markdown]
# ### Its backward
#
# Go back through the lines (per head; `s = 1/sqrt(d_h)`, `S = s Q K^T`, `O = A V`):
#
# * `O = A V`:  `dV = A^T dO`,  `dA = dO V^T`;
# * softmax per row, `A = softmax(S)`: `dS = A * (dA - rowsum(dA * A))`;
# * `S = s Q K^T`: `dQ = s dS K`,  `dK = s dS^T Q`;
# * the two linear layers: `dW = dY^T X`, `db = sum dY`, `dX = dY W`, with the three head
#   gradients `[dQ | dK | dV]` stacked back into the fused qkv layout.
#
# `dA` and `dS` are (k x k) as well: the backward pays the quadratic cost again.
# Finite differences on every input and parameter:

# %%
# wrap_op turns the (y, cache) pair into the forward/backward functions the checker calls.
mha_forward, mha_backward = wrap_op(
    lambda x, w_qkv, b_qkv, w_proj, b_proj: F.multi_head_attention_forward(
        x, w_qkv, b_qkv, w_proj, b_proj, num_heads=h),
    F.multi_head_attention_backward, ["x", "w_qkv", "b_qkv", "w_proj", "b_proj"])
errors = npvit.check_gradients(mha_forward, mha_backward, {"x": x, **mha_params},
                               max_coords=24 if FAST else None)
print("MHA backward vs finite differences:", ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
assert max(errors.values()) < 1e-7

# %% [markdown]
# ## Separable self-attention (MobileViTv2, Section 3.2 of the paper)
#
# Keep the v2 layout `x` (B, d, P, N) (a plain sequence of k tokens is the case P = 1,
# N = k). One 1x1 convolution maps d channels to `1 + 2d`: a single **query score** `i` per
# token, keys `K` and values `V`. Then
#
# $$ c_s = \mathrm{softmax}_N(i) \in \mathbb{R}^{N}, \qquad
#    c_v = \sum_{n} c_s[n]\, K[:, n] \in \mathbb{R}^{d}, \qquad
#    y = W_O\big(\mathrm{ReLU}(V) \odot c_v\big), $$
#
# for each of the P pixel positions separately. The **context scores** `c_s` say how much
# each token contributes to the **context vector** `c_v`, which is shared by all tokens and
# multiplies their values element-wise. There are no heads and no 1/sqrt(d) — and no (k x k)
# array: the largest intermediate is (d, k).


# %%
def separable_by_hand(x, w_qkv, b_qkv, w_out, b_out):
    d = x.shape[1]
    qkv = np.einsum("od,bdpn->bopn", w_qkv[:, :, 0, 0], x) + b_qkv.reshape(1, -1, 1, 1)
    i, key, v = qkv[:, :1], qkv[:, 1:1 + d], qkv[:, 1 + d:]
    c_s = np.exp(i - i.max(axis=-1, keepdims=True))
    c_s /= c_s.sum(axis=-1, keepdims=True)                            # (B, 1, P, N)
    c_v = (key * c_s).sum(axis=-1, keepdims=True)                      # (B, d, P, 1)
    out = np.maximum(v, 0) * c_v                                       # (B, d, P, N)
    return np.einsum("od,bdpn->bopn", w_out[:, :, 0, 0], out) + b_out.reshape(1, -1, 1, 1)


sep_params = {"w_qkv": rng.standard_normal((1 + 2 * d, d, 1, 1)) / np.sqrt(d),
              "b_qkv": rng.standard_normal(1 + 2 * d) * 0.1,
              "w_out": rng.standard_normal((d, d, 1, 1)) / np.sqrt(d),
              "b_out": rng.standard_normal(d) * 0.1}
xs = rng.standard_normal((2, d, 4, k))                                  # (B, d, P, N)
y_sep, sep_cache = F.separable_attention_forward(xs, **sep_params)
assert np.allclose(y_sep, separable_by_hand(xs, **sep_params))
print("npvit separable attention == by hand; context scores", sep_cache["context_scores"].shape,
      "= (B, 1, P, N)")

# %% [markdown]
# ### Its backward
#
# Again line by line, from `out = ReLU(V) * c_v` back:
#
# * `c_v` was broadcast over N, so its gradient **sums** over N:
#   `dc_v = sum_N(dout * ReLU(V))`, and `dV = (dout * c_v) * [V > 0]`;
# * `c_v = sum_N K * c_s`: `dK = dc_v * c_s` (broadcast back over N) and
#   `dc_s = sum_d(dc_v * K)` (c_s was broadcast over the d channels);
# * softmax over N: `di = c_s * (dc_s - sum_N(dc_s * c_s))`;
# * stack `[di | dK | dV]` and go back through the 1x1 convolution (tutorial 1).
#
# Every array is (B, d or 1, P, N) or smaller — O(k d) both ways.

# %%
sep_forward, sep_backward = wrap_op(F.separable_attention_forward, F.separable_attention_backward,
                                    ["x", "w_qkv", "b_qkv", "w_out", "b_out"])
errors = npvit.check_gradients(sep_forward, sep_backward, {"x": xs, **sep_params},
                               max_coords=24 if FAST else None)
print("separable backward vs finite differences:", ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
assert max(errors.values()) < 1e-7

# %% [markdown]
# What each one computes for a sequence of k tokens: MHA a (k x k) weight matrix per head
# (each row: how one token mixes all the others), separable attention one row of k context
# scores (how much each token contributes to the shared context).

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1, 1.3]})
ax0.imshow(mha_cache["attention"][0, 0], cmap="viridis")
ax0.set(title=f"MHA: attention weights A, head 0 ({k} x {k})", xlabel="key token",
        ylabel="query token")
ax1.bar(range(k), sep_cache["context_scores"][0, 0, 0], color="tab:orange")
ax1.set(title=f"separable: context scores c_s (1 x {k})", xlabel="token n", ylabel="score",
        ylim=(0, None))
show(fig, "04_attention_vs_context_scores")
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
# The counter must agree with these formulas exactly, and the largest array MHA makes is the
# (h, k, k) score tensor.

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
    print(f"k={kk:4d}: MHA {c_mha.macs:>12,d} multiply-adds, largest {c_mha.largest.shape}; "
          f"separable {c_sep.macs:>11,d}, largest {c_sep.largest.shape}")
print()
print(counts[ks[-1]][1].table())

# %% [markdown]
# ## The paper's Fig. 1: latency against the number of tokens
#
# `npvit.bench.attention` (also `npvit bench attention` on the command line) times one forward
# pass of MHA, Linformer (keys and values projected to p tokens, O(k p d)) and separable
# attention, and fits the slope of log latency against log k: about 2 for O(k^2), about 1
# for O(k). On small k the quadratic term is hidden behind the `k d^2` projections; it takes
# over once k exceeds a few times d. The paper's setting is d = 512, h = 8, p = 256 on one
# thread (the command line forces one BLAS thread; here NumPy uses whatever it was started
# with). Timings of small k on a busy machine are noisy; the operation counts on the right
# are exact.

# %%
if FIG1_FULL:
    fig1 = dict(ks=[256 * 2 ** i for i in range(7)], dim=512, heads=8, proj_len=256, repeats=3)
elif FAST:
    fig1 = dict(ks=[128, 256, 512, 1024], dim=128, heads=8, proj_len=64, repeats=3)
else:
    fig1 = dict(ks=[128, 256, 512, 1024, 2048], dim=256, heads=8, proj_len=128, repeats=3)
result = bench.run_benchmark(**fig1)
large_k = fig1["ks"][len(fig1["ks"]) // 2]
for line in bench.slope_lines(result, large_k):
    print(line)
show(bench.figure(result, large_k), "04_fig1_latency")

# the counted operations (right panel) scale as the formulas say, whatever the timer measured
sep = [result.get("separable", kk).counter for kk in fig1["ks"]]
assert all(b.macs == 2 * a.macs for a, b in zip(sep, sep[1:]))

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
# **Summary.** MHA builds (k x k) weights per head — `4 k d^2 + 2 k^2 d` multiply-adds and a
# k^2 buffer; separable attention computes k context scores and one context vector —
# `k (3 d^2 + d)` and nothing larger than (d, k). Both backward passes are derived above and
# checked against finite differences and PyTorch. Next: the blocks these units live in.
