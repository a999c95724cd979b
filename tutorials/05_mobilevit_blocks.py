# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 5. The MobileViT block (v1) and the MobileViTv2 block
#
# The pieces of tutorials 1-4 assemble into the block that gives MobileViT its name: a
# convolution for **local** structure, unfold, a transformer for **global** structure, fold,
# and convolutions back. This tutorial runs one block of each version forward step by step
# with the shapes printed (inside the attention too), writes both backward passes out and
# checks them with finite differences, and shows that one output pixel really depends on the
# whole input — of one block, and of the whole network from its first MobileViT block on.
# (`npvit/nn/blocks.py`; the MobileViT paper's Fig. 1b and the MobileViTv2 paper's Fig. 2b.)

# %%
import numpy as np

import npvit
from npvit import functional as F
from npvit.gradcheck import numeric_gradient, relative_error   # max|a-b| / max(|a|, |b|), tutorial 4
from npvit.nn.blocks import MobileViTBlock, MobileViTBlockV2
from tutorial_setup import Exercises, FAST, optional_torch, plt, show, skip_without_torch

npvit.nn.manual_seed(0)
rng = np.random.default_rng(0)
exercises = Exercises("05")          # solutions: tutorials/solutions/05_mobilevit_blocks.py
C, D, DEPTH = 16, 24, 2              # block channels, transformer width d, transformer layers
SIDE = 8 if FAST else 16             # feature map side
HEADS = 4


def randomise_norms(block):
    """Random BatchNorm statistics and norm affines, so no layer is close to an identity."""
    for name, m in block.named_modules():
        if isinstance(m, npvit.nn.BatchNorm2d):
            m.running_mean = rng.standard_normal(m.running_mean.shape) * 0.2
            m.running_var = rng.random(m.running_var.shape) + 0.5
        if isinstance(m, (npvit.nn.BatchNorm2d, npvit.nn.LayerNorm, npvit.nn.GroupNorm)):
            m.weight.data = rng.random(m.weight.shape) + 0.5
            m.bias.data = rng.standard_normal(m.bias.shape) * 0.2
    return block


# %% [markdown]
# ## MobileViT v1 block, forward, step by step
#
# From the MobileViT paper (Section 3.1): with input (B, C, H, W),
#
# 1. *local representation*: 3x3 conv (BN, SiLU), then a 1x1 conv to the transformer width d;
# 2. *unfold* into P = 2x2 sequences of N = HW/4 tokens, layout (B*P, N, d) (tutorial 3);
# 3. L pre-norm transformer layers, `x + MHA(LN(x))`, `x + FFN(LN(x))` (tutorial 4), then LN;
# 4. *fold* back to (B, d, H, W), 1x1 conv back to C channels (BN, SiLU);
# 5. *fusion*: concatenate with the block input and mix with a 3x3 conv (BN, SiLU).
#
# We call the block's own children in that order, printing each shape, and compare the result
# with `block.forward`. Inside the first transformer layer the attention is opened up: with a
# batch of B = 2 and P = 4 pixel positions the attention sees B*P = 8 sequences, and each head
# builds an (N x N) score matrix for its sequence of N patches.

# %%
v1 = randomise_norms(MobileViTBlock(C, D, DEPTH, num_heads=HEADS, dtype=np.float64)).eval()
x = rng.standard_normal((2, C, SIDE, SIDE))


def shape_of(step, a):
    print(f"  {step:48s} {str(a.shape):>18s}")
    return a


with npvit.nn.no_grad():
    print("MobileViT v1 block")
    y = shape_of("input x", x)
    y = shape_of("conv_kxk: 3x3 conv, BN, SiLU", v1.conv_kxk(y))
    y = shape_of("conv_1x1: 1x1 conv C -> d", v1.conv_1x1(y))
    t = shape_of("unfold: (B*P, N, d)", F.unfold_v1(y))
    # inside the first layer's attention: P = 4 sequences per image, each of N patches
    attn = v1.transformer[0].attn
    a = shape_of("  transformer.0.norm1: LayerNorm", v1.transformer[0].norm1(t))
    qkv = shape_of("  attn.qkv: [q | k | v] (B*P, N, 3d)", a @ attn.qkv.weight.data.T + attn.qkv.bias.data)
    q, key, v = (z.reshape(len(z), -1, HEADS, D // HEADS).transpose(0, 2, 1, 3)
                 for z in np.split(qkv, 3, axis=-1))
    shape_of("  q, k, v split into heads (B*P, h, N, d/h)", q)
    scores = shape_of("  scores q k^T / sqrt(d/h) (B*P, h, N, N)", q @ key.swapaxes(-1, -2) / np.sqrt(D // HEADS))
    n_patches = (SIDE // 2) ** 2
    assert scores.shape == (2 * 4, HEADS, n_patches, n_patches)
    shape_of("  softmax(scores) v (B*P, h, N, d/h)", F.softmax_forward(scores)[0] @ v)
    for i, layer in enumerate(v1.transformer):
        t = shape_of(f"transformer.{i}: LN, MHA, +, LN, FFN, +", layer(t))
    t = shape_of("norm: LayerNorm", v1.norm(t))
    y = shape_of("fold: (B, d, H, W)", F.fold_v1(t, (SIDE, SIDE)))
    y = shape_of("conv_proj: 1x1 conv d -> C, BN, SiLU", v1.conv_proj(y))
    y = shape_of("concat with the input: 2C channels", np.concatenate([x, y], axis=1))
    y = shape_of("conv_fusion: 3x3 conv 2C -> C, BN, SiLU", v1.conv_fusion(y))
    assert np.allclose(y, v1(x))
print("step by step == MobileViTBlock.forward")

# %% [markdown]
# ## MobileViTv2 block, forward, step by step
#
# MobileViTv2 (Section 3.2 and Fig. 2b of its paper) makes the block lighter:
#
# 1. local representation with a **depthwise** 3x3 conv (BN, SiLU), then 1x1 to d;
# 2. unfold to the channels-first layout (B, d, P, N);
# 3. L layers of `x + SepAttn(GN(x))`, `x + FFN(GN(x))`, with GroupNorm(1) (tutorial 2) and
#    the FFN as two 1x1 convs; then GroupNorm(1);
# 4. fold, then a 1x1 conv back to C channels with BN and **no** activation;
# 5. no concatenation, no fusion conv, no shortcut.

# %%
v2 = randomise_norms(MobileViTBlockV2(C, D, DEPTH, dtype=np.float64)).eval()

with npvit.nn.no_grad():
    print("MobileViTv2 block")
    y = shape_of("input x", x)
    y = shape_of("conv_kxk: depthwise 3x3, BN, SiLU", v2.conv_kxk(y))
    y = shape_of("conv_1x1: 1x1 conv C -> d", v2.conv_1x1(y))
    t = shape_of("unfold: (B, d, P, N)", F.unfold_v2(y))
    for i, layer in enumerate(v2.transformer):
        t = shape_of(f"transformer.{i}: GN, SepAttn, +, GN, FFN, +", layer(t))
    t = shape_of("norm: GroupNorm(1)", v2.norm(t))
    y = shape_of("fold: (B, d, H, W)", F.fold_v2(t, (SIDE, SIDE)))
    y = shape_of("conv_proj: 1x1 conv d -> C, BN", v2.conv_proj(y))
    assert np.allclose(y, v2(x))
print("step by step == MobileViTBlockV2.forward")
print(f"parameters: v1 block {v1.num_parameters():,}, v2 block {v2.num_parameters():,}")
assert v2.num_parameters() < v1.num_parameters()

# %% [markdown]
# ## Backward through a block, written out
#
# The backward runs the same list in reverse, each child's `backward` taking the gradient of
# its output and returning the gradient of its input (and adding into its parameters'
# `.grad`). Three joints need care, everything else is a layer's own backward:
#
# * **fold/unfold** swap roles (each is the other's adjoint, tutorial 3): the backward of
#   `fold` is `unfold` and vice versa;
# * the **residuals** inside each transformer layer: `x + f(x)` sends `dy` both straight
#   through and through `f`, and the two gradients add (exercise 5.1 below writes that
#   layer's backward);
# * v1's **concatenation**: the fusion conv's input gradient splits into the first C
#   channels (back to the block input directly) and the rest (back through the transformer
#   path); the two contributions to `dx` add.
#
# Here are both block backward passes, as the reader would write them (for even sides; at odd
# sides the block also resizes, and the resize's backward joins the list).

# %%
def v1_block_backward_by_hand(block, dout, x_shape):
    """dout (B, C, H, W) -> dx; fills the parameters' grads, like block.backward."""
    c, hw = x_shape[1], x_shape[2:]
    dcat = block.conv_fusion.backward(dout)              # (B, 2C, H, W)
    dx_shortcut, dy = dcat[:, :c], dcat[:, c:]           # concatenation: split the channels
    dy = block.conv_proj.backward(dy)                    # (B, d, H, W)
    dt = block.norm.backward(F.unfold_v1(dy))            # fold's backward is unfold: (B*P, N, d)
    for layer in reversed(list(block.transformer)):      # last layer first
        dt = layer.backward(dt)
    dy = F.fold_v1(dt, hw)                               # unfold's backward is fold: (B, d, H, W)
    dy = block.conv_1x1.backward(dy)                     # (B, C, H, W)
    return block.conv_kxk.backward(dy) + dx_shortcut     # two paths reached x: gradients add


def v2_block_backward_by_hand(block, dout, x_shape):
    """dout (B, C, H, W) -> dx for a MobileViTv2 block (no concatenation, no shortcut)."""
    dt = block.norm.backward(F.unfold_v2(block.conv_proj.backward(dout)))   # (B, d, P, N)
    for layer in reversed(list(block.transformer)):
        dt = layer.backward(dt)
    dy = F.fold_v2(dt, x_shape[2:])                      # (B, d, H, W)
    return block.conv_kxk.backward(block.conv_1x1.backward(dy))


def grads_of(block):
    return {name: p.grad.copy() for name, p in block.named_parameters()}


for name, block, by_hand in (("v1", v1, v1_block_backward_by_hand), ("v2", v2, v2_block_backward_by_hand)):
    block.train()                    # BatchNorm with batch statistics: its full backward (tutorial 2)
    g = rng.standard_normal(block(x).shape)
    block.zero_grad()
    block(x)
    dx_hand, grads_hand = by_hand(block, g, x.shape), grads_of(block)
    block.zero_grad()
    block(x)
    dx_npvit, grads_npvit = block.backward(g), grads_of(block)
    err_params = max(relative_error(grads_hand[n], grads_npvit[n]) for n in grads_npvit)
    print(f"{name} block backward by hand vs block.backward: dx {relative_error(dx_hand, dx_npvit):.0e}, "
          f"every parameter gradient <= {err_params:.0e}")
    assert relative_error(dx_hand, dx_npvit) < 1e-13 and err_params < 1e-13

# %% [markdown]
# And against finite differences: the input gradient and a parameter from each kind of
# layer, still in training mode.

# %%
def check_block(block, by_hand, param_names):
    block.train()
    g = rng.standard_normal(block(x).shape)
    block.zero_grad()
    block(x)
    dx = by_hand(block, g, x.shape)
    coords = 12 if FAST else 40
    forward = lambda: block.forward(x)
    num, idx = numeric_gradient(forward, x, g, max_coords=coords, rng=rng)
    errors = {"input x": relative_error(dx.reshape(-1)[idx], num)}
    params = dict(block.named_parameters())
    for name in param_names:
        p = params[name]
        num, idx = numeric_gradient(forward, p.data, g, max_coords=coords, rng=rng)
        errors[name] = relative_error(p.grad.reshape(-1)[idx], num)
    for name, e in errors.items():
        print(f"  {name:38s} {e:.1e}")
    assert max(errors.values()) < 1e-6


print("v1 block, relative error of the backward by hand vs finite differences")
check_block(v1, v1_block_backward_by_hand,
            ["conv_kxk.conv.weight", "transformer.0.attn.qkv.weight", "transformer.1.mlp.fc1.bias",
             "norm.weight", "conv_proj.bn.bias", "conv_fusion.conv.weight"])
print("v2 block")
check_block(v2, v2_block_backward_by_hand,
            ["conv_kxk.conv.weight", "transformer.0.attn.qkv_proj.weight",
             "transformer.1.norm2.weight", "norm.weight", "conv_proj.conv.weight"])

# %% [markdown]
# ### A puzzle: which parameter is missing?
#
# One parameter is missing from both lists on purpose: the final norm's **bias**
# (`norm.bias`). **Before reading on, predict its gradient in training mode** — and why a
# finite-difference check of it would be meaningless. (Hint: follow a constant added to every
# token of one channel through `fold`, the 1x1 `conv_proj` and the BatchNorm inside it.)
#
# <details><summary>Answer (click)</summary>
#
# Its gradient is exactly zero, up to rounding. The bias adds a constant per channel; the 1x1
# `conv_proj` turns that into a constant per output channel; and the BatchNorm inside
# `conv_proj` subtracts the batch mean of each channel, which removes any constant. The loss
# does not depend on `norm.bias` at all, so a finite difference of it is pure rounding noise
# and a relative error would compare noise with noise. In eval mode BatchNorm uses fixed
# statistics and the bias matters again.
#
# </details>
#
# The cell below checks the answer.

# %%
for name, block in (("v1", v1), ("v2", v2)):
    norm_bias_grad = dict(block.named_parameters())["norm.bias"].grad
    largest_grad = max(np.abs(p.grad).max() for p in block.parameters())
    print(f"{name} norm.bias gradient: max |.| = {np.abs(norm_bias_grad).max():.1e} "
          f"(largest gradient in the block: {largest_grad:.1e})")
    assert np.abs(norm_bias_grad).max() < 1e-12 * largest_grad


# %% [markdown]
# ## Every output pixel sees the whole input
#
# A stack of 3x3 convolutions grows its receptive field by 2 pixels per layer. A MobileViT
# block is global in one step: the 3x3 conv mixes each pixel with its neighbours, and the
# transformer then mixes the same position of every patch. We can *see* it with the backward
# pass: put a gradient of 1 on one output pixel (all channels) and 0 elsewhere; the backward
# returns how much each input pixel affects it. (A 16 x 16 map here even in fast mode: one
# forward and backward of one image is cheap.)
#
# Why does a **bright local core** remain around the pixel? The residual paths. In v1 the
# block input goes straight into the 3x3 fusion conv (the concatenation), so the 3x3
# neighbourhood reaches the output without passing the transformer at all; and inside the
# transformer every layer is `x + f(x)`, so each token keeps an identity path to itself, while
# attention spreads the rest over all N patches with weights of about 1/N each. The third
# panel runs the v1 backward by hand *without* the concatenation's shortcut: outside the
# centre 3x3 nothing changes (the shortcut reaches x only through the 3x3 fusion conv), and a
# 5x5 core still remains — the fusion conv's 3x3 window, the transformer layers' identity
# paths (each token straight back to itself) and conv_kxk's 3x3 window, one after the other.
# The attention adds the floor that covers the whole map. v2 has no concatenation and no
# fusion conv: its core is the depthwise 3x3 window through the identity paths.

# %%
RF_SIDE = 16
x_rf = rng.standard_normal((1, C, RF_SIDE, RF_SIDE))
centre = RF_SIDE // 2
g = np.zeros((1, C, RF_SIDE, RF_SIDE))
g[0, :, centre, centre] = 1.0


def without_shortcut(block, dout, x_shape):
    """v1's backward by hand, dropping the gradient that reaches x through the concatenation."""
    c = x_shape[1]
    dy = block.conv_proj.backward(block.conv_fusion.backward(dout)[:, c:])
    dt = block.norm.backward(F.unfold_v1(dy))
    for layer in reversed(list(block.transformer)):
        dt = layer.backward(dt)
    return block.conv_kxk.backward(block.conv_1x1.backward(F.fold_v1(dt, x_shape[2:])))


maps = {}
for name, module, backward in (
        ("3x3 convolution (conv_kxk)", v1.conv_kxk, lambda m, dout, shape: m.backward(dout)),
        ("MobileViT v1 block", v1, v1_block_backward_by_hand),
        ("v1 block without the shortcut", v1, without_shortcut),
        ("MobileViTv2 block", v2, v2_block_backward_by_hand)):
    module.eval()
    module(x_rf)
    module.zero_grad()
    maps[name] = np.abs(backward(module, g, x_rf.shape)).sum(axis=(0, 1))       # (RF_SIDE, RF_SIDE)

fig, axes = plt.subplots(1, 4, figsize=(16, 4))
for ax, (name, m) in zip(axes, maps.items()):
    im = ax.imshow(np.log10(m + 1e-12), cmap="magma", vmin=-5, vmax=1)
    ax.scatter([centre], [centre], marker="+", s=120, color="cyan")
    ax.set(title=f"{name}\n{np.mean(m > 0):.0%} of the input reaches +", xticks=[], yticks=[])
fig.colorbar(im, ax=axes, label="log10 |d output(+) / d input|", shrink=0.8)
show(fig, "05_receptive_field.png")

core = np.zeros((RF_SIDE, RF_SIDE), bool)
core[centre - 1:centre + 2, centre - 1:centre + 2] = True
core5 = np.zeros((RF_SIDE, RF_SIDE), bool)
core5[centre - 2:centre + 3, centre - 2:centre + 3] = True
for name, m in maps.items():
    print(f"{name:32s} share of the total sensitivity inside the 3x3 core: {m[core].sum() / m.sum():4.0%}, "
          f"the 5x5 core: {m[core5].sum() / m.sum():4.0%} (of the map: {core.mean():.0%} and {core5.mean():.0%})")
assert np.count_nonzero(maps["3x3 convolution (conv_kxk)"]) == 9                  # a 3x3 window
assert np.all(maps["MobileViT v1 block"] > 0) and np.all(maps["MobileViTv2 block"] > 0)
assert np.all(maps["v1 block without the shortcut"] > 0)
# the concatenation's shortcut adds to the 3x3 core only: outside it the two maps are equal
assert np.allclose(maps["MobileViT v1 block"][~core], maps["v1 block without the shortcut"][~core])

# %% [markdown]
# ## The receptive field of the whole network
#
# The same probe on whole networks (`mobilevit_xxs` and `mobilevitv2_050`, random weights)
# shows where the global view begins. Put the unit gradient on the centre pixel of each
# stage's output and run the backward through that stage and everything before it down to
# the image: the stem and the first two stages are convolutions (a window that grows with
# depth: its side is printed below), and from stage 2 on — right after the **first MobileViT
# block**, at output stride 8 — every pixel of the image reaches every output pixel, in both
# versions. Inside the global map the convolutional window of the earlier stages can stay
# brighter (clearly so in v2 at OS 8): the transformer layers' identity paths carry the local
# features through, the attention adds the rest of the image on top.

# %%
def stage_receptive_fields(net, image):
    """{stage name: (H, W) map of sum_c |d centre pixel of that stage's output / d image|}."""
    maps = {}
    for last in range(len(net.stages)):
        features = net.stem.forward(image)
        for stage in net.stages[:last + 1]:
            features = stage.forward(features)
        g = np.zeros_like(features)
        g[0, :, features.shape[2] // 2, features.shape[3] // 2] = 1.0
        for stage in reversed(net.stages[:last + 1]):          # backward: last stage first
            g = stage.backward(g)
        stride = image.shape[2] // features.shape[2]
        maps[f"stages.{last} (OS {stride})"] = np.abs(net.stem.backward(g)).sum(axis=(0, 1))
    return maps


net_side = 64 if FAST else 128
image = rng.random((1, 3, net_side, net_side))
net_maps = {name: stage_receptive_fields(npvit.create_model(name, seed=0).astype(np.float64).eval(), image)
            for name in ("mobilevit_xxs", "mobilevitv2_050")}

fig, axes = plt.subplots(2, 5, figsize=(16, 7.4))
for row, (net_name, maps_of_net) in zip(axes, net_maps.items()):
    for ax, (name, m) in zip(row, maps_of_net.items()):
        im = ax.imshow(np.log10(m / m.max() + 1e-12), cmap="magma", vmin=-6, vmax=0)
        ax.set(title=f"{name}\n{np.mean(m > 0):.0%} of the image", xticks=[], yticks=[])
    row[0].set_ylabel(net_name, fontsize=12)
fig.colorbar(im, ax=axes, label="log10 sensitivity (max = 1)", shrink=0.8)
fig.suptitle(f"{net_side}x{net_side} input: which image pixels reach the centre output pixel "
             "of each stage")
show(fig, "05_network_receptive_field.png")
for net_name, maps_of_net in net_maps.items():
    coverage = [np.mean(m > 0) for m in maps_of_net.values()]
    for (name, m), c in zip(maps_of_net.items(), coverage):
        rows, cols = np.nonzero(m)
        print(f"{net_name} {name}: {c:6.1%} of the image reaches the centre pixel, a window of "
              f"{rows.max() - rows.min() + 1} x {cols.max() - cols.min() + 1} pixels")
    assert coverage[0] < coverage[1] < 1 and all(c == 1 for c in coverage[2:])

# %% [markdown]
# ## The same numbers as timm
#
# timm's `MobileVitBlock` and `MobileVitV2Block` are ports of ml-cvnets' blocks with the same
# parameter names as npvit's, so a state dict moves between them unchanged (here npvit's,
# with its random norm statistics, goes into timm). In training mode and float64, outputs and
# every gradient must agree.

# %%
torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with timm's MobileViT blocks")
else:
    from functools import partial

    from timm.layers import ConvNormAct
    from timm.models.byobnet import LayerFn
    from timm.models.mobilevit import MobileVitBlock, MobileVitV2Block

    # timm builds its blocks from layer factories; MobileViT's use SiLU everywhere
    silu = LayerFn(conv_norm_act=partial(ConvNormAct, act_layer=torch.nn.SiLU), act=torch.nn.SiLU)
    pairs = [(v1, MobileVitBlock(C, C, transformer_dim=D, transformer_depth=DEPTH, patch_size=2,
                                 num_heads=4, layers=silu)),
             (v2, MobileVitV2Block(C, C, transformer_dim=D, transformer_depth=DEPTH, patch_size=2,
                                   layers=silu))]
    for ours, ref in pairs:
        ref = ref.double().train()
        ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
        ours.train()
        ours.zero_grad()
        g = rng.standard_normal(x.shape)
        y_ours = ours(x)
        dx_ours = ours.backward(g)
        tx = torch.tensor(x, requires_grad=True)
        y_ref = ref(tx)
        y_ref.backward(torch.from_numpy(g))
        errs = {"output": relative_error(y_ours, y_ref.detach().numpy()),
                "dx": relative_error(dx_ours, tx.grad.numpy())}
        # all parameter gradients as one vector: a few are exactly zero in training mode (see
        # above), so a per-parameter relative error would measure rounding noise there
        grads = dict(ours.named_parameters())
        errs["parameter gradients"] = relative_error(
            np.concatenate([grads[n].grad.ravel() for n, _ in ref.named_parameters()]),
            np.concatenate([p.grad.numpy().ravel() for _, p in ref.named_parameters()]))
        print(f"{type(ours).__name__} vs timm {type(ref).__name__}:",
              ", ".join(f"{k} {e:.1e}" for k, e in errs.items()))
        assert max(errs.values()) < 1e-9

# %% [markdown]
# ## Exercises
#
# Fill in a function and run the cell after it; the checker compares your answer with npvit
# and with finite differences (solutions, read them last: `tutorials/solutions/05_mobilevit_blocks.py`).
#
# ### Exercise 5.1: the backward of a pre-norm transformer layer
#
# Both versions' transformer layers compute `x = x + drop(attn(norm1(x)))`, then
# `x = x + mlp(norm2(x))` with the children `layer.norm1, layer.attn, layer.attn_out_drop,
# layer.norm2, layer.mlp`. Write `prenorm_residual_backward(layer, dy)`: call the children's
# `backward` methods in the right order (each fills its parameters' gradients) and return
# dL/dx. Mind the two residuals: the gradient goes both around and through each branch.


# %%
def prenorm_residual_backward(layer, dy):
    """layer: a TransformerLayer (v1) or LinearTransformerLayer (v2) whose forward just ran;
    dy: the gradient of its output -> the gradient of its input."""
    raise NotImplementedError


# %%
def check_prenorm_residual_backward(candidate):
    r = np.random.default_rng(51)
    for layer, shape in ((v1.transformer[0], (3, 5, D)), (v2.transformer[0], (2, D, 4, 5))):
        layer.train()
        x_l, g_l = r.standard_normal(shape), r.standard_normal(shape)
        layer.zero_grad()
        layer(x_l)
        dx_ref = layer.backward(g_l)
        ref = {n: p.grad.copy() for n, p in layer.named_parameters()}
        layer.zero_grad()
        layer(x_l)
        dx_c = candidate(layer, g_l)
        name = type(layer).__name__
        assert np.shape(dx_c) == shape, f"{name}: dx has shape {np.shape(dx_c)}, not {shape}"
        assert relative_error(dx_c, dx_ref) < 1e-12, f"{name}: dx differs from layer.backward"
        for n, p in layer.named_parameters():
            assert p.grad is not None, f"{name}: {n} got no gradient (was its module's backward called?)"
            assert relative_error(p.grad, ref[n]) < 1e-12, f"{name}: the gradient of {n} differs"
        num, idx = numeric_gradient(lambda: layer.forward(x_l), x_l, g_l, max_coords=10, rng=r)
        assert relative_error(np.reshape(dx_c, -1)[idx], num) < 1e-6, f"{name}: dx differs from finite differences"


exercises.check(prenorm_residual_backward, check_prenorm_residual_backward)

# %% [markdown]
# ### Exercise 5.2: the receptive-field probe
#
# Write `input_sensitivity(module, x, row, col)` that returns the maps drawn above: with x of
# shape (1, C, H, W), run the module forward, put a gradient of 1 on output pixel (row, col)
# of every channel and 0 elsewhere, run the backward, and return `sum_c |dx[0, c]|`, an
# (H, W) array. (The module is in eval mode; call `module.zero_grad()` first so the
# parameters' gradients do not pile up.)


# %%
def input_sensitivity(module, x, row, col):
    """module: an npvit Module mapping (1, C, H, W) to (1, C', H', W'); -> (H, W) map."""
    raise NotImplementedError


# %%
def check_input_sensitivity(candidate):
    r = np.random.default_rng(52)
    x_p = r.standard_normal((1, C, 4, 4))
    for module in (v1.conv_kxk, v2):
        module.eval()
        got = candidate(module, x_p.copy(), 1, 2)
        assert np.shape(got) == (4, 4), f"the map must be (H, W) = (4, 4), got {np.shape(got)}"
        g_p = np.zeros(module(x_p).shape)
        g_p[0, :, 1, 2] = 1.0
        num, _ = numeric_gradient(lambda: module.forward(x_p), x_p, g_p)   # every input entry
        expected = np.abs(num.reshape(x_p.shape)).sum(axis=(0, 1))
        assert relative_error(got, expected) < 1e-7, \
            f"{type(module).__name__}: the map differs from finite differences (abs per channel, then the sum?)"


exercises.check(input_sensitivity, check_input_sensitivity)

# %% [markdown]
# **Summary.** v1: 3x3 conv, 1x1 to d, unfold (B*P, N, d), MHA transformer, fold, 1x1 back,
# concatenate and fuse. v2: depthwise 3x3, 1x1 to d, unfold (B, d, P, N), separable-attention
# transformer with GroupNorm(1), fold, 1x1 back — nothing else. Both backward passes agree
# with finite differences and with timm, and one pixel of either block's output depends on
# every input pixel. Next: the whole network.
