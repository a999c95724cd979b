# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 10. The efficient-attention zoo beside the paper's Fig. 1
#
# The MobileViTv2 paper's Fig. 1 asks one question of an attention unit: how does its cost grow
# with the number of tokens k, and does it need batched matrix products and k x k arrays?
# Multi-head attention (MHA) is O(k^2), separable self-attention O(k). The efficient ViTs that
# followed answered the question five more ways. npvit writes each by hand, forward and
# backward (`npvit/functional/attention_zoo.py`), checked against timm or a PyTorch reference
# written from the paper (`tests/test_attention_zoo.py`):
#
# | unit | paper | idea | cost in k |
# |---|---|---|---|
# | `CascadedGroupAttention` | EfficientViT (Liu et al. 2023) | each head sees one channel split plus the previous head's output | O(k^2) over its input; the model runs it in 7x7 windows |
# | `EfficientFormerAttention` | EfficientFormer (Li et al. 2022) | MHA plus a learned bias per relative position | O(k^2) |
# | `TinyViTAttention` + windows | TinyViT (Wu et al. 2022) | attention inside 7x7 windows, with the same bias | O(k) |
# | `LookupCrossAttention` | LookupViT (Koner et al. 2024) | M compressed tokens gather from the k tokens and scatter back | O(k M) |
# | `MPCAttention(kind=...)` | MPCViT (Zeng et al. 2023) | softmax replaced by ReLU softmax or a plain 1/k scaling | O(k^2) as defined |
#
# This tutorial walks through them, checks a property of each, and redraws Fig. 1 with all of them.

# %%
import numpy as np

import npvit
from npvit import functional as F
from npvit.bench import attention_zoo as zoo
from npvit.functional.attention_zoo import _bias_table_grad, _weights_backward, _weights_forward
from npvit.gradcheck import check_gradients, numeric_gradient, relative_error, wrap_op
from tutorial_setup import FAST, Exercises, optional_torch, plt, show, skip_without_torch

rng = np.random.default_rng(0)
exercises = Exercises("10")          # solutions: tutorials/solutions/10_attention_zoo.py

# %% [markdown]
# ## A bias per relative position
#
# EfficientViT, EfficientFormer and TinyViT (after LeViT) add to each attention score a learned
# number that depends only on the offset (|dy|, |dx|) between the two tokens on their grid: a
# table of rows x cols entries per head, read through a (k, k) index. On a 4 x 4 grid:

# %%
index = F.relative_position_index(4, 4)               # (16, 16) into a table of 16 entries
table = rng.standard_normal((1, 16))
print(index[:6, :6])
assert index.shape == (16, 16) and index.max() == 15 and (index == index.T).all()
assert (np.diag(index) == 0).all()                     # a token and itself: offset (0, 0)

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
axes[0].imshow(index, cmap="viridis")
axes[0].set_title("index: |dy| * cols + |dx|")
axes[1].imshow(table[0][index], cmap="coolwarm")
axes[1].set_title("one head's bias table[index] (16 x 16)")
for ax in axes:
    ax.set(xlabel="key token", ylabel="query token")
show(fig, "10_relative_position_bias")

# %% [markdown]
# ## EfficientFormer: MHA with that bias
#
# `y = concat_h softmax(q k^T / sqrt(d_k) + table_h[index]) v W_proj^T`. The module has timm's
# parameter names, so a timm state_dict loads 1:1; with PyTorch installed we check it here.

# %%
ef = npvit.nn.EfficientFormerAttention(dim=16, key_dim=4, num_heads=2, attn_ratio=2,
                                       resolution=4).astype(np.float64)
ef.attention_biases.data[:] = rng.standard_normal(ef.attention_biases.shape)
tokens = rng.standard_normal((1, 16, 16))
y = ef.forward(tokens)
print(sorted(ef.state_dict()))
assert np.allclose(ef.last_attention.sum(-1), 1.0)

torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with timm's efficientformer.Attention")
else:
    from timm.models.efficientformer import Attention
    theirs = Attention(16, 4, 2, 2, 4).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ef.state_dict().items()})
    theirs.eval()
    err = np.abs(theirs(torch.tensor(tokens)).detach().numpy() - y).max()
    print(f"max |npvit - timm| = {err:.1e}")
    assert err < 1e-12

# %% [markdown]
# ## TinyViT: the same attention inside 7 x 7 windows
#
# A (B, H, W, C) map is zero-padded to multiples of 7 and cut into windows of 49 tokens;
# attention runs per window, so k tokens cost (k / 49) windows of 49 x 49: linear in k. The
# partition is a permutation (plus padding), so its backward is the merge and vice versa.

# %%
fmap = rng.standard_normal((1, 10, 12, 4))
windows = F.window_partition(fmap, 7)                  # 10 x 12 -> 14 x 14: 4 windows
assert windows.shape == (4, 49, 4)
assert np.array_equal(F.window_merge(windows, (10, 12), 7), fmap)

labels = F.window_merge(np.repeat(np.arange(4.0)[:, None, None], 49, axis=1), (10, 12), 7)[0, :, :, 0]
fig, ax = plt.subplots(figsize=(4, 3.4))
ax.imshow(labels, cmap="Pastel1")
ax.set_title("which 7x7 window each token of a 10x12 map is in")
show(fig, "10_windows")

tiny = npvit.nn.TinyViTAttention(4, key_dim=2, num_heads=2, attn_ratio=1, resolution=(7, 7))
y_windows = tiny.forward(windows.astype(np.float32))
assert y_windows.shape == (4, 49, 4)

# %% [markdown]
# ## EfficientViT: cascaded group attention
#
# Head i reads the i-th split of the channels plus head i-1's output, so later heads refine
# earlier ones: changing the first split changes every head, changing the last split only the
# last head. Its queries pass a depthwise convolution, and BatchNorm sits after every conv.

# %%
cga = npvit.nn.CascadedGroupAttention(dim=8, key_dim=2, num_heads=4, attn_ratio=1, resolution=4,
                                      kernels=(3, 3, 3, 3)).astype(np.float64).eval()
for m in cga.qkvs:
    m.bn.weight.data[:] = 1.0
x_map = rng.standard_normal((1, 8, 4, 4))
cga.forward(x_map)
heads_before = [a.copy() for a in cga.last_attention]


def changed_heads(split):
    x2 = x_map.copy()
    x2[:, 2 * split:2 * split + 2] += 1.0             # change one head's channel split
    cga.forward(x2)
    return [not np.allclose(a, b) for a, b in zip(cga.last_attention, heads_before)]


print("change split 0 ->", changed_heads(0), "   change split 3 ->", changed_heads(3))
assert changed_heads(0) == [True] * 4 and changed_heads(3) == [False, False, False, True]

# %% [markdown]
# ## LookupViT: bidirectional cross-attention through one score matrix
#
# M compressed tokens z ask the k lookup tokens x: `S = q(z) K(x)^T / sqrt(d_h)`, (M x k) per
# head. Softmax over k gathers information into z; the same S with the softmax over M sends the
# updated z back to every lookup token. Nothing is k x k, so the cost is O(k M d). In a LookupViT
# block the compressed tokens also pass self-attention and an MLP between the two directions:
# give the module any such layer as `compressed_mixer` (the functional pair is split into
# `lookup_gather_forward` and `lookup_scatter_forward` for the same reason).
#
# Inferred, not confirmed from public code (LookupViT's authors have not released theirs): that
# the back direction re-normalises the shared scores over M (rather than reusing the gather
# weights transposed), and that it reads values projected from the freshly gathered z.

# %%
look = npvit.nn.LookupCrossAttention(dim=8, num_heads=2, num_compressed=3).astype(np.float64)
x_tokens = rng.standard_normal((1, 20, 8))
out = look.forward(x_tokens)
(_, z_out), cache = F.lookup_cross_attention_forward(
    x_tokens, np.broadcast_to(look.compressed_tokens.data, (1, 3, 8)),
    *[a for layer in (look.q, look.kv, look.proj_compressed, look.value_compressed, look.proj_lookup)
      for a in (layer.weight.data, layer.bias.data)], num_heads=2)
assert cache["gather"].shape == (1, 2, 3, 20)           # (B, h, M, k)
assert np.allclose(cache["gather"].sum(-1), 1.0)        # each compressed token: a distribution over k
assert np.allclose(cache["scatter"].sum(-2), 1.0)       # each lookup token: a distribution over M
assert np.allclose(z_out, look.last_compressed)

# %% [markdown]
# ## MPCViT: attention without the softmax's exponentials
#
# Under secure multi-party computation the softmax's exp and division dominate the latency, so
# MPCViT searches, per head, between the softmax, **ReLU softmax** `ReLU(s) / (sum ReLU(s) + eps)`
# and **scaling attention** `s / k` (`kind=` one of them, or one per head). The scaling attention is linear in s, so it could be
# re-associated as `q (k^T v) / k`: O(k d^2) and no k x k array, the linear-attention trick.
# npvit computes it as the paper defines it (with the k x k matrix) and checks the identity:

# %%
x_mpc = rng.standard_normal((1, 12, 8))
mpc = npvit.nn.MPCAttention(8, num_heads=1, kind="scaling").astype(np.float64)
y_scaling = mpc.forward(x_mpc)
q, k_, v = np.split(x_mpc[0] @ mpc.qkv.weight.data.T, 3, axis=-1)
reassociated = (q / np.sqrt(8)) @ (k_.T @ v) / 12 @ mpc.proj.weight.data.T + mpc.proj.bias.data
assert np.allclose(y_scaling[0], reassociated)
relu = npvit.nn.MPCAttention(8, num_heads=2, kind="relu").astype(np.float64)
relu.forward(x_mpc)
assert (relu.last_attention >= 0).all() and (relu.last_attention.sum(-1) <= 1 + 1e-12).all()
# the searched MPCViT mixes kinds per head ("heterogeneous attention"): a kind per head
mixed = npvit.nn.MPCAttention(8, num_heads=2, kind=("softmax", "scaling")).astype(np.float64)
mixed.forward(x_mpc)
assert np.allclose(mixed.last_attention[:, 0].sum(-1), 1.0)       # head 0: a softmax

# %% [markdown]
# ### The ReLU softmax's backward, by hand
#
# Per row of scores s: `r = ReLU(s)`, `D = sum_j r_j + eps`, `A_i = r_i / D`. Then
# `dA_i/dr_j = [i = j] / D - r_i / D^2 = ([i = j] - A_i) / D`, so the vector-Jacobian product is
# `dr_j = sum_i dA_i ([i = j] - A_i) / D = (dA_j - <dA, A>) / D` — the softmax's rule with the
# exponential's extra factor A_j gone — and the ReLU passes it where s > 0:
# `ds = (dA - <dA, A>) / D * [s > 0]`. Finite differences are safe here only away from the kink
# at s = 0 (a perturbation of h that crosses 0 sees a one-sided slope), so the scores are kept
# at least 0.1 from it.

# %%
def relu_softmax_backward_by_hand(d_weights, s, eps=F.attention_zoo.RELU_SOFTMAX_EPS):
    """d_weights, s: (..., m) -> ds (..., m)."""
    r = np.maximum(s, 0.0)
    denominator = r.sum(axis=-1, keepdims=True) + eps                  # (..., 1)
    weights = r / denominator
    dr = (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True)) / denominator
    return dr * (s > 0)


s_relu = rng.standard_normal((2, 3, 6))
s_relu += 0.2 * np.sign(s_relu)                  # |s| >= 0.2: no finite difference crosses the kink
dA = rng.standard_normal(s_relu.shape)
ours = relu_softmax_backward_by_hand(dA, s_relu)
num, idx = numeric_gradient(lambda: _weights_forward(s_relu.copy(), "relu")[0], s_relu, dA)
_, relu_cache = _weights_forward(s_relu.copy(), "relu")
errs = {"vs finite differences": relative_error(ours.reshape(-1)[idx], num),
        "vs npvit (MPCAttention's backward)": relative_error(ours, _weights_backward(dA, relu_cache))}
print({k: f"{v:.1e}" for k, v in errs.items()})
assert errs["vs finite differences"] < 1e-8 and errs["vs npvit (MPCAttention's backward)"] < 1e-13

# %% [markdown]
# ## Every backward, against finite differences
#
# One check per family here (the tests check all of them, and against timm / PyTorch):

# %%
fwd, bwd = wrap_op(lambda **kw: F.mpc_attention_forward(**kw, num_heads=2, kind="relu"),
                   F.mpc_attention_backward, ["x", "w_qkv", "b_qkv", "w_proj", "b_proj"])
errors = check_gradients(fwd, bwd, dict(x=rng.standard_normal((1, 5, 4)), w_qkv=rng.standard_normal((12, 4)),
                                        b_qkv=rng.standard_normal(12), w_proj=rng.standard_normal((4, 4)),
                                        b_proj=rng.standard_normal(4)))
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-7
fwd, bwd = wrap_op(lambda x: F.window_partition_forward(x, 3), F.window_partition_backward, ["x"])
assert max(check_gradients(fwd, bwd, {"x": rng.standard_normal((1, 4, 5, 2))}).values()) < 1e-8

# %% [markdown]
# ## Exercises
#
# Fill in a function and run the cell after it: the checker compares your answer with npvit
# and with finite differences (solutions, read them last: `tutorials/solutions/10_attention_zoo.py`).
#
# ### Exercise 10.1: merging windows is partition's backward
#
# Without padding (H, W multiples of ws), partition is `x.reshape(B, nH, ws, nW, ws, C)`, a
# transpose to (B, nH, nW, ws, ws, C) and a reshape to (B * nH * nW, ws * ws, C). It only moves
# numbers, so its backward moves the gradients back: undo each step in reverse order. Return
# `dx` (B, H, W, C) from `d_windows`.


# %%
def window_merge_by_reshapes(d_windows, height, width, ws):
    """d_windows: (B * nH * nW, ws * ws, C) -> dx (B, height, width, C)."""
    raise NotImplementedError


# %%
def check_window_merge_by_reshapes(candidate):
    r = np.random.default_rng(101)
    x = r.standard_normal((2, 6, 4, 3))
    windows, cache = F.window_partition_forward(x, 2)
    d_windows = r.standard_normal(windows.shape)
    dx = candidate(d_windows.copy(), 6, 4, 2)
    assert np.shape(dx) == x.shape, f"dx must be {x.shape}, got {np.shape(dx)}"
    assert relative_error(dx, F.window_partition_backward(d_windows, cache)) < 1e-14, \
        "dx differs from npvit's window_partition_backward (is the transpose undone?)"
    num, idx = numeric_gradient(lambda: F.window_partition(x, 2), x, d_windows, rng=r)
    assert relative_error(np.reshape(dx, -1)[idx], num) < 1e-8, "dx differs from finite differences"


exercises.check(window_merge_by_reshapes, check_window_merge_by_reshapes)

# %% [markdown]
# ### Exercise 10.2: the bias table's gradient is a scatter-add
#
# The forward reads `bias = table[:, index]`: (h, T) -> (h, N, N). Many token pairs read the
# same entry (on a 4 x 4 grid, 256 pairs share 16 entries), so each entry's gradient is the sum
# of the gradients of all pairs that read it. Return `d_table` (h, T) from `d_bias` (h, N, N).
# (Careful: `d_table[:, index] += d_bias` does not add repeated indices; `np.add.at` or
# `np.bincount` does.)


# %%
def bias_table_backward(d_bias, index, table_size):
    """d_bias: (h, N, N), index: (N, N) ints in [0, table_size) -> d_table (h, table_size)."""
    raise NotImplementedError


# %%
def check_bias_table_backward(candidate):
    r = np.random.default_rng(102)
    index = F.relative_position_index(3, 4)                      # (12, 12) into 12 entries
    table = r.standard_normal((2, 12))
    d_bias = r.standard_normal((2, 12, 12))
    d_table = candidate(d_bias.copy(), index, 12)
    assert np.shape(d_table) == table.shape, f"d_table must be {table.shape}, got {np.shape(d_table)}"
    assert relative_error(d_table, _bias_table_grad(d_bias, index, 12)) < 1e-13, \
        "d_table differs from npvit's (are repeated entries summed?)"
    num, _ = numeric_gradient(lambda: table[:, index], table, d_bias)
    assert relative_error(d_table, num.reshape(table.shape)) < 1e-8, "d_table differs from finite differences"


exercises.check(bias_table_backward, check_bias_table_backward)

# %% [markdown]
# ## Fig. 1, extended: counted work and latency against k
#
# The operation counter reads sizes off the arrays each unit actually uses. Doubling k doubles
# the work of the windowed and cross-attention units and nearly quadruples it for the global
# ones. Latency is measured the way `npvit bench attention --units all` does (one warm-up pass,
# median of the timed ones); here at a small width so it runs in seconds. The committed
# benchmark at the paper's d = 512, h = 8 is in `docs/attention_zoo.md`.

# %%
dim, heads = (32, 2) if FAST else (128, 8)
ks = [32, 64, 128] if FAST else [128, 256, 512, 1024, 2048]
result = zoo.run_zoo(ks, dim=dim, heads=heads, proj_len=32, repeats=1 if FAST else 3, log=lambda s: None)
for unit in zoo.ALL_UNITS:
    work = [result.get(unit, k).counter.macs + result.get(unit, k).counter.elementwise for k in ks]
    print(f"{unit:16s} counted work per doubling: "
          + ", ".join(f"x{b / a:.2f}" for a, b in zip(work, work[1:])))
lookup_work = [result.get("LookupViT", k).counter.macs for k in ks]
assert all(b < 2.05 * a for a, b in zip(lookup_work, lookup_work[1:]))
ef_work = [result.get("EfficientFormer", k).counter.macs for k in ks]
assert ef_work[-1] / ef_work[-2] > ef_work[1] / ef_work[0]      # the k^2 term takes over
show(zoo.figure(result), "10_attention_zoo")

# %% [markdown]
# In the plot, solid lines are the units that hold k x k arrays (their memory grows as k^2);
# dashed ones stay O(k). At these small k every unit is dominated by its linear projections,
# so the quadratic ones only bend upwards at the right; at the paper's d = 512 the committed
# run shows the slopes (docs/attention_zoo.md).
