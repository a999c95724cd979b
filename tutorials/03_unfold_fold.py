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
from npvit.data import example_image_path, load_image, preprocess
from npvit.gradcheck import numeric_gradient
from tutorial_setup import (FAST, Exercises, optional_torch, plt, relative_error, show,
                            skip_without_torch)

rng = np.random.default_rng(0)
exercises = Exercises("03")          # solutions: tutorials/solutions/03_unfold_fold.py

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
# Read the rule backwards: sequence `p = 2 r0 + c0` holds the pixels `(r, c)` with `r % 2 == r0`
# and `c % 2 == c0`, in reading order — every second row and column, starting at `(r0, c0)`.
# That is the stride-2 **polyphase component** `x[r0::2, c0::2]` of signal processing: the
# image subsampled by 2 at one of the four phases. So sequence p of the v1 unfold, reshaped to
# (H/2, W/2), *is* `x[:, :, r0::2, c0::2]`:

# %%
for p in range(4):
    r0, c0 = divmod(p, 2)
    assert np.array_equal(t1[p, :, 0].reshape(H // 2, W // 2), x[0, 0, r0::2, c0::2])
print("sequence p of unfold_v1 == x[r0::2, c0::2] for all four phases (r0, c0)")

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
# On a real photo the four phases are four half-resolution copies of the whole image, each
# shifted by one pixel: every sequence the transformer reads covers the whole picture. (The
# photo is matplotlib's public-domain portrait of Grace Hopper, at 256x256 as the models see
# it; the difference panel shows that the phases differ only at edges.)

# %%
photo = preprocess(load_image(example_image_path()), "cvnets-v2")[None]      # (1, 3, 256, 256)
phases = F.unfold_v2(photo)                                                  # (1, 3, 4, N)
side = photo.shape[-1] // 2
fig, axes = plt.subplots(1, 6, figsize=(17, 3.2))
axes[0].imshow(photo[0].transpose(1, 2, 0))
axes[0].set_title("photo 256x256")
for p, ax in enumerate(axes[1:5]):
    r0, c0 = divmod(p, 2)
    sub = phases[0, :, p].reshape(3, side, side)
    assert np.array_equal(sub, photo[0, :, r0::2, c0::2])
    ax.imshow(sub.transpose(1, 2, 0))
    ax.set_title(f"sequence p={p} = x[{r0}::2, {c0}::2]\n{side}x{side} = N tokens", fontsize=9)
gap = np.abs(phases[0, :, 0] - phases[0, :, 3]).max(axis=0).reshape(side, side)
im = axes[5].imshow(gap, cmap="magma")
axes[5].set_title("|p0 - p3| (max of RGB)", fontsize=9)
fig.colorbar(im, ax=axes[5], shrink=0.8)
for ax in axes:
    ax.set(xticks=[], yticks=[])
show(fig, "03_polyphase_photo")

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
# Written out in NumPy, the v2 unfold is one reshape that splits each side into (patch row,
# pixel row) and one transpose that brings the pixel position (r0, c0) forward; its backward
# undoes them in the reverse order — the inverse transpose, then the inverse reshape:
#
# ```
# x (B, C, H, W) -> (B, C, H/2, 2, W/2, 2) -> transpose -> (B, C, 2, 2, H/2, W/2) -> (B, C, P, N)
# ```

# %%
def unfold_v2_by_hand(x):
    b_, c_, h_, w_ = x.shape
    t = x.reshape(b_, c_, h_ // 2, 2, w_ // 2, 2).transpose(0, 1, 3, 5, 2, 4)  # (B, C, r0, c0, n_h, n_w)
    return t.reshape(b_, c_, 4, (h_ // 2) * (w_ // 2))


def unfold_v2_by_hand_backward(dt, x_shape):
    b_, c_, h_, w_ = x_shape
    d = dt.reshape(b_, c_, 2, 2, h_ // 2, w_ // 2).transpose(0, 1, 4, 2, 5, 3)  # the inverse transpose
    return d.reshape(x_shape)


xs_ = rng.standard_normal((2, 3, 4, 6))
assert np.array_equal(unfold_v2_by_hand(xs_), F.unfold_v2(xs_))
g_t = rng.standard_normal(F.unfold_v2(xs_).shape)
num, idx = numeric_gradient(lambda: unfold_v2_by_hand(xs_), xs_, g_t)
err = relative_error(unfold_v2_by_hand_backward(g_t, xs_.shape).reshape(-1)[idx], num)
print(f"unfold_v2 by hand == npvit; its hand-written backward vs finite differences: {err:.1e}")
assert err < 1e-8

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
# whose row `i` holds the weights of the one or two input pixels next to where output pixel `i`
# samples, so its backward is the adjoint `A_h^T dy A_w`. Output pixel `i` samples the input
# at position
#
# * `align_corners=False`: `src = (i + 0.5) * in / out - 0.5`, clamped to [0, in - 1] (pixel
#   *centres* line up);
# * `align_corners=True`: `src = i * (in - 1) / (out - 1)` (the *corner* pixels line up).
#
# Going 7 -> 8, rows 0 and 7 of both matrices hold a single 1: with `align_corners=False` their
# positions -0.06 and 6.06 are clamped onto pixels 0 and 6, and with `True` they fall exactly
# on them. Every other row has two non-zeros.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for ax, align in zip(axes, (False, True)):
    a = F.interpolation_matrix(7, 8, align_corners=align)
    assert np.allclose(a.sum(axis=1), 1.0)              # every output is a weighted average
    assert list((a > 0).sum(axis=1)) == [1, 2, 2, 2, 2, 2, 2, 1]
    ax.imshow(a, cmap="magma")
    ax.set(title=f"7 -> 8, align_corners={align}", xlabel="input pixel", ylabel="output pixel")
    for (i, j), v in np.ndenumerate(a):
        if v > 0:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="k" if v > 0.5 else "w")
show(fig, "03_resize_weights")

# %% [markdown]
# ## Where the samples land, on a real 7x7 map
#
# A 224x224 photo reaches the last MobileViT block as a 7x7 map. Below, both networks take
# the Grace Hopper photo at 224x224 (random weights: the geometry does not depend on them).
# The drawing puts the 8x8 sample points of the resize (dots) on the 7x7 map that MobileViTv2's
# last block receives (pixel centres at integer coordinates): with `align_corners=False` the
# outer samples are clamped onto the border pixels and the grid is evenly spaced in between;
# with `True` the corners coincide and the spacing is 6/7 of a pixel. Each sample's position
# is the weighted average `sum_j A[i, j] j` of its row of the interpolation matrix, checked
# against the formulas above.

# %%
photo224 = preprocess(load_image(example_image_path()), "cvnets-v2", crop_size=224)[None]
v1 = npvit.create_model("mobilevit_xxs").eval()
v2 = npvit.create_model("mobilevitv2_050").eval()
with npvit.nn.no_grad():
    feats_v1 = v1.forward_features(photo224)
    feats_v2 = v2.forward_features(photo224)
print("feature map sides at output strides 2..32, 224x224 input:")
print("  v1:", {s_: f.shape[-1] for s_, f in feats_v1.items()})
print("  v2:", {s_: f.shape[-1] for s_, f in feats_v2.items()})
assert feats_v1[32].shape[-1] == 7 and feats_v2[32].shape[-1] == 8   # v1 resizes back, v2 does not

with npvit.nn.no_grad():
    x16 = v2.stages[3].forward(v2.stages[2].forward(v2.stages[1].forward(
        v2.stages[0].forward(v2.stem.forward(photo224)))))
    block_in = v2.stages[4][0].forward(x16)                    # the inverted residual: 7x7
assert block_in.shape[-1] == 7
channel = block_in[0, np.argmax(block_in[0, :, 1:-1, 1:-1].std(axis=(1, 2)))]  # most varied inside

fig, axes = plt.subplots(2, 2, figsize=(8.5, 8))
for col, align in enumerate((False, True)):
    a = F.interpolation_matrix(7, 8, align_corners=align)
    positions = a @ np.arange(7)
    i = np.arange(8)
    formula = (i * 6 / 7 if align else np.clip((i + 0.5) * 7 / 8 - 0.5, 0, 6))
    assert np.allclose(positions, formula)
    ax = axes[0, col]
    ax.imshow(channel, cmap="Greys_r", alpha=0.8)
    for edge in np.arange(-0.5, 7):                             # pixel boundaries
        ax.axhline(edge, color="w", lw=0.6)
        ax.axvline(edge, color="w", lw=0.6)
    gx, gy = np.meshgrid(positions, positions)
    ax.scatter(gx, gy, s=18, color="crimson", edgecolor="w", linewidth=0.5, label="8x8 samples")
    ax.set(title=f"7x7 block input, align_corners={align}", xticks=range(7), yticks=range(7),
           xlabel="samples at " + " ".join(f"{v:.2f}" for v in positions))
    ax.legend(loc="upper right", fontsize=7)
    resized, _ = F.resize_bilinear_forward(channel[None, None].astype(np.float64), (8, 8), align)
    axes[1, col].imshow(resized[0, 0], cmap="Greys_r", alpha=0.8)
    axes[1, col].set(title=f"resized to 8x8 ({'v1' if not align else 'v2'}'s convention)",
                     xticks=range(8), yticks=range(8))
show(fig, "03_resize_samples")

# %% [markdown]
# The same path, step by step on that input, against the blocks themselves: v1 resizes the
# 1x1 conv's output 7 -> 8 (`align_corners=False`), runs the transformer on (4, 16, d) tokens,
# folds and resizes 8 -> 7; v2 resizes its input 7 -> 8 (`align_corners=True`) and stays 8x8.

# %%
with npvit.nn.no_grad():
    x16_v1 = v1.stages[3].forward(v1.stages[2].forward(v1.stages[1].forward(
        v1.stages[0].forward(v1.stem.forward(photo224)))))
    in_v1 = v1.stages[4][0].forward(x16_v1)
    blk1 = v1.stages[4][1]
    y = blk1.conv_1x1.forward(blk1.conv_kxk.forward(in_v1))
    y8, _ = F.resize_bilinear_forward(y, (8, 8), align_corners=False)
    tokens = F.unfold_v1(y8)
    y8 = F.fold_v1(blk1.norm.forward(blk1.transformer.forward(tokens)), (8, 8))
    y7, _ = F.resize_bilinear_forward(y8, (7, 7), align_corners=False)
    out_v1 = blk1.conv_fusion.forward(np.concatenate([in_v1, blk1.conv_proj.forward(y7)], axis=1))
    assert np.allclose(out_v1, blk1.forward(in_v1), atol=1e-5)
    print(f"v1: {in_v1.shape} -> conv -> {y.shape} -> resize {y8.shape} -> tokens {tokens.shape}"
          f" -> fold, resize {y7.shape} -> {out_v1.shape}")

    blk2 = v2.stages[4][1]
    x8, _ = F.resize_bilinear_forward(block_in, (8, 8), align_corners=True)
    t = F.unfold_v2(blk2.conv_1x1.forward(blk2.conv_kxk.forward(x8)))
    out_v2 = blk2.conv_proj.forward(F.fold_v2(blk2.norm.forward(blk2.transformer.forward(t)), (8, 8)))
    assert np.allclose(out_v2, blk2.forward(block_in), atol=1e-5)
    print(f"v2: {block_in.shape} -> resize {x8.shape} -> tokens {t.shape} -> {out_v2.shape}")

# %% [markdown]
# ### Exercise 1: the interpolation matrix from the sample positions
#
# Write `interpolation_matrix(n_in, n_out, align_corners)` returning the (n_out, n_in) matrix:
# compute each output's source position with the formula for its convention (clamp it into
# [0, n_in - 1]), then give the input pixels `floor(src)` and `floor(src) + 1` the weights
# `1 - frac` and `frac` (the second one only if it exists). The checker compares with npvit's
# matrix for growing and shrinking sizes, and with `F.interpolate` semantics through npvit.


# %%
def interpolation_matrix(n_in, n_out, align_corners):
    """-> A (n_out, n_in) with A @ v = v resampled bilinearly to n_out samples."""
    raise NotImplementedError


# %%
def check_interpolation_matrix(candidate):
    for n_in, n_out in ((7, 8), (8, 7), (3, 10), (5, 5), (16, 4)):
        for align in (False, True):
            mine = np.asarray(candidate(n_in, n_out, align))
            ref = F.interpolation_matrix(n_in, n_out, align)
            assert mine.shape == ref.shape, f"{n_in} -> {n_out}: shape {mine.shape}, not {ref.shape}"
            err = np.abs(mine - ref).max()
            assert err < 1e-12, f"{n_in} -> {n_out}, align_corners={align}: off by {err:.1e}"


exercises.check(interpolation_matrix, check_interpolation_matrix)

# %% [markdown]
# ### Exercise 2: the backward of the resize
#
# Write `resize_backward(dy, in_hw, align_corners)`: the gradient with respect to the input of
# `y = A_h x A_w^T` for x (N, C, H, W), built from `F.interpolation_matrix`. The checker
# compares with npvit's `resize_bilinear_backward` and with finite differences of the forward.


# %%
def resize_backward(dy, in_hw, align_corners):
    """dy: (N, C, H_out, W_out) -> dx: (N, C, H, W) with (H, W) = in_hw."""
    raise NotImplementedError


# %%
def check_resize_backward(candidate):
    for align in (False, True):
        xs = rng.standard_normal((1, 2, 7, 5))
        y, cache = F.resize_bilinear_forward(xs, (8, 9), align_corners=align)
        up = rng.standard_normal(y.shape)
        mine = candidate(up, (7, 5), align)
        ref = F.resize_bilinear_backward(up, cache)
        assert np.shape(mine) == ref.shape, f"dx has shape {np.shape(mine)}, not {ref.shape}"
        err = relative_error(mine, ref)
        assert err < 1e-9, f"dx differs from npvit (align_corners={align}): {err:.1e}"
        num, idx = numeric_gradient(lambda: F.resize_bilinear_forward(xs, (8, 9), align)[0], xs, up)
        err = relative_error(np.asarray(mine).reshape(-1)[idx], num)
        assert err < 1e-5, f"dx differs from finite differences (align_corners={align}): {err:.1e}"


exercises.check(resize_backward, check_resize_backward)

# %%
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
# its backward; each sequence is a stride-2 polyphase sub-image. Odd sides are resized: v1
# around the transformer (and back), v2 at the block input (and never back).
# Next: the attention that runs over those sequences.
