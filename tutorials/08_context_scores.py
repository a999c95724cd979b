# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 8. Context score maps: where MobileViTv2 looks
#
# Separable self-attention (tutorial 4) computes, in every transformer layer, one **context
# score** per token: `c_s = softmax_N(i)`, for each of the P = 4 pixel positions a probability
# distribution over the N patches. A token with a high score contributes much to the context
# vector that every token then receives. Drawn on the image, the scores show what each layer
# gathers its global context from — the MobileViTv2 paper's Fig. 5, one map per output
# stride (8, 16 and 32; the three MobileViTv2 blocks).
#
# `npvit.viz` does it in a few lines; this tutorial first builds one map by hand, derives the
# backward of the map-making steps, and ends with MobileViT v1's multi-head attention maps
# on the same photo.

# %%
import numpy as np
from matplotlib.ticker import FuncFormatter

import npvit
from npvit import functional as F
from npvit import viz, weights
from npvit.data import default_pipeline, example_image_path, load_image, preprocess
from npvit.viz.figures import attention_figure, display_image, score_map_figure
from npvit.gradcheck import relative_error   # max|a-b| / max(|a|, |b|), tutorial 4
from tutorial_setup import Exercises, FAST, plt, show

NAME = "mobilevitv2_050"
exercises = Exercises("08")          # solutions: tutorials/solutions/08_context_scores.py

# %% [markdown]
# ## A model and an image
#
# The maps mean something only for trained weights: with the official weights in npvit's cache
# (tutorial 7: `npvit download mobilevitv2_050`) they are used; otherwise random weights show
# the mechanics (and the maps show whatever an untrained network happens to do).

# %%
have_official = ((weights.cache_dir() / f"{NAME}.npz").is_file()
                 or (weights.cache_dir() / weights.official(NAME).file_name).is_file())
model = npvit.create_model(NAME, pretrained=have_official, seed=0).eval()
kind = "official" if have_official else "random"
print(f"{NAME} with {kind} weights")

photo = load_image(example_image_path())
crop = 128 if FAST else 256
x = preprocess(photo, default_pipeline(NAME), crop_size=crop)[None]       # (1, 3, crop, crop)
print("input", x.shape)

# %% [markdown]
# ## Capture the scores in one forward pass
#
# Each `SeparableSelfAttention` keeps a reference to the context scores of its last forward
# pass; `npvit.viz.run_with_capture` runs the model once (eval mode, no gradients) and copies
# them out, one record per transformer layer: 2 + 4 + 3 = 9 layers. Capturing only reads
# what the forward pass computed anyway, so the logits are bit-for-bit those of a plain call
# (under `no_grad`, as here).

# %%
logits, records = viz.run_with_capture(model, x)
with npvit.nn.no_grad():
    assert np.array_equal(logits, model(x))
for r in records:
    print(f"stage {r.stage} (output stride {r.stride:2d}) layer {r.layer + 1}/{r.depth}: "
          f"scores {r.weights.shape} = (B, 1, P, N) on a {r.grid[0]}x{r.grid[1]} patch grid")
    # each pixel position's scores are a softmax over the N patches
    assert np.allclose(r.weights.sum(axis=-1), 1.0)
assert len(records) == 9 and [r.stride for r in records] == [8] * 2 + [16] * 4 + [32] * 3

# %% [markdown]
# ## One map by hand
#
# Take the last layer of the output-stride-8 block. Its scores are (1, 1, P, N). To put each
# score where its token sits in the feature map:
#
# 1. **pixel-shuffle** (P, N) back to (2 n_h, 2 n_w): pixel position p = (a, b) of patch
#    (i, j) goes to (2i + a, 2j + b). That is exactly the block's own fold (tutorial 3).
# 2. **min-max normalise** to [0, 1] — the scores are a softmax over N and mostly tiny;
# 3. **upsample** to the input size with nearest neighbour (each feature pixel covers
#    `stride x stride` input pixels);
# 4. colour with the jet colormap.
#
# These are the steps of ml-cvnets' `visualize_context_scores`, which the authors point to for
# the paper's figure.

# %%
r = next(r for r in records if r.stride == 8 and r.layer == r.depth - 1)
n_h, n_w = r.grid
on_grid = F.fold_v2(r.weights, (2 * n_h, 2 * n_w))[0, 0]                  # (2 n_h, 2 n_w)
normalised = (on_grid - on_grid.min()) / (on_grid.max() - on_grid.min())
rows = np.arange(crop) * on_grid.shape[0] // crop
cols = np.arange(crop) * on_grid.shape[1] // crop
by_hand = normalised[rows[:, None], cols[None, :]]                         # (crop, crop)

maps = viz.score_maps(records, (crop, crop))                               # last layer per block
ours = next(m for m in maps if m.stride == 8)
assert np.allclose(ours.values, on_grid) and np.allclose(ours.heatmap, by_hand)
print(f"OS 8 map by hand == npvit.viz: scores on a {on_grid.shape} grid -> heat map {by_hand.shape}")

fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), layout="constrained")
image_rgb = display_image(x, npvit.data.get_pipeline(default_pipeline(NAME)).channel_order)
n_tokens = r.weights.shape[-1]
axes[0].imshow(image_rgb)
axes[0].set(title="input", xticks=[], yticks=[])
# scores times N: 1 is a uniform share (untrained weights stay close to it)
for ax, picture, title, aspect, cmap, label in (
        (axes[1], r.weights[0, 0] * n_tokens, "1. scores (P, N)", "auto", "viridis", "score x N (1: uniform)"),
        (axes[2], on_grid * n_tokens, "2. pixel-shuffled (2n_h, 2n_w)", "equal", "viridis", "score x N (1: uniform)"),
        (axes[3], by_hand, "3-4. normalised, upsampled, jet", "equal", "jet", "min-max normalised score")):
    im = ax.imshow(picture, aspect=aspect, interpolation="nearest", cmap=cmap)
    fig.colorbar(im, ax=ax, label=label, shrink=0.85, format=FuncFormatter(lambda v, _: f"{v:.6g}"))
    ax.set(title=title, xticks=[], yticks=[])
show(fig, "08_score_map_steps.png")

# %% [markdown]
# ## The paper's Fig. 5: one map per output stride
#
# `score_map_figure` draws the input and the last layer's map of each block, here laid over
# the photo. In the paper (trained weights) the OS 8 scores pick out edges and fine detail, and
# the deeper blocks concentrate on the object. `npvit scoremap IMAGE --model mobilevitv2_050`
# writes the same figure from the command line (and `--layer all` every layer).

# %%
def add_colourbar(fig, label="min-max normalised score"):
    """One colour bar for every jet panel of an npvit.viz figure (they share the 0..1 scale)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cax = fig.add_axes([0.995, 0.1, 0.012, 0.7])
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), cax=cax, label=label)
    return fig


fig = add_colourbar(score_map_figure(image_rgb, maps, f"{NAME} context scores ({kind} weights)",
                                     overlay=True))
show(fig, "08_context_scores.png")
assert [m.stride for m in maps] == [8, 16, 32]
for m in maps:
    assert m.heatmap.shape == (crop, crop) and m.heatmap.min() == 0 and m.heatmap.max() == 1

# %% [markdown]
# Every layer, not only the last of each block:

# %%
every_layer = viz.score_maps(records, (crop, crop), per_layer=True)
fig = add_colourbar(score_map_figure(image_rgb, every_layer, f"{NAME}: every layer ({kind} weights)"))
show(fig, "08_context_scores_all_layers.png")
assert len(every_layer) == 9

# %% [markdown]
# ## The map's backward: which scores does a region of the map come from?
#
# Steps 1 and 3 are linear in the scores: the pixel shuffle is a **permutation** and the
# nearest-neighbour upsampling **copies** each feature pixel to a `s x s` block of the image
# (s = crop / (2 n_h)). The backward of a permutation is the inverse permutation (here the
# block's own `unfold_v2`, tutorial 3), and the backward of a copy is a **sum** over the
# copies: `d values[i, j] = sum of d heat over the s x s block of (i, j)`. With it we can ask,
# for example, how much the mean of the raw (unnormalised) map over a box depends on each of
# the P x N scores — without touching the model. Checked with finite differences:

# %%
def raw_map_forward(scores, grid, size):
    """(1, 1, P, N) scores -> (size, size) map: pixel shuffle, nearest upsample (no normalisation)."""
    values = F.fold_v2(scores, (2 * grid[0], 2 * grid[1]))[0, 0]             # (2 n_h, 2 n_w)
    s = size // values.shape[0]
    return np.repeat(np.repeat(values, s, axis=0), s, axis=1)


def raw_map_backward(d_map, grid):
    """(size, size) gradient -> (1, 1, P, N): sum each s x s block, then un-shuffle."""
    n = 2 * grid[0]
    s = d_map.shape[0] // n
    d_values = d_map.reshape(n, s, n, s).sum(axis=(1, 3))                   # adjoint of the copy
    return F.unfold_v2(d_values[None, None])                                # adjoint of the fold


box = np.zeros((crop, crop))
box[crop // 4: crop // 2, crop // 4: crop // 2] = 1 / (crop // 4) ** 2     # d(mean over the box)/d map
scores = r.weights.astype(np.float64).copy()
d_scores = raw_map_backward(box, r.grid)
num, idx = npvit.gradcheck.numeric_gradient(lambda: raw_map_forward(scores, r.grid, crop), scores, box,
                                            max_coords=40)
print(f"map backward vs finite differences: {relative_error(d_scores.reshape(-1)[idx], num):.1e}; "
      f"{np.count_nonzero(d_scores)} of the {scores.size} scores reach the box")
assert relative_error(d_scores.reshape(-1)[idx], num) < 1e-8
step_px = crop // on_grid.shape[0]                 # the map repeats each score step_px times
assert np.array_equal(raw_map_forward(scores, r.grid, crop)[::step_px, ::step_px], on_grid)

# %% [markdown]
# ## MobileViT v1: multi-head attention maps on the photo
#
# MobileViT v1 has no single score per token: each of its MHA layers has, per head and per
# pixel position, an (N x N) matrix whose row n says how patch n mixes all N patches
# (tutorial 4). `npvit.viz.attention_maps` picks the **query patch** under a chosen pixel,
# takes its row in every head, places the N weights on the patch grid with the same pixel
# shuffle as above (the 4 pixel positions of a patch are 4 separate sequences, so each of them
# contributes its own row), and also averages over heads and queries the attention each patch
# **receives**. Here the query is a point on the face, for the last layer of each v1 block
# (`mobilevit_xxs`: official weights when cached, random otherwise — random heads show only
# the mechanics).

# %%
NAME_V1 = "mobilevit_xxs"
have_official_v1 = ((weights.cache_dir() / f"{NAME_V1}.npz").is_file()
                    or (weights.cache_dir() / weights.official(NAME_V1).file_name).is_file())
model_v1 = npvit.create_model(NAME_V1, pretrained=have_official_v1, seed=0).eval()
kind_v1 = "official" if have_official_v1 else "random"
x_v1 = preprocess(photo, default_pipeline(NAME_V1), crop_size=crop)[None]
point = (0.3 * crop, 0.5 * crop)                              # (y, x): on the face
v1_maps = viz.attention_maps(model_v1, x_v1, point=point)
for m in v1_maps:
    print(f"OS {m.stride}: query patch {m.query} of a {m.heads.shape[1] // 2}x{m.heads.shape[2] // 2} grid, "
          f"{m.heads.shape[0]} heads, maps {m.head_heatmaps.shape}")
    # per head, each of the P = 4 pixel positions' rows is a softmax over the N patches
    assert np.allclose(m.heads.sum(axis=(1, 2)), 4.0)
image_v1 = display_image(x_v1, npvit.data.get_pipeline(default_pipeline(NAME_V1)).channel_order)
fig = add_colourbar(attention_figure(image_v1, v1_maps, f"{NAME_V1} attention from the red patch "
                                     f"({kind_v1} weights)", overlay=True),
                    label="min-max normalised attention")
show(fig, "08_v1_attention_maps.png")
assert [m.stride for m in v1_maps] == [8, 16, 32]

# %% [markdown]
# ## Exercises
#
# Fill in a function and run the cell after it (solutions, read them last:
# `tutorials/solutions/08_context_scores.py`).
#
# ### Exercise 8.1: the pixel shuffle, as loops
#
# Write `pixel_shuffle_loops(scores, grid)`: scores (P, N) of one layer, P = 4 pixel
# positions p = 2a + b of a 2x2 patch, N = n_h * n_w patches in row-major order; return the
# (2 n_h, 2 n_w) map with pixel position (a, b) of patch (i, j) at (2i + a, 2j + b). Four
# loops, no reshapes: the checker compares with `npvit.viz.pixel_shuffle`.


# %%
def pixel_shuffle_loops(scores, grid):
    """scores: (4, N), grid: (n_h, n_w) with N = n_h * n_w -> (2 n_h, 2 n_w)."""
    raise NotImplementedError


# %%
def check_pixel_shuffle_loops(candidate):
    r = np.random.default_rng(81)
    for grid in ((3, 5), (2, 2)):
        scores = r.random((4, grid[0] * grid[1]))
        got = candidate(scores.copy(), grid)
        ref = viz.pixel_shuffle(scores[None], grid)[0]
        assert np.shape(got) == ref.shape, f"the map must be {ref.shape}, got {np.shape(got)}"
        assert np.array_equal(got, ref), f"differs from npvit.viz.pixel_shuffle on a {grid} grid"


exercises.check(pixel_shuffle_loops, check_pixel_shuffle_loops)

# %% [markdown]
# ### Exercise 8.2: the backward of the min-max normalisation
#
# Step 2 is the one non-linear step: `out = (v - min v) / (max v - min v)`. Write its backward
# `min_max_normalise_backward(d_out, v)` for a map v with one smallest and one largest entry.
# Each output depends on its own entry and, through min and max, on two more: besides
# `d_out / R` (R = max - min), the position of the minimum and the position of the maximum
# receive one extra term each, summed over all outputs. The checker compares with finite differences of
# `npvit.viz.min_max_normalise`.


# %%
def min_max_normalise_backward(d_out, v):
    """d_out, v: (h, w) -> d_v (h, w)."""
    raise NotImplementedError


# %%
def check_min_max_normalise_backward(candidate):
    r = np.random.default_rng(82)
    v, d_out = r.random((5, 6)), r.standard_normal((5, 6))
    got = candidate(d_out.copy(), v.copy())
    assert np.shape(got) == v.shape, f"the gradient must be {v.shape}, got {np.shape(got)}"
    num, _ = npvit.gradcheck.numeric_gradient(lambda: viz.min_max_normalise(v), v, d_out)
    err = relative_error(np.reshape(got, -1), num)
    assert err < 1e-7, f"differs from finite differences of npvit.viz.min_max_normalise ({err:.1e}); " \
                       "did the min and the max get their terms?"


exercises.check(min_max_normalise_backward, check_min_max_normalise_backward)

# %% [markdown]
# **Summary.** A context score map is the softmax `c_s` of one separable-attention layer,
# folded back onto the feature map with the same permutation the block uses, normalised and
# upsampled to the image. One forward pass gives all nine; the last layer of each block makes
# the paper's Fig. 5. The map's own backward is a sum and an un-shuffle; v1's multi-head
# attention gives one map per head for a chosen query patch. That completes the path from a
# convolution to a trained MobileViT explaining itself.
