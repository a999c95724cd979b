# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 3. Unfold and fold: from a feature map to sequences of patches
#
# A transformer reads sequences of tokens; a CNN produces feature maps (B, C, H, W). MobileViT
# connects the two without losing the spatial order. It cuts the map into non-overlapping
# patches of `P = p_h p_w = 2 x 2` pixels, giving `N = (H/2)(W/2)` patches, and then, **for
# each of the P pixel positions inside a patch, forms one sequence of N tokens**: pixel (0, 0)
# of every patch is one sequence, pixel (0, 1) of every patch another, and so on. Attention
# runs within each sequence, i.e. between the pixels at the same position of different
# patches. Because a 3x3 convolution mixed every pixel with its neighbours just before, this
# still gives every output pixel a view of the whole image (tutorial 5 shows it).
#
# Unfold and fold are pure reshapes and transposes (`npvit/functional/patches.py`). v1 and v2
# lay the same numbers out differently:
#
# * **v1**: tokens (B*P, N, C), channels last, so LayerNorm and Linear act on the last axis;
# * **v2**: (B, C, P, N), channels first, so 1x1 convolutions and GroupNorm act directly.

# %%
import numpy as np

import npvit
from npvit import functional as F
from tutorial_setup import FAST, optional_torch, plt, show, skip_without_torch

rng = np.random.default_rng(0)

# %% [markdown]
# ## Follow every pixel
#
# Number the pixels of an 8x8 one-channel map 0..63 in reading order and unfold it. The
# result has P = 4 rows (pixel positions) of N = 16 tokens (patches). Pixel (r, c) lies in
# patch `n = (r // 2) * (W / 2) + c // 2` at position `p = (r % 2) * 2 + c % 2`:

# %%
H = W = 8
x = np.arange(H * W, dtype=float).reshape(1, 1, H, W)
t2 = F.unfold_v2(x)                                  # (B, C, P, N)
t1 = F.unfold_v1(x)                                  # (B*P, N, C)
print("x", x.shape, "-> v2", t2.shape, "  v1", t1.shape)
for r in range(H):
    for c in range(W):
        n, p = (r // 2) * (W // 2) + c // 2, (r % 2) * 2 + c % 2
        assert t2[0, 0, p, n] == x[0, 0, r, c] == t1[p, n, 0]
print("sequence p=0 (top-left pixel of every patch):", t2[0, 0, 0].astype(int))

# %% [markdown]
# The figure colours each pixel by its position p inside its patch. Left: the feature map
# with each pixel's patch index n. Middle: the unfolded (P, N) array, each cell labelled with
# the pixel it came from — every row is one sequence the transformer attends over. Right: the
# 16 pixels that pixel (2, 3) exchanges information with in one attention layer (its own
# sequence, p = 1).

# %%
p_of = np.array([[(r % 2) * 2 + c % 2 for c in range(W)] for r in range(H)])
n_of = np.array([[(r // 2) * (W // 2) + c // 2 for c in range(W)] for r in range(H)])
colours = plt.get_cmap("Set2")(np.arange(4))

fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 3.6),
                                    gridspec_kw={"width_ratios": [1, 2.2, 1]})
ax0.imshow(colours[p_of])
for (r, c), n in np.ndenumerate(n_of):
    ax0.text(c, r, n, ha="center", va="center", fontsize=8)
for k in range(0, H + 1, 2):
    ax0.axhline(k - 0.5, color="k", lw=1.5)
    ax0.axvline(k - 0.5, color="k", lw=1.5)
ax0.set(title="feature map 8x8\ncolour = position p, number = patch n", xticks=[], yticks=[])

ax1.imshow(colours[np.repeat(np.arange(4)[:, None], 16, axis=1)], aspect="auto")
for (p, n), v in np.ndenumerate(t2[0, 0]):
    ax1.text(n, p, f"{int(v) // W},{int(v) % W}", ha="center", va="center", fontsize=7)
ax1.set(title="unfold: P = 4 sequences (rows) of N = 16 tokens\neach cell: the source pixel (row, col)",
        xlabel="token n (patch)", ylabel="sequence p", yticks=range(4), xticks=range(16))

attends = (p_of == p_of[2, 3]).astype(float)
ax2.imshow(attends, cmap="Greys", vmin=0, vmax=1.6)
ax2.scatter([3], [2], marker="*", s=200, color="crimson")
for k in range(0, H + 1, 2):
    ax2.axhline(k - 0.5, color="k", lw=0.8)
    ax2.axvline(k - 0.5, color="k", lw=0.8)
ax2.set(title="pixel (2, 3) (star) attends to\nthe same position in every patch", xticks=[], yticks=[])
show(fig, "03_unfold_patches")

# %% [markdown]
# ## Fold is the inverse of unfold — and its adjoint
#
# Unfold only moves numbers: it is a **permutation** of the B*C*H*W elements. So
#
# * fold (the inverse permutation) undoes it exactly, and
# * for a permutation matrix `Pm`, the adjoint `Pm^T` is the inverse `Pm^{-1}`: the backward of
#   unfold is fold, and the backward of fold is unfold. No arithmetic at all.
#
# Checked below on a random (B, C, H, W) map, both layouts, including non-square maps.

# %%
xr = rng.standard_normal((2, 3, 6, 10))
for name, unfold, fold in (("v1", F.unfold_v1, F.fold_v1), ("v2", F.unfold_v2, F.fold_v2)):
    t = unfold(xr)
    assert np.array_equal(fold(t, xr.shape[2:]), xr)                         # inverse
    assert np.array_equal(np.sort(t, axis=None), np.sort(xr, axis=None))     # a permutation
    g = rng.standard_normal(t.shape)
    assert np.isclose(np.sum(t * g), np.sum(xr * fold(g, xr.shape[2:])))    # adjoint
    print(f"{name}: unfold {xr.shape} -> {t.shape}; fold(unfold(x)) == x; <unfold x, g> == <x, fold g>")

# the two layouts hold the same numbers: v1[b*P + p, n, c] == v2[b, c, p, n]
b, c, h, w = xr.shape
assert np.array_equal(F.unfold_v1(xr).reshape(b, 4, -1, c).transpose(0, 3, 1, 2), F.unfold_v2(xr))

# %% [markdown]
# The same fact through the (out, cache) interface the layers use, with finite differences:

# %%
for name in ("v1", "v2"):
    fwd = getattr(F, f"unfold_{name}_forward")
    bwd = getattr(F, f"unfold_{name}_backward")
    caches = []

    def forward(x):
        t, cache = fwd(x)
        caches.append(cache)
        return t

    errors = npvit.check_gradients(forward, lambda g: {"x": bwd(g, caches[-1])},
                                   {"x": rng.standard_normal((2, 3, 4, 6))},
                                   max_coords=32 if FAST else None)
    print(f"unfold_{name} backward vs finite differences: {errors['x']:.1e}")
    assert errors["x"] < 1e-8

# %% [markdown]
# ## When H or W is odd
#
# A 256x256 input gives 32, 16 and 8 pixel maps at the three MobileViT blocks, all even; a
# 224x224 input gives 28, 14 and **7**. The two versions handle a side that is not a multiple
# of the patch size differently (ml-cvnets, reproduced by timm and npvit):
#
# * **v1** resizes the map *inside* the block up to the next multiple (bilinear,
#   `align_corners=False`), runs the transformer, folds, and resizes back down;
# * **v2** resizes the *block input* up (bilinear, `align_corners=True`) and never back, so
#   the 7x7 map stays 8x8 from there on.
#
# Bilinear resizing is linear and separable: `y = A_h x A_w^T` with interpolation matrices
# (two non-zeros per row), so its backward is the adjoint `A_h^T dy A_w`. The two alignment
# conventions sample different source positions:

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for ax, align in zip(axes, (False, True)):
    a = F.interpolation_matrix(7, 8, align_corners=align)
    assert np.allclose(a.sum(axis=1), 1.0)              # every output is a weighted average
    ax.imshow(a, cmap="magma")
    ax.set(title=f"7 -> 8, align_corners={align}", xlabel="input pixel", ylabel="output pixel")
    for (i, j), v in np.ndenumerate(a):
        if v > 0:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="k" if v > 0.5 else "w")
show(fig, "03_resize_weights")

xo = rng.standard_normal((1, 2, 7, 7))
up, cache_up = F.resize_bilinear_forward(xo, (8, 8), align_corners=True)
g = rng.standard_normal(up.shape)
assert np.isclose(np.sum(up * g), np.sum(xo * F.resize_bilinear_backward(g, cache_up)))
print("7x7 -> 8x8 -> unfold:", F.unfold_v2(up).shape, "(P = 4, N = 16); backward is the adjoint")

# %% [markdown]
# ## The same layout as PyTorch
#
# timm reshapes exactly as above. In PyTorch's own terms, the v2 layout is what
# `torch.nn.functional.unfold(x, kernel_size=2, stride=2)` returns, (B, C*P, N) with row
# `c*P + p`, and fold is `torch.nn.functional.fold`; the resize is `F.interpolate`.

# %%
torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with torch's unfold, fold and interpolate")
else:
    tx = torch.from_numpy(xr)
    ref = torch.nn.functional.unfold(tx, kernel_size=2, stride=2).numpy()    # (B, C*P, N)
    assert np.array_equal(F.unfold_v2(xr).reshape(ref.shape), ref)
    back = torch.nn.functional.fold(torch.from_numpy(ref), xr.shape[2:], kernel_size=2, stride=2)
    assert np.array_equal(F.fold_v2(F.unfold_v2(xr), xr.shape[2:]), back.numpy())
    for align in (False, True):
        ours, _ = F.resize_bilinear_forward(xo, (8, 8), align_corners=align)
        theirs = torch.nn.functional.interpolate(torch.from_numpy(xo), size=(8, 8),
                                                 mode="bilinear", align_corners=align).numpy()
        assert np.allclose(ours, theirs, atol=1e-12)
    print("unfold_v2 == torch unfold, fold_v2 == torch fold, resize == F.interpolate (both alignments)")

# %% [markdown]
# **Summary.** Unfold turns (B, C, H, W) into P = 4 sequences of N patches: tokens
# (B*P, N, C) in v1, (B, C, P, N) in v2. It is a permutation, so fold is both its inverse and
# its backward. Odd sides are resized: v1 around the transformer, v2 at the block input.
# Next: the attention that runs over those sequences.
