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
from tutorial_setup import FAST, optional_torch, plt, save_figure, skip_without_torch

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
#
# What counts is how the network does on images it never trained on, run the way it will be
# used: in **eval mode** (BatchNorm with its running statistics, not the batch's). So 64 more
# images are held out, and every few steps we measure them in eval mode with the plain
# cross-entropy (no smoothing). The training batches are measured twice from the same logits:
# the smoothed loss that is minimised, and the plain cross-entropy, computed the same way as
# the held-out loss. The smoothed loss cannot fall below the entropy of its smoothed target
# (the "smoothing floor", drawn in the figure); the plain one can go to 0.
#
# Expect the held-out accuracy to rise well before the held-out loss falls: early on the
# network is confidently wrong on some images, and the BatchNorm running statistics that eval
# mode uses still lag behind the weights (in FAST mode the held-out loss can end above ln 4
# while three images in five are right). Training accuracy in train mode flatters for both
# reasons; only the held-out, eval-mode numbers say what the network will do.

# %%
val_images, val_labels = stripes(64, size, rng)          # never trained on
steps, batch = (150, 16) if FAST else (300, 32)
smoothing, peak_lr = 0.1, 2e-3
net = npvit.create_model(NAME, num_classes=len(CLASSES), seed=0).train()
opt = train.AdamW(train.weight_decay_groups(net.named_parameters(), weight_decay=0.05), lr=peak_lr)
schedule = train.WarmupCosineSchedule(opt, max_lr=peak_lr, total_steps=steps,
                                      warmup_steps=steps // 10, min_lr=peak_lr / 10)


def held_out():
    """(loss, accuracy) on the held-out images: eval mode, plain cross-entropy."""
    result = train.evaluate(net, [(val_images[i:i + 32], val_labels[i:i + 32])
                                  for i in range(0, len(val_images), 32)], progress=False)
    net.train()
    return result["loss"], result["accuracy"]


check_at = {round(steps * k / 5) for k in range(1, 6)}   # 5 held-out checks
checks = {0: held_out()}                              # step -> (held-out loss, accuracy)
smoothed, plain, lrs = [], [], []
for step in range(steps):
    idx = rng.choice(len(images), batch, replace=False)
    logits = net(images[idx])
    loss, cache = train.cross_entropy_forward(logits, labels[idx], label_smoothing=smoothing)
    smoothed.append(loss)
    plain.append(train.cross_entropy_forward(logits, labels[idx])[0])   # same logits, no smoothing
    net.zero_grad()
    net.backward(train.cross_entropy_backward(cache))
    train.clip_grad_norm(net.parameters(), max_norm=10.0)
    lrs.append(schedule.lr)
    opt.step()
    schedule.step()
    if step + 1 in check_at:
        checks[step + 1] = held_out()
        print(f"step {step + 1:3d}  lr {lrs[-1]:.2e}  batch loss {loss:.3f} (plain {plain[-1]:.3f})"
              f"  held-out loss {checks[step + 1][0]:.3f} accuracy {checks[step + 1][1]:.0%}")
(loss_before, acc_before), (loss_after, acc_after) = checks[0], checks[steps]
floor = -((1 - smoothing + smoothing / 4) * np.log(1 - smoothing + smoothing / 4)
          + 3 * smoothing / 4 * np.log(smoothing / 4))
print(f"held-out, eval mode: loss {loss_before:.3f} -> {loss_after:.3f} (chance: ln 4 = "
      f"{np.log(4):.3f}), accuracy {acc_before:.0%} -> {acc_after:.0%} (chance 25%); "
      f"smoothing floor {floor:.3f}")
assert np.isfinite(smoothed).all()
# Measured in FAST mode (150 steps of 16 at 32x32) with seeds 0, 1, 2 in place of 0: held-out
# accuracy 61 %, 66 %, 53 % (chance 25 %); 40 % leaves 13 points below the worst of them.
assert acc_after >= 0.40

# %%
fig, (ax_img, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2),
                                             gridspec_kw={"width_ratios": [1, 1.4, 1]})
tiles = [images[np.flatnonzero(labels == c)[0]].transpose(1, 2, 0) for c in range(len(CLASSES))]
ax_img.imshow(np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)]))
for c, name in enumerate(CLASSES):
    ax_img.text((c % 2 + 0.5) * size, (c // 2 + 0.95) * size, name, ha="center", fontsize=9,
                color="white", bbox=dict(facecolor="black", alpha=0.6, lw=0))
ax_img.set(title="one training image per class", xticks=[], yticks=[])
ax_loss.plot(range(1, steps + 1), smoothed, color="tab:blue", alpha=0.4,
             label=f"training batch, smoothed {smoothing} (minimised)")
ax_loss.plot(range(1, steps + 1), plain, color="tab:blue", label="training batch, plain")
ax_loss.plot(list(checks), [c[0] for c in checks.values()], "s-", color="tab:orange",
             label="held-out, eval mode, plain (labels: accuracy)")
ax_loss.axhline(np.log(4), color="gray", ls=":", label="chance, ln 4")
ax_loss.axhline(floor, color="tab:blue", ls="--", lw=0.8, label="smoothing floor")
ax_loss.set(xlabel="step", ylabel="cross-entropy", title=f"{NAME}: loss", ylim=(0, None))
ax_loss.legend(fontsize=8)
for step, (_, accuracy) in checks.items():
    ax_loss.annotate(f"{accuracy:.0%}", (step, checks[step][0]), textcoords="offset points",
                     xytext=(0, 6), ha="center", fontsize=8, color="tab:orange")
ax_lr.plot(range(steps), lrs, color="tab:green")
ax_lr.set(xlabel="step", ylabel="learning rate", title="warm-up + cosine schedule")
ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
fig.subplots_adjust(wspace=0.3)
save_figure(fig, "06_training_loss.png")

# %% [markdown]
# **Summary.** `npvit.create_model("mobilevitv2_050")` has the published 1,370,593
# parameters, timm's names, timm's logits and timm's gradients; with `npvit.train` it learns,
# measured on held-out images in eval mode. Set `NPVIT_FAST=0` (the default) for 300 steps on
# 64x64 images. Tutorial 9 trains on a harder task and looks at where the network looks.
# Next: the official weights.
