# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 6. The whole model: MobileViTv2-0.5, against timm, and trained for a few steps
#
# A MobileViT network is a MobileNetV2-style CNN with three MobileViT blocks in it
# (`npvit/models/network.py`):
#
# ```
# stem       3x3 conv, stride 2                             output stride 2
# stages.0   inverted residual                              2
# stages.1   inverted residuals, the first with stride 2    4
# stages.2   inverted residual (stride 2) + MobileViT block 8
# stages.3   inverted residual (stride 2) + MobileViT block 16
# stages.4   inverted residual (stride 2) + MobileViT block 32
# head       global average pool -> linear                  (B, classes)
# ```
#
# The blocks' transformers have 2, 4 and 3 layers. v1 adds a 1x1 conv before the head; v2's
# width multiplier (0.5 ... 2.0) scales every channel count. Here we build the smallest v2,
# `mobilevitv2_050`, check it against timm, and train it on a toy problem with npvit's own
# optimiser — every gradient computed by the hand-written backward passes of tutorials 1-5.

# %%
import numpy as np

import npvit
from npvit import train
from npvit.gradcheck import relative_error
from tutorial_setup import FAST, optional_torch, plt, show, skip_without_torch

rng = np.random.default_rng(0)
NAME = "mobilevitv2_050"

# %% [markdown]
# ## Build it and follow the shapes
#
# The parameter count must be the published one (1,370,593 for width 0.5, MobileViTv2 paper
# and ml-cvnets model zoo); `forward_features` returns the output of every stage.

# %%
model = npvit.create_model(NAME, seed=0)
print(model.extra_repr())
assert model.num_parameters() == 1_370_593

side = 64 if FAST else 256
x = rng.random((1, 3, side, side)).astype(np.float32)
model.eval()
for stride, feature in model.forward_features(x).items():
    print(f"output stride {stride:2d}: {feature.shape}")
    assert feature.shape[2:] == (side // stride, side // stride)
logits = model(x)
print("logits", logits.shape)

# %% [markdown]
# ## The same logits and gradients as timm
#
# timm's `mobilevitv2_050` has the same parameter names, so its state dict loads 1:1. With
# the same weights and input: eval-mode logits in float32 agree to ~1e-5, and in float64 the
# gradient of every one of the 1.37 M parameters agrees to ~1e-13 relative (training mode:
# BatchNorm with batch statistics, which is what training uses).

# %%
torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with timm's mobilevitv2_050")
else:
    import timm

    torch.manual_seed(0)
    ref = timm.create_model(NAME, pretrained=False).eval()
    ours = npvit.create_model(NAME)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    ours.eval()
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = ours(x)
    print(f"float32 eval logits: max |npvit - timm| = {np.abs(got - expected).max():.1e}")
    assert np.abs(got - expected).max() < 1e-4

    ref = ref.double().train()
    ours.astype(np.float64).train()
    xb = rng.random((2, 3, side, side))
    g = rng.standard_normal((2, 1000))
    ours.zero_grad()
    y_ours = ours(xb)
    dx_ours = ours.backward(g)
    tx = torch.tensor(xb, requires_grad=True)
    y_ref = ref(tx)
    y_ref.backward(torch.from_numpy(g))
    # all parameter gradients as one vector (some are exactly zero in training mode, tutorial 5)
    grads = dict(ours.named_parameters())
    all_grads = relative_error(np.concatenate([grads[n].grad.ravel() for n, _ in ref.named_parameters()]),
                               np.concatenate([p.grad.numpy().ravel() for _, p in ref.named_parameters()]))
    print(f"float64 training mode: logits {relative_error(y_ours, y_ref.detach().numpy()):.1e}, "
          f"dx {relative_error(dx_ours, tx.grad.numpy()):.1e}, "
          f"all {len(grads)} parameter gradients {all_grads:.1e}")
    assert relative_error(y_ours, y_ref.detach().numpy()) < 1e-9
    assert relative_error(dx_ours, tx.grad.numpy()) < 1e-7 and all_grads < 1e-7

# %% [markdown]
# ## A tiny dataset: coloured stripes
#
# Four classes — horizontal, vertical and the two diagonal stripe directions — with a random
# frequency, phase and pair of colours per image, plus a little noise. The orientation is the
# only thing that predicts the label, so the network has to learn a (simple) shape feature.


# %%
CLASSES = ("horizontal", "vertical", "diagonal /", "diagonal \\")


def stripes(n, size, rng):
    """(n, 3, size, size) float32 images in [0, 1] and their labels (n,) in 0..3."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    coordinate = (yy, xx, (xx + yy) / np.sqrt(2), (xx - yy) / np.sqrt(2))   # one per class
    labels = rng.integers(0, len(CLASSES), n)
    images = np.empty((n, 3, size, size), np.float32)
    for i, label in enumerate(labels):
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * coordinate[label]
                                  + rng.uniform(0, 2 * np.pi))             # (size, size) in [0, 1]
        a, b = rng.random((2, 3, 1, 1))                                    # two colours
        image = a * wave + b * (1 - wave) + rng.normal(0, 0.05, (3, size, size))
        images[i] = np.clip(image, 0, 1)
    return images, labels


size = 32 if FAST else 64                 # 32 is the smallest input a MobileViT takes
images, labels = stripes(64, size, rng)
print("dataset", images.shape, "labels per class", np.bincount(labels, minlength=4))

# %% [markdown]
# ## Training with npvit.train
#
# The loop is the one every framework runs, written out (`npvit/train/`): forward, loss
# (cross-entropy with label smoothing 0.1, as the MobileViT recipes), clear the gradients,
# backward, clip the global gradient norm, AdamW step with the ml-cvnets weight-decay groups
# (no decay on biases and norm parameters), then the warm-up cosine learning-rate schedule.
# A new 4-class head replaces the 1000-class one.

# %%
steps, batch = (8, 16) if FAST else (60, 32)
net = npvit.create_model(NAME, num_classes=len(CLASSES), seed=0).train()
opt = train.AdamW(train.weight_decay_groups(net.named_parameters(), weight_decay=0.05), lr=2e-3)
schedule = train.WarmupCosineSchedule(opt, max_lr=2e-3, total_steps=steps, warmup_steps=2,
                                      min_lr=2e-4)


def dataset_loss():
    """Mean loss over the whole dataset, without updating anything but BN statistics."""
    with npvit.nn.no_grad():
        return float(np.mean([train.cross_entropy_forward(net(images[i:i + 16]), labels[i:i + 16])[0]
                              for i in range(0, len(images), 16)]))


loss_before = dataset_loss()
losses, lrs = [], []
for step in range(steps):
    idx = rng.choice(len(images), batch, replace=False)
    loss, cache = train.cross_entropy_forward(net(images[idx]), labels[idx], label_smoothing=0.1)
    net.zero_grad()
    net.backward(train.cross_entropy_backward(cache))
    train.clip_grad_norm(net.parameters(), max_norm=10.0)
    lrs.append(schedule.lr)
    opt.step()
    schedule.step()
    losses.append(loss)
    print(f"step {step:3d}  lr {lrs[-1]:.2e}  loss {loss:.3f}")
loss_after = dataset_loss()
print(f"loss over the dataset: {loss_before:.3f} before training, {loss_after:.3f} after "
      f"(chance: ln 4 = {np.log(4):.3f})")
assert np.isfinite(losses).all()
assert loss_after < loss_before

# %%
fig, (ax_img, ax_loss) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
tiles = [images[np.flatnonzero(labels == c)[0]].transpose(1, 2, 0) for c in range(len(CLASSES))]
ax_img.imshow(np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)]))
for c, name in enumerate(CLASSES):
    ax_img.text((c % 2 + 0.5) * size, (c // 2 + 0.95) * size, name, ha="center", fontsize=9,
                color="white", bbox=dict(facecolor="black", alpha=0.6, lw=0))
ax_img.set(title="one training image per class", xticks=[], yticks=[])
ax_loss.plot(range(steps), losses, "o-", label="training batch loss (smoothing 0.1)")
ax_loss.axhline(loss_before, color="gray", ls="--", label="dataset loss before")
ax_loss.axhline(loss_after, color="tab:green", ls="--", label="dataset loss after")
ax_loss.set(xlabel="step", ylabel="cross-entropy", title=f"{NAME}, AdamW + warm-up cosine")
ax_loss.legend(fontsize=8)
show(fig, "06_training_loss")

# %% [markdown]
# **Summary.** `npvit.create_model("mobilevitv2_050")` has the published 1,370,593
# parameters, timm's names, timm's logits and timm's gradients; with `npvit.train` it learns.
# Set `NPVIT_FAST=0` (the default) for 60 steps on 64x64 images. Next: the official weights.
