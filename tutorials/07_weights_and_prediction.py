# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 7. Official weights, preprocessing and a prediction
#
# Apple released ImageNet-1k checkpoints for all ten models with ml-cvnets, the authors'
# PyTorch library. npvit reads them **without PyTorch** (`npvit/weights/`): a checkpoint is a
# zip file written by `torch.save`, whose `data.pkl` describes a dict of tensors and whose
# `data/<n>` files hold their bytes; npvit unpickles only the few names a state dict needs,
# maps ml-cvnets' key names to npvit's (= timm's) and checks every shape against the model.
#
# No copy of the official files can be downloaded where this tutorial runs in CI, so we write
# a checkpoint **in the official layout** ourselves, from random weights, and take it through
# the same path a real one takes. If the official weights are in npvit's cache (see below),
# the last section uses them.

# %%
import contextlib
import re

import numpy as np
from PIL import Image

import npvit
from npvit import functional as F
from npvit import weights
from npvit.data import (example_image_path, get_pipeline, imagenet_classes, load_image,
                        preprocess, PIPELINES)
from npvit.gradcheck import numeric_gradient
from npvit.gradcheck import relative_error as scaled_error
from npvit.nn.blocks import InvertedResidual
from npvit.opcount import count_ops
from tutorial_setup import (FAST, OUT, Exercises, cpu_name, median_ms, optional_torch, plt,
                            relative_error, show, skip_without_torch)

NAME = "mobilevitv2_050"
rng = np.random.default_rng(0)
exercises = Exercises("07")          # solutions: tutorials/solutions/07_weights_and_prediction.py
workdir = OUT / "07_checkpoints"
workdir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The official checkpoints
#
# `npvit.weights.OFFICIAL` is the manifest (`npvit/weights/manifest.json`): where each file
# lives, the model's parameter count and the top-1 accuracy ml-cvnets reports at 256x256.

# %%
for entry in weights.OFFICIAL.values():
    print(f"{entry.name:16s} {entry.params:>11,d} params  top-1 {entry.top1:5.2f}%  {entry.url}")
    assert npvit.create_model(entry.name).num_parameters() == entry.params

# %% [markdown]
# ## ml-cvnets names vs npvit names
#
# The same tensors, two naming schemes. ml-cvnets wraps every conv + norm as
# `<unit>.block.conv` / `<unit>.block.norm`, numbers the stages `layer_1 ... layer_5`, calls the
# transformer `global_rep` (with the final norm at index = depth) and names the pre-norm
# sub-layers by position. npvit's converter (`npvit/weights/keymap.py`) is a list of
# regular-expression rules from ml-cvnets to npvit; the tests check those rules against
# key-by-key listings dumped from the ml-cvnets source (the reverse rules below reproduce that
# listing for all 269 entries of MobileViTv2).
#
# To make an "official" file without the official files, we write the rules the other way
# round, for MobileViTv2 (the transformer depths 2, 4, 3 locate each block's final norm):

# %%
DEPTHS = {2: 2, 3: 4, 4: 3}
NPVIT_TO_CVNETS_V2 = [
    (r"^stages\.(\d)\.1\.norm\.", lambda m: f"stages.{m[1]}.1.global_rep.{DEPTHS[int(m[1])]}."),
    (r"^stem\.", "conv_1."),
    (r"^head\.fc\.", "classifier.1."),
    (r"^stages\.(\d)\.", lambda m: f"layer_{int(m[1]) + 1}."),
    (r"\.conv1_1x1\.", ".block.exp_1x1."),
    (r"\.conv2_kxk\.", ".block.conv_3x3."),
    (r"\.conv3_1x1\.", ".block.red_1x1."),
    (r"\.conv_kxk\.", ".local_rep.0."),
    (r"\.conv_1x1\.weight$", ".local_rep.1.block.conv.weight"),
    (r"\.transformer\.(\d+)\.norm1\.", r".global_rep.\1.pre_norm_attn.0."),
    (r"\.transformer\.(\d+)\.attn\.(\w+)\.", r".global_rep.\1.pre_norm_attn.1.\2.block.conv."),
    (r"\.transformer\.(\d+)\.norm2\.", r".global_rep.\1.pre_norm_ffn.0."),
    (r"\.transformer\.(\d+)\.mlp\.fc1\.", r".global_rep.\1.pre_norm_ffn.1.block.conv."),
    (r"\.transformer\.(\d+)\.mlp\.fc2\.", r".global_rep.\1.pre_norm_ffn.3.block.conv."),
    (r"(?<!block)\.conv\.", ".block.conv."),          # conv + norm units
    (r"\.bn\.", ".block.norm."),
]


def to_cvnets_name(key):
    for pattern, replacement in NPVIT_TO_CVNETS_V2:
        key = re.sub(pattern, replacement, key)
    return key


source = npvit.create_model(NAME, seed=1)
for m in source.modules():                        # random BN statistics: nothing is an identity
    if isinstance(m, npvit.nn.BatchNorm2d):
        m.running_mean = rng.standard_normal(m.running_mean.shape).astype(np.float32) * 0.1
        m.running_var = (rng.random(m.running_var.shape) + 0.5).astype(np.float32)
cvnets_state = {to_cvnets_name(k): np.asarray(v) for k, v in source.state_dict().items()}
for key in ("stages.2.1.transformer.0.attn.qkv_proj.weight", "stages.2.1.norm.weight",
            "stages.1.0.conv2_kxk.bn.running_var"):
    print(f"{key:48s} <-> {to_cvnets_name(key)}")

# npvit's own rules must take every name back to where it came from
layout, renamed = weights.to_npvit_names(cvnets_state)
assert layout == "cvnets" and list(renamed) == list(source.state_dict())

# %% [markdown]
# ## Convert a checkpoint
#
# `convert_checkpoint` reads any supported file (`.pt`/`.pth`, `.safetensors`, `.npz`),
# detects the layout and the model from the keys and shapes, renames, checks every shape and
# returns float32 arrays; `save_npz` writes npvit's own format. (On the command line:
# `npvit convert mobilevitv2-0.5.pt -o mobilevitv2_050.npz`.)
#
# First the file: an `.npz` needs nothing but NumPy. If PyTorch is installed we also write a
# real `torch.save` zip — the format of the official `.pt` files — and read it back with npvit's
# torch-free reader.

# %%
official_layout_npz = workdir / "mobilevitv2-0.5-cvnets-layout.npz"
np.savez(official_layout_npz, **cvnets_state)
converted = weights.convert_checkpoint(official_layout_npz)
print(f"{official_layout_npz.name}: layout {converted.layout!r}, model {converted.model!r}, "
      f"{weights.num_parameters(converted.state):,} parameters")
assert converted.model == NAME and converted.layout == "cvnets"
npz_path = weights.save_npz(converted.state, workdir / f"{NAME}.npz")

torch = optional_torch()
if torch is None:
    skip_without_torch("writing a real torch.save .pt file")
else:
    pt_path = workdir / "mobilevitv2-0.5-cvnets-layout.pt"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in cvnets_state.items()}, pt_path)
    import zipfile
    with zipfile.ZipFile(pt_path) as z:
        names = z.namelist()
    print(f"{pt_path.name}: a zip of {len(names)} files, e.g. {names[0]}, {names[1]}, {names[-1]}")
    from_pt = weights.read_checkpoint(pt_path)      # npvit's reader: no torch involved
    assert list(from_pt) == list(cvnets_state)
    assert all(np.array_equal(from_pt[k], cvnets_state[k]) for k in cvnets_state)
    assert weights.convert_checkpoint(pt_path).model == NAME

# %% [markdown]
# `create_model(name, pretrained=path)` loads such a file (any layout). The loaded model
# computes exactly what the model the weights came from computes:

# %%
loaded = npvit.create_model(NAME, pretrained=npz_path).eval()
x_check = rng.random((1, 3, 64, 64)).astype(np.float32)
assert np.array_equal(loaded(x_check), source.eval()(x_check))
print("create_model(pretrained=<converted file>) reproduces the source model's logits exactly")

# %% [markdown]
# ## Preprocessing: what the official models were evaluated with
#
# Every pipeline resizes the short side to 288, centre-crops 256x256 and divides by 255 —
# no mean/std normalisation. They differ in the resampling filter and the channel order
# (`npvit/data/preprocess.py`, with the evidence from ml-cvnets):

# %%
for p in PIPELINES.values():
    print(f"{p.name:10s} {p.resample:16s} {p.channel_order}  {p.description}")

photo = load_image(example_image_path())          # matplotlib's photo of Grace Hopper
print("example photo:", example_image_path().name, photo.size, photo.mode)

# %% [markdown]
# The "hf" pipeline in four lines of PIL, as a check that the description above is all there
# is to it: resize the short side to 288 with bilinear filtering (the long side truncated),
# crop the centre at offsets `(h - 256) // 2`, scale to [0, 1], flip RGB to BGR.

# %%
w, h = photo.size
new_w, new_h = (288, int(288 * h / w)) if w <= h else (int(288 * w / h), 288)
pixels = np.asarray(photo.resize((new_w, new_h), resample=Image.Resampling.BILINEAR))
top, left = (new_h - 256) // 2, (new_w - 256) // 2
by_hand = pixels[top:top + 256, left:left + 256].transpose(2, 0, 1)[::-1] / np.float32(255)
assert np.array_equal(by_hand.astype(np.float32), preprocess(photo, "hf"))
print("hf pipeline by hand == npvit.data.preprocess(photo, 'hf')")

inputs = {name: preprocess(photo, name) for name in PIPELINES}
for name, x in inputs.items():
    assert x.shape == (3, 256, 256) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def as_rgb(x, name):
    """(3, H, W) model input -> (H, W, 3) RGB for display."""
    return (x[::-1] if get_pipeline(name).channel_order == "BGR" else x).transpose(1, 2, 0)


fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
axes[0].imshow(photo)
axes[0].set_title(f"photo {photo.size[0]}x{photo.size[1]}")
for ax, (name, x) in zip(axes[1:4], inputs.items()):
    ax.imshow(as_rgb(x, name))
    ax.set_title(f"{name}: {get_pipeline(name).resample}\n{get_pipeline(name).channel_order} "
                 "(shown as RGB)", fontsize=9)
diff = np.abs(as_rgb(inputs["cvnets-v2"], "cvnets-v2") - as_rgb(inputs["hf"], "hf")).max(axis=2)
im = axes[4].imshow(diff, cmap="magma")
axes[4].set_title("|cvnets-v2 - hf|\nbicubic vs bilinear", fontsize=9)
fig.colorbar(im, ax=axes[4], shrink=0.8)
for ax in axes:
    ax.set(xticks=[], yticks=[])
show(fig, "07_preprocessing")

# %% [markdown]
# ## Top-5 on the photo
#
# With the official weights in npvit's cache, `create_model(name, pretrained=True)` loads them
# (a good ImageNet model calls this photo class 652, "military uniform"). To get them on a
# machine with internet access, either of:
#
# ```
# npvit download mobilevitv2_050          # fetch into the cache and convert once
# curl -L -o mobilevitv2-0.5.pt <the URL printed above>; npvit convert mobilevitv2-0.5.pt
# ```
#
# The cache is `$NPVIT_HOME`, else `~/.cache/npvit`. Without the weights, the same code runs
# on the random weights written above — the path is identical, the prediction meaningless.

# %%
cached = weights.cache_dir() / f"{NAME}.npz"
official_file = weights.cache_dir() / weights.official(NAME).file_name
have_official = cached.is_file() or official_file.is_file()
if have_official:
    model = npvit.create_model(NAME, pretrained=True)
    print(f"official weights from {weights.cache_dir()}")
else:
    model = loaded
    print(f"no official weights in {weights.cache_dir()}: using the random-weight checkpoint "
          f"{npz_path.name}")

model.eval()
pipeline = npvit.data.default_pipeline(NAME)        # cvnets-v2 for MobileViTv2
logits = model(preprocess(photo, pipeline)[None])[0].astype(np.float64)
probs = np.exp(logits - logits.max())
probs /= probs.sum()
top5 = np.argsort(probs)[::-1][:5]
classes = imagenet_classes()
for i in top5:
    print(f"{probs[i]:7.2%}  {i:4d}  {classes[i].label}")
assert np.isclose(probs.sum(), 1.0) and np.all(np.diff(probs[top5]) <= 0)
assert len(classes) == 1000 and classes[652].name == "military uniform"

# constrained layout reserves room for the class names, so they never run into the photo
fig, (ax_photo, ax_bar) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained",
                                       gridspec_kw={"width_ratios": [1, 1.4]})
ax_photo.imshow(as_rgb(inputs[pipeline], pipeline))
ax_photo.set(title=f"input ({pipeline})", xticks=[], yticks=[])
ax_bar.barh(range(5)[::-1], probs[top5], color="tab:blue")
ax_bar.set_yticks(range(5)[::-1], [f"{i}: {classes[i].name[:28]}" for i in top5])
ax_bar.set(xlabel="probability",
           title=f"{NAME} top-5 ({'official' if have_official else 'RANDOM'} weights)")
fig.canvas.draw()
photo_box, label_boxes = ax_photo.get_window_extent(), [t.get_window_extent() for t in ax_bar.get_yticklabels()]
assert all(box.x0 >= photo_box.x1 for box in label_boxes)          # no label overlaps the photo
show(fig, "07_top5")

# %% [markdown]
# ## Which pixels the prediction depends on: one backward through the whole model
#
# The loss of a prediction with label `c` is the cross-entropy `L = -log p_c` with
# `p = softmax(z)`. Since `log p_c = z_c - log sum_j exp(z_j)`,
#
# $$ \frac{\partial L}{\partial z_j} = \frac{\exp(z_j)}{\sum_k \exp(z_k)} - [j = c] = p_j - [j = c], $$
#
# the probabilities minus the one-hot label. Feeding that into `model.backward` gives
# `dL/dx`, the gradient with respect to every input pixel: the pixels whose change would
# change the loss most (a "saliency map"; with random weights it shows the network's
# geometry, not a meaningful explanation). The cell checks the one-line gradient against
# finite differences and npvit's `cross_entropy_backward`, and the input gradient against
# finite differences of the whole float64 model on a few pixels.

# %%
def ce_grad_by_hand(z, c):
    p = np.exp(z - z.max())
    p /= p.sum()
    grad = p.copy()
    grad[c] -= 1.0
    return grad


z64 = logits[None].astype(np.float64)
label = int(top5[0])
mine = ce_grad_by_hand(z64[0], label)
num, idx = numeric_gradient(lambda: np.array(F.cross_entropy_forward(z64, np.array([label]))[0]),
                            z64, np.ones(()), max_coords=20)
assert relative_error(mine[idx], num) < 1e-5
assert relative_error(mine, F.cross_entropy_backward(F.cross_entropy_forward(z64, np.array([label]))[1])[0]) < 1e-12

side = 96 if FAST else 256
x_sal = preprocess(photo, pipeline, crop_size=side)[None]
model.eval()
z = model(x_sal)                                   # eval mode with gradients: caches kept
saliency = np.abs(model.backward(ce_grad_by_hand(z[0].astype(np.float64), label)[None].astype(np.float32)))

model64 = npvit.create_model(NAME, dtype=np.float64)
model64.load_state_dict(model.state_dict())
model64.eval()
x64 = preprocess(photo, pipeline, crop_size=64)[None].astype(np.float64)
z_small = model64(x64)
upstream = ce_grad_by_hand(z_small[0], label)[None]
upstream /= np.abs(upstream).max()               # a fixed direction, scaled to 1 (see below)
dx64 = model64.backward(upstream)

# The check differentiates sum(z * upstream), whose gradient is model.backward(upstream): the
# input gradient of the loss, up to the scale. A randomly initialised network barely reacts to
# one pixel (|dx| ~ 1e-6), so the usual step h = 1e-6 would measure mostly rounding error; the
# step is 1e-3 of the [0, 1] pixel range instead, and the separable attention's ReLU(V) has
# kinks that such a step can cross, so the check allows 1e-4 (a wrong backward is off by
# O(1)). The error is scaled by the largest entry (npvit.check_gradients' measure): cs231n's
# elementwise one is dominated by the near-zero pixels here.
num, idx = numeric_gradient(lambda: model64(x64), x64, upstream, h=1e-3, max_coords=4 if FAST else 12)
err = scaled_error(dx64.reshape(-1)[idx], num)
print(f"dL/dz by hand vs finite differences and npvit: ok; dL/dx through {NAME} (float64, 64x64) "
      f"vs finite differences on {idx.size} pixels: relative error {err:.1e} (scaled by the largest)")
assert err < 1e-4

fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6), layout="constrained")
axes[0].imshow(as_rgb(x_sal[0], pipeline))
axes[0].set_title(f"input {side}x{side}")
im = axes[1].imshow(saliency[0].max(axis=0), cmap="magma")
axes[1].set_title(f"|dL/dx| for class {label} ({'official' if have_official else 'RANDOM'} weights)",
                  fontsize=9)
fig.colorbar(im, ax=axes[1], shrink=0.8)
for ax in axes:
    ax.set(xticks=[], yticks=[])
show(fig, "07_saliency")

# %% [markdown]
# ### Exercise 1: the cross-entropy gradient with label smoothing
#
# npvit trains with label smoothing: the target is `q = (1 - eps) onehot(c) + eps / C` instead
# of the one-hot vector, and `L = -sum_j q_j log p_j`. Write `cross_entropy_grad(z, c, eps)`
# returning `dL/dz` for one sample's logits z (C,) (the derivation above, with `q`).


# %%
def cross_entropy_grad(z, c, eps):
    """z: (C,) logits, c: the label, eps: label smoothing -> dL/dz (C,)."""
    raise NotImplementedError


# %%
def check_cross_entropy_grad(candidate):
    for eps in (0.0, 0.1):
        zs = rng.standard_normal((1, 10)) * 3
        loss, cache = F.cross_entropy_forward(zs, np.array([4]), label_smoothing=eps)
        mine = np.asarray(candidate(zs[0].copy(), 4, eps))
        ref = F.cross_entropy_backward(cache)[0]
        assert mine.shape == ref.shape, f"gradient has shape {mine.shape}, not {ref.shape}"
        err = relative_error(mine, ref)
        assert err < 1e-9, f"differs from npvit's cross_entropy_backward at eps={eps}: {err:.1e}"
        num, _ = numeric_gradient(
            lambda: np.array(F.cross_entropy_forward(zs, np.array([4]), label_smoothing=eps)[0]),
            zs, np.ones(()))
        err = relative_error(mine, num)
        assert err < 1e-5, f"differs from finite differences at eps={eps}: {err:.1e}"


exercises.check(cross_entropy_grad, check_cross_entropy_grad)

# %% [markdown]
# ## Parameters and multiply-adds per stage, v1 against v2
#
# Both networks have a stem (a stride-2 3x3 conv), five stages (inverted residuals; stages 3-5
# end with a MobileViT block) and a head (v1: a 1x1 conv, then pooling and the classifier; v2:
# pooling and the classifier). Parameters are read off the modules; multiply-adds are counted
# while a forward pass runs: every convolution and linear layer adds (output elements) x
# (input channels per group) x (kernel area), and the attention code reports its own products
# (`npvit.opcount`). Norms, activations and the softmax are not multiply-adds and are left out.

# %%
@contextlib.contextmanager
def counting_macs():
    """Count the multiply-adds of every Conv2d, Linear and attention product run inside."""
    counter = {"macs": 0}
    conv_forward, linear_forward = npvit.nn.Conv2d.forward, npvit.nn.Linear.forward

    def conv(self, x):
        y = conv_forward(self, x)
        counter["macs"] += y.size * int(np.prod(self.weight.shape[1:]))   # C_in/g * kh * kw
        return y

    def linear(self, x):
        y = linear_forward(self, x)
        counter["macs"] += y.size * self.weight.shape[1]
        return y

    npvit.nn.Conv2d.forward, npvit.nn.Linear.forward = conv, linear
    try:
        with count_ops() as attention:
            yield counter
    finally:
        npvit.nn.Conv2d.forward, npvit.nn.Linear.forward = conv_forward, linear_forward
    counter["macs"] += attention.macs


def model_parts(model):
    """[(part, modules run in order)]: stem, stage 1..5, head (v1's final conv and the classifier)."""
    return ([("stem", [model.stem])] + [(f"stage {i + 1}", [st]) for i, st in enumerate(model.stages)]
            + [("head", [model.final_conv, model.head])])


def stage_params(model):
    """[(part, parameters)]; they add up to the model's count."""
    rows = [(part, sum(m.num_parameters() for m in mods)) for part, mods in model_parts(model)]
    assert sum(r[1] for r in rows) == model.num_parameters()
    return rows


def stage_costs(model, size):
    """[(part, parameters, multiply-adds)] for one size x size image."""
    model.eval()                            # with gradients on: the unfolded conv + BN path runs
    x = np.zeros((1, 3, size, size), np.float32)
    rows = []
    for (part, mods), (_, params) in zip(model_parts(model), stage_params(model)):
        with counting_macs() as counter:
            for m in mods:
                x = m(x)
        rows.append((part, params, counter["macs"]))
    return rows


# the counter agrees with the GEMM shapes of a convolution (tutorial 1)
probe = npvit.nn.Conv2d(8, 16, 3, stride=2, padding=1)
with counting_macs() as counter:
    out = probe(np.zeros((1, 8, 10, 10), np.float32))
assert counter["macs"] == 16 * (8 * 3 * 3) * out.shape[2] * out.shape[3]   # (C_out, K) @ (K, L)

SIZE = 128 if FAST else 256
PAIRS = [("mobilevit_xs", "mobilevitv2_075")] if FAST else [
    ("mobilevit_xxs", "mobilevitv2_050"), ("mobilevit_xs", "mobilevitv2_075"),
    ("mobilevit_s", "mobilevitv2_100")]
models = {name: npvit.create_model(name) for pair in PAIRS for name in pair}
costs = {name: stage_costs(m, SIZE) for name, m in models.items()}
parts = [r[0] for r in next(iter(costs.values()))]
print(f"{'':10s}" + "".join(f"{name:>22s}" for name in costs))
for i, part in enumerate(parts):
    print(f"{part:10s}" + "".join(f"{c[i][1] / 1e6:8.3f} M {c[i][2] / 1e6:8.1f} MMAC" for c in costs.values()))
print(f"{'total':10s}" + "".join(f"{sum(r[1] for r in c) / 1e6:8.3f} M {sum(r[2] for r in c) / 1e6:8.1f} MMAC"
                               for c in costs.values()) + f"   (one {SIZE}x{SIZE} image)")

# Below the head (which works on the pooled vector), v2's cost grows with the area: every
# operation, the separable attention included, is per pixel. v1's attention grows with the
# square of the number of patches, so its body grows faster.
for name in PAIRS[0]:
    small = sum(r[2] for r in stage_costs(models[name], SIZE // 2)[:-1])
    large = sum(r[2] for r in costs[name][:-1])
    print(f"{name}: multiply-adds of stem + stages at {SIZE}x{SIZE} / at {SIZE // 2}x{SIZE // 2} "
          f"= {large / small:.3f}")
    assert (large == 4 * small) if name.startswith("mobilevitv2") else (large > 4 * small)

# %% [markdown]
# ## How the width multiplier scales each stage
#
# MobileViTv2 has one knob, the width multiplier alpha (0.5 ... 2.0 in the names): every
# channel count, including the transformer width d, is alpha times the 1.0 model's (rounded
# to a multiple of 8). A layer between two widened layers has alpha^2 times the weights and
# multiply-adds; the stem (3 input channels) and the classifier (1000 outputs) widen on one
# side only, so they grow like alpha. The figure measures the parameters of each part against
# alpha = 0.5.

# %%
ALPHAS = [0.5, 1.0, 2.0] if FAST else [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
width_params = {a: stage_params(npvit.create_model(f"mobilevitv2_{round(a * 100):03d}")) for a in ALPHAS}
base = width_params[0.5]
growth = {part: [width_params[a][i][1] / base[i][1] for a in ALPHAS] for i, part in enumerate(parts)}
for part in ("stage 2", "stage 3", "stage 4", "stage 5"):
    print(f"{part}: parameters x{growth[part][-1]:.2f} at alpha = {ALPHAS[-1]} (alpha^2 ratio {(ALPHAS[-1] / 0.5) ** 2:.0f})")
    assert abs(growth[part][-1] / (ALPHAS[-1] / 0.5) ** 2 - 1) < 0.1
for part in ("stem", "head"):
    print(f"{part}: parameters x{growth[part][-1]:.2f} at alpha = {ALPHAS[-1]} (alpha ratio {ALPHAS[-1] / 0.5:.0f})")
    assert abs(growth[part][-1] / (ALPHAS[-1] / 0.5) - 1) < 0.1

# %% [markdown]
# ## Latency, v1 against v2, in this run
#
# The MobileViTv2 paper's abstract reports its 3M-parameter model (75.6% top-1, here
# `mobilevitv2_075`) "running 3.2x faster on a mobile device" than MobileViT; its comparison
# model with similar accuracy is MobileViT-XS (74.8%). That is a claim about a phone's
# inference engine. Here is what npvit measures for the pairs on this CPU: inference (eval,
# `no_grad`, BatchNorm folded), float32, batch 1, one BLAS thread, the median of a few runs
# after a warm-up.

# %%
latency = {}
x_lat = rng.random((1, 3, SIZE, SIZE)).astype(np.float32)
for name, m in models.items():
    m.eval()

    def run(m=m):
        with npvit.nn.no_grad():
            m(x_lat)
    latency[name] = median_ms(run, repeats=3 if FAST else 5)
for v1_name, v2_name in PAIRS:
    print(f"{v1_name:14s} {latency[v1_name]:7.1f} ms   {v2_name:16s} {latency[v2_name]:7.1f} ms   "
          f"v1 / v2 = {latency[v1_name] / latency[v2_name]:.2f}")
print(f"({SIZE}x{SIZE}, float32, batch 1, one thread, {cpu_name()})")

# %%
fig, axes = plt.subplots(1, 4, figsize=(18, 4), layout="constrained")
width = 0.8 / len(costs)
for k, (name, rows) in enumerate(costs.items()):
    xs = np.arange(len(parts)) + (k - (len(costs) - 1) / 2) * width
    hatch = "" if name.startswith("mobilevitv2") else "//"
    axes[0].bar(xs, [r[1] / 1e6 for r in rows], width, label=name, hatch=hatch)
    axes[1].bar(xs, [r[2] / 1e6 for r in rows], width, label=name, hatch=hatch)
for ax, what in zip(axes[:2], ("parameters (M)", f"multiply-adds (M), {SIZE}x{SIZE}")):
    ax.set_xticks(range(len(parts)), parts, rotation=30)
    ax.set(ylabel=what, title=f"{what.split(' (')[0]} per part")
axes[0].legend(fontsize=7)
for part, style in zip(parts, ("s-", "o-", "o-", "o-", "o-", "o-", "^--")):
    axes[2].plot(ALPHAS, growth[part], style, label=part, markersize=5)
a = np.array(ALPHAS)
axes[2].plot(a, (a / 0.5) ** 2, "k--", label="(alpha / 0.5)^2")
axes[2].plot(a, a / 0.5, "k:", label="alpha / 0.5")
axes[2].set(xscale="log", yscale="log", xlabel="width multiplier alpha",
            ylabel="parameters / parameters at alpha = 0.5", title="MobileViTv2: growth with width")
axes[2].set_xticks(ALPHAS, [f"{v:g}" for v in ALPHAS])
axes[2].set_yticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
axes[2].minorticks_off()
axes[2].legend(fontsize=7)
names = [n for pair in PAIRS for n in pair]
axes[3].bar(range(len(names)), [latency[n] for n in names],
            color=["tab:gray" if not n.startswith("mobilevitv2") else "tab:blue" for n in names])
axes[3].set_xticks(range(len(names)), names, rotation=30)
axes[3].set(ylabel="ms (median, 1 thread)", title=f"latency here, {SIZE}x{SIZE}")
fig.suptitle(f"measured in this run on {cpu_name()}", fontsize=9)
show(fig, "07_stage_costs")

# %% [markdown]
# ### Exercise 2: parameters of an inverted residual, by hand
#
# Write `inverted_residual_params(c_in, c_out, expand)`: the trainable parameters of an
# inverted residual block (1x1 conv C_in -> C_in * expand, BN; depthwise 3x3, BN; 1x1 conv ->
# C_out, BN; no conv biases; a BatchNorm has a weight and a bias per channel). The checker
# compares with npvit's `InvertedResidual`.


# %%
def inverted_residual_params(c_in, c_out, expand):
    raise NotImplementedError


# %%
def check_inverted_residual_params(candidate):
    for c_in, c_out, expand in ((16, 32, 2), (64, 64, 4), (96, 128, 2)):
        ref = InvertedResidual(c_in, c_out, expand_ratio=expand).num_parameters()
        mine = candidate(c_in, c_out, expand)
        assert mine == ref, f"InvertedResidual({c_in}, {c_out}, expand {expand}) has {ref} parameters, not {mine}"


exercises.check(inverted_residual_params, check_inverted_residual_params)

# %% [markdown]
# ### Exercise 3: one transformer layer, v1 against v2
#
# Write `transformer_layer_params(d, separable)`: the parameters of one transformer layer of
# width d with an FFN of 2d — v1 (`separable=False`): LayerNorm, MHA (qkv d -> 3d, proj d -> d,
# with biases), LayerNorm, MLP d -> 2d -> d with biases; v2 (`separable=True`): GroupNorm,
# separable attention (a 1x1 conv d -> 1 + 2d and one d -> d, with biases), GroupNorm, 1x1
# convs d -> 2d -> d with biases. Which one is smaller, and by how much per d^2?


# %%
def transformer_layer_params(d, separable):
    raise NotImplementedError


# %%
def check_transformer_layer_params(candidate):
    for d in (64, 96, 144):
        v1 = npvit.nn.TransformerLayer(d, num_heads=4, mlp_ratio=2.0).num_parameters()
        v2 = npvit.nn.LinearTransformerLayer(d, mlp_ratio=2.0).num_parameters()
        for separable, ref in ((False, v1), (True, v2)):
            mine = candidate(d, separable)
            assert mine == ref, f"d={d}, separable={separable}: {ref} parameters, not {mine}"


exercises.check(transformer_layer_params, check_transformer_layer_params)

# %% [markdown]
# **Summary.** A checkpoint is a dict of arrays under some naming scheme; npvit reads the
# official torch zip format without torch, renames ml-cvnets (or Hugging Face) keys to timm's,
# checks every shape, and stores `.npz`. The models were evaluated on 256x256 centre crops in
# [0, 1] — v2 with PIL bicubic in RGB, v1 with OpenCV bilinear in BGR. The loss gradient
# `p - onehot` goes back through the whole model to the pixels. Per stage, v2 trades v1's
# quadratic attention for per-pixel work (its multiply-adds grow with the area), its width
# multiplier scales the inner stages by alpha^2, and what that buys in latency depends on the
# device: the run above says what it buys here. Next: where the separable attention looks.
