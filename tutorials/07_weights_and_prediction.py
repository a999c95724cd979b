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
import re

import numpy as np

import npvit
from npvit import weights
from npvit.data import (example_image_path, get_pipeline, imagenet_classes, load_image,
                        preprocess, PIPELINES)
from tutorial_setup import OUT, optional_torch, plt, show, skip_without_torch

NAME = "mobilevitv2_050"
rng = np.random.default_rng(0)
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
pixels = np.asarray(photo.resize((new_w, new_h), resample=2))                # 2 = PIL BILINEAR
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

fig, (ax_photo, ax_bar) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
ax_photo.imshow(as_rgb(inputs[pipeline], pipeline))
ax_photo.set(title=f"input ({pipeline})", xticks=[], yticks=[])
ax_bar.barh(range(5)[::-1], probs[top5], color="tab:blue")
ax_bar.set_yticks(range(5)[::-1], [f"{i}: {classes[i].name}" for i in top5])
ax_bar.set(xlabel="probability",
           title=f"{NAME} top-5 ({'official' if have_official else 'RANDOM'} weights)")
show(fig, "07_top5")

# %% [markdown]
# **Summary.** A checkpoint is a dict of arrays under some naming scheme; npvit reads the
# official torch zip format without torch, renames ml-cvnets (or Hugging Face) keys to timm's,
# checks every shape, and stores `.npz`. The models were evaluated on 256x256 centre crops in
# [0, 1] — v2 with PIL bicubic in RGB, v1 with OpenCV bilinear in BGR. Next: where the
# separable attention looks.
