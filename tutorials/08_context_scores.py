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
# `npvit.viz` does it in a few lines; this tutorial first builds one map by hand.

# %%
import numpy as np

import npvit
from npvit import functional as F
from npvit import viz, weights
from npvit.data import default_pipeline, example_image_path, load_image, preprocess
from npvit.viz.figures import display_image, score_map_figure
from tutorial_setup import FAST, plt, show

NAME = "mobilevitv2_050"

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

fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
image_rgb = display_image(x, npvit.data.get_pipeline(default_pipeline(NAME)).channel_order)
panels = [(image_rgb, "input", "equal"), (r.weights[0, 0], "1. scores (P, N)", "auto"),
          (on_grid, "2. pixel-shuffled (2n_h, 2n_w)", "equal"),
          (viz.colorize(by_hand), "3-4. normalised, upsampled, jet", "equal")]
for ax, (picture, title, aspect) in zip(axes, panels):
    ax.imshow(picture, aspect=aspect, interpolation="nearest")
    ax.set(title=title, xticks=[], yticks=[])
show(fig, "08_score_map_steps")

# %% [markdown]
# ## The paper's Fig. 5: one map per output stride
#
# `score_map_figure` draws the input and the last layer's map of each block, here laid over
# the photo. In the paper (trained weights) the OS 8 scores pick out edges and fine detail, and
# the deeper blocks concentrate on the object. `npvit scoremap IMAGE --model mobilevitv2_050`
# writes the same figure from the command line (and `--layer all` every layer).

# %%
fig = score_map_figure(image_rgb, maps, f"{NAME} context scores ({kind} weights)", overlay=True)
show(fig, "08_context_scores")
assert [m.stride for m in maps] == [8, 16, 32]
for m in maps:
    assert m.heatmap.shape == (crop, crop) and m.heatmap.min() == 0 and m.heatmap.max() == 1

# %% [markdown]
# Every layer, not only the last of each block:

# %%
every_layer = viz.score_maps(records, (crop, crop), per_layer=True)
fig = score_map_figure(image_rgb, every_layer, f"{NAME}: every layer ({kind} weights)")
show(fig, "08_context_scores_all_layers")
assert len(every_layer) == 9

# %% [markdown]
# **Summary.** A context score map is the softmax `c_s` of one separable-attention layer,
# folded back onto the feature map with the same permutation the block uses, normalised and
# upsampled to the image. One forward pass gives all nine; the last layer of each block makes
# the paper's Fig. 5. That completes the path from a convolution to a trained MobileViTv2
# explaining itself.
