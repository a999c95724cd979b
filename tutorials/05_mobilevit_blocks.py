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
# with the shapes printed, back-propagates through it, checks the gradients with finite
# differences, and shows that one output pixel really depends on the whole input.
# (`npvit/nn/blocks.py`; the MobileViT paper's Fig. 1b and the MobileViTv2 paper's Fig. 2b.)

# %%
import numpy as np

import npvit
from npvit import functional as F
from npvit.gradcheck import numeric_gradient, relative_error
from npvit.nn.blocks import MobileViTBlock, MobileViTBlockV2
from tutorial_setup import FAST, optional_torch, plt, show, skip_without_torch

npvit.nn.manual_seed(0)
rng = np.random.default_rng(0)
C, D, DEPTH = 16, 24, 2              # block channels, transformer width d, transformer layers
SIDE = 8 if FAST else 16             # feature map side


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
# with `block.forward`.

# %%
v1 = randomise_norms(MobileViTBlock(C, D, DEPTH, num_heads=4, dtype=np.float64)).eval()
x = rng.standard_normal((2, C, SIDE, SIDE))


def print_shape(step, a):
    print(f"  {step:44s} {str(a.shape):>18s}")
    return a


with npvit.nn.no_grad():
    print("MobileViT v1 block")
    y = print_shape("input x", x)
    y = print_shape("conv_kxk: 3x3 conv, BN, SiLU", v1.conv_kxk(y))
    y = print_shape("conv_1x1: 1x1 conv C -> d", v1.conv_1x1(y))
    t = print_shape("unfold: (B*P, N, d)", F.unfold_v1(y))
    for i, layer in enumerate(v1.transformer):
        t = print_shape(f"transformer.{i}: LN, MHA, +, LN, FFN, +", layer(t))
    t = print_shape("norm: LayerNorm", v1.norm(t))
    y = print_shape("fold: (B, d, H, W)", F.fold_v1(t, (SIDE, SIDE)))
    y = print_shape("conv_proj: 1x1 conv d -> C, BN, SiLU", v1.conv_proj(y))
    y = print_shape("concat with the input: 2C channels", np.concatenate([x, y], axis=1))
    y = print_shape("conv_fusion: 3x3 conv 2C -> C, BN, SiLU", v1.conv_fusion(y))
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
    y = print_shape("input x", x)
    y = print_shape("conv_kxk: depthwise 3x3, BN, SiLU", v2.conv_kxk(y))
    y = print_shape("conv_1x1: 1x1 conv C -> d", v2.conv_1x1(y))
    t = print_shape("unfold: (B, d, P, N)", F.unfold_v2(y))
    for i, layer in enumerate(v2.transformer):
        t = print_shape(f"transformer.{i}: GN, SepAttn, +, GN, FFN, +", layer(t))
    t = print_shape("norm: GroupNorm(1)", v2.norm(t))
    y = print_shape("fold: (B, d, H, W)", F.fold_v2(t, (SIDE, SIDE)))
    y = print_shape("conv_proj: 1x1 conv d -> C, BN", v2.conv_proj(y))
    assert np.allclose(y, v2(x))
print("step by step == MobileViTBlockV2.forward")
print(f"parameters: v1 block {v1.num_parameters():,}, v2 block {v2.num_parameters():,}")
assert v2.num_parameters() < v1.num_parameters()

# %% [markdown]
# ## Backward through a block
#
# The backward runs the same list in reverse. Three joints need care, everything else is a
# layer's own backward:
#
# * **fold/unfold** swap roles (each is the other's adjoint, tutorial 3);
# * the **residuals** inside each transformer layer: `x + f(x)` sends `dy` both straight
#   through and through `f`, and the two gradients add;
# * v1's **concatenation**: the fusion conv's input gradient splits into the first C
#   channels (back to the block input directly) and the rest (back through the transformer
#   path); the two contributions to `dx` add.
#
# We check the input gradient and a parameter from each kind of layer against finite
# differences, in training mode (BatchNorm uses the batch statistics, so its backward is the
# full one of tutorial 2).

# %%
def check_block(block, param_names):
    block.train()
    g = rng.standard_normal(block(x).shape)
    block.zero_grad()
    block(x)
    dx = block.backward(g)
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


print("v1 block, relative error of backward vs finite differences")
check_block(v1, ["conv_kxk.conv.weight", "transformer.0.attn.qkv.weight", "transformer.1.mlp.fc1.bias",
                 "norm.weight", "conv_proj.bn.bias", "conv_fusion.conv.weight"])
print("v2 block")
check_block(v2, ["conv_kxk.conv.weight", "transformer.0.attn.qkv_proj.weight",
                 "transformer.1.norm2.weight", "norm.weight", "conv_proj.conv.weight"])

# %% [markdown]
# One parameter is missing from both lists on purpose: the final norm's **bias**. In training
# mode its gradient is exactly zero (up to rounding). It adds a constant per channel, the 1x1
# `conv_proj` turns that into a constant per output channel, and the BatchNorm inside
# `conv_proj` subtracts the batch mean of each channel — removing any constant. (A finite
# difference of a function that does not change is pure rounding noise, so a relative error
# would be meaningless there.) In eval mode BatchNorm uses fixed statistics and the bias
# matters again.

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
# pass: put a gradient of 1 on one output pixel (all channels) and 0 elsewhere; `backward`
# returns how much each input pixel affects it.

# %%
centre = SIDE // 2
g = np.zeros((1, C, SIDE, SIDE))
g[0, :, centre, centre] = 1.0
xs = x[:1]
maps = {}
for name, module in (("3x3 convolution (conv_kxk)", v1.conv_kxk), ("MobileViT v1 block", v1),
                     ("MobileViTv2 block", v2)):
    module.eval()
    module(xs)
    module.zero_grad()
    maps[name] = np.abs(module.backward(g)).sum(axis=(0, 1))       # (SIDE, SIDE)

fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.8))
for ax, (name, m) in zip(axes, maps.items()):
    im = ax.imshow(np.log10(m + 1e-12), cmap="magma", vmin=-4)
    ax.scatter([centre], [centre], marker="+", s=120, color="cyan")
    covered = np.mean(m > 0)
    ax.set(title=f"{name}\n{covered:.0%} of the input reaches +", xticks=[], yticks=[])
fig.colorbar(im, ax=axes, label="log10 |d output(+) / d input|", shrink=0.8)
show(fig, "05_receptive_field")

conv_map = maps["3x3 convolution (conv_kxk)"]
assert np.count_nonzero(conv_map) == 9                                  # a 3x3 window
assert np.all(maps["MobileViT v1 block"] > 0) and np.all(maps["MobileViTv2 block"] > 0)

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
        grads = dict(ours.named_parameters())
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
# **Summary.** v1: 3x3 conv, 1x1 to d, unfold (B*P, N, d), MHA transformer, fold, 1x1 back,
# concatenate and fuse. v2: depthwise 3x3, 1x1 to d, unfold (B, d, P, N), separable-attention
# transformer with GroupNorm(1), fold, 1x1 back — nothing else. Both backward passes agree
# with finite differences and with timm, and one pixel of either block's output depends on
# every input pixel. Next: the whole network.
