# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 11. Segmentation: dilation, the output stride, ASPP, and a segmenter trained in NumPy
#
# A classifier answers once per image; a segmenter answers once per pixel. The MobileViT papers
# report segmentation with two heads from the DeepLab / PSPNet line on top of the same
# backbone. Two ideas carry them:
#
# * **keep the resolution**: a classifier shrinks the map 32x (output stride 32); for masks the
#   last stages stop striding (output stride 16 or 8) and **dilate** their convolutions
#   instead, so they still see as far as before;
# * **look at several scales at once**: DeepLabv3's ASPP runs 3x3 convolutions with large
#   dilation rates side by side (and an image-level average), PSPNet pools the map into
#   1x1, 2x2, 3x3 and 6x6 grids.
#
# This tutorial takes both apart with npvit, draws what ASPP's branches see, and trains a
# small DeepLabv3 head in NumPy on the synthetic shapes, with masks, and measures its mIoU on
# held-out images.

# %%
import numpy as np

import npvit
from npvit import functional as F
from npvit.data.synthetic import make_synthetic
from npvit.gradcheck import check_gradients, numeric_gradient, relative_error, wrap_op
from npvit.models import MobileViTBackbone
from npvit.models.heads import DeepLabV3Head
from npvit.nn import ConvNormAct, Module, Sequential, manual_seed, no_grad
from npvit.segmentation.metrics import ConfusionMatrix
from npvit.train.optim import AdamW
from tutorial_setup import FAST, Exercises, optional_torch, plt, show, skip_without_torch

exercises = Exercises("11")          # solutions: tutorials/solutions/11_segmentation.py

# %% [markdown]
# ## 1. A dilated convolution and where its taps land
#
# A 3x3 convolution with dilation d reads the input at offsets (-d, 0, d) in each direction:
# output pixel (a, b) = sum over taps (i, j) of w[i, j] * x[a + (i - 1) d, b + (j - 1) d]. The
# padding is d, so the map keeps its size. npvit shifts each tap by (i d, j d) in the padded
# input; nothing else changes (`npvit/functional/conv.py`).
#
# *Which input pixels does one output pixel read?* The backward answers it: the gradient of
# one output pixel with respect to the input is non-zero exactly where its taps land.

# %%
def taps_of(center, size, rate):
    """The input pixels output pixel ``center`` reads, for a 3x3 conv of dilation ``rate``."""
    x = np.zeros((1, 1, size, size))
    w = np.ones((1, 1, 3, 3))
    y, cache = F.conv2d_forward(x, w, None, stride=1, padding=rate, dilation=rate)
    dy = np.zeros_like(y)
    dy[0, 0][center] = 1.0
    dx, _, _ = F.conv2d_backward(dy, cache)
    return dx[0, 0]


size = 25
fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for ax, (rate, center) in zip(axes, [(1, (12, 12)), (4, (12, 12)), (9, (12, 12)), (18, (3, 20))]):
    reads = taps_of(center, size, rate)
    ax.imshow(reads, cmap="Blues", vmin=0, vmax=1)
    ax.plot(center[1], center[0], "r+", markersize=10)
    ax.set(title=f"rate {rate}: {int(reads.sum())} of 9 taps inside", xticks=[], yticks=[])
    expected_inside = sum(0 <= center[0] + di * rate < size and 0 <= center[1] + dj * rate < size
                          for di in (-1, 0, 1) for dj in (-1, 0, 1))
    assert reads.sum() == expected_inside          # the others read the zero padding
fig.suptitle("Input pixels read by one output pixel (red +) of a dilated 3x3 conv on a 25x25 map")
show(fig, "11_dilated_taps")

# %% [markdown]
# With rate 18 near a corner only a few taps land on the map: the others read zeros. DeepLabv3
# at output stride 16 uses rate 18 on 32x32 maps (a 512x512 image), and at stride 8 rate 36 on
# 64x64 maps, so this is the normal case, not an edge case: the conv must be a true zero-padded
# one (no clamping of the taps).
#
# The backward of the dilated conv is checked against finite differences here, and against
# PyTorch where it is installed.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
errors = check_gradients(*wrap_op(lambda x, w: F.conv2d_forward(x, w, None, 1, 6, 1, 6),
                                  F.conv2d_backward, ["x", "w"]), dict(x=x, w=w))
print("rate 6 on a 7x6 map, backward vs finite differences:", {k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-6

torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with torch.nn.functional.conv2d")
else:
    ours, _ = F.conv2d_forward(x, w, None, 1, 6, 1, 6)
    theirs = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=6,
                                        dilation=6).numpy()
    print(f"npvit vs torch, rate 6: max difference {np.abs(ours - theirs).max():.1e}")
    assert np.abs(ours - theirs).max() < 1e-12

# %% [markdown]
# ## 2. The output stride of the backbone
#
# ml-cvnets turns the classifier into a dense backbone with one running number, the dilation
# (start 1): a stage whose output stride would exceed the target keeps stride 1, its first
# (inverted residual) block's depthwise conv takes the running dilation, the dilation doubles,
# and the MobileViTv2 block after it dilates its local depthwise conv with the doubled value.
# (MobileViT v1 blocks are never dilated.) `npvit.models.MobileViTBackbone` is built by the
# same builders as the classifier, so its weights are the classifier's.

# %%
image_side = 128 if FAST else 256
for stride in (32, 16, 8):
    backbone = MobileViTBackbone("mobilevitv2_050", output_stride=stride).eval()
    with no_grad():
        feats = backbone(np.zeros((1, 3, image_side, image_side), np.float32))
    dilations = [(s[0].conv2_kxk.conv.stride, s[0].conv2_kxk.conv.dilation,
                  s[1].conv_kxk.conv.dilation) for s in list(backbone.stages)[2:]]
    print(f"OS {stride:2d}: stage sizes {[f.shape[2] for f in feats]}, "
          f"stages 2-4 (stride, IR dilation, block dilation) {dilations}")
    assert feats[-1].shape[2] == image_side // stride
same = MobileViTBackbone("mobilevitv2_050", 8).state_dict()
assert list(same) == [k for k in npvit.create_model("mobilevitv2_050").state_dict()
                      if k.startswith(("stem.", "stages."))]
print("the OS-8 backbone has exactly the classifier's stem and stage weights:", len(same), "tensors")

# %% [markdown]
# ## 3. What ASPP's branches see
#
# DeepLabv3's ASPP runs five branches on the last feature map and concatenates them: a 1x1
# conv, three 3x3 convs with rates (6, 12, 18) at output stride 16, and the image-level branch
# (mean over the whole map, a 1x1 conv, broadcast back). Drawn in the pixels of a 512x512
# image (one feature pixel = 16x16 image pixels), the centre output of each branch reads:

# %%
fmap, os_ = 32, 16
center = (fmap // 2, fmap // 2)
branches = [("1x1 conv", None), ("rate 6", 6), ("rate 12", 12), ("rate 18", 18), ("image pool", "all")]
fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
for ax, (title, rate) in zip(axes, branches):
    if rate is None:
        reads = np.zeros((fmap, fmap))
        reads[center] = 1
    elif rate == "all":
        reads = np.ones((fmap, fmap))
    else:
        reads = taps_of(center, fmap, rate)
    ax.imshow(np.kron(reads, np.ones((os_, os_))), cmap="Oranges", vmin=0, vmax=1,
              extent=(0, fmap * os_, fmap * os_, 0))
    ax.set(title=f"{title}: {int(reads.sum())} feature px", xticks=[0, 256, 512], yticks=[0, 256, 512])
    if rate == 18:
        assert reads.sum() == 1                    # 16 +- 18 is off the 32x32 map
fig.suptitle("Feature pixels read by the centre output of each ASPP branch (OS 16, 512x512 image)")
show(fig, "11_aspp_fields")

# %% [markdown]
# Rate 18 is the surprise: from the centre of a 32x32 map, 16 - 18 and 16 + 18 lie outside
# it, so eight of the nine taps read padding and the branch acts as a 1x1 conv. (An output
# near an edge keeps one outer tap per axis: row 2 reads row 20, row 28 reads row 10.) This is
# the observation of the
# DeepLabv3 paper (Chen et al. 2017, Fig. 4) that led to the image-level pooling branch: it
# supplies the global context that very large rates fail to reach. Each branch alone is sparse;
# their concatenation, mixed by the 1x1 projection, sees the object at several scales at once.
#
# ### Exercise 11.1: PSPNet's pooling bins
#
# PSPNet pools the map into p x p grids with PyTorch's adaptive average pooling. Bin i of n
# input rows pooled to p rows covers rows [floor(i n / p), ceil((i + 1) n / p)): bins may
# OVERLAP when p does not divide n. Write the (p, n) averaging matrix A (row i holds
# 1 / bin length over bin i), so that A @ x pools one axis.

# %%
def adaptive_pool_rows(n, p):
    """(p, n) matrix of PyTorch's adaptive average pooling of n rows into p."""
    raise NotImplementedError


# %%
def check_adaptive_pool_rows(candidate):
    for n, p in ((64, 6), (10, 3), (7, 7), (4, 6)):
        got = np.asarray(candidate(n, p), dtype=np.float64)
        assert got.shape == (p, n), f"shape {got.shape}, expected {(p, n)}"
        expected = F.adaptive_pool_matrix(n, p)
        assert np.allclose(got, expected), f"n={n}, p={p}: rows differ from PyTorch's bins"


exercises.check(adaptive_pool_rows, check_adaptive_pool_rows)

# %% [markdown]
# ### The pooling's backward, by hand
#
# With the two bin matrices, pooling is `y = A_h x A_w^T` per channel: `y[i, j] = sum_{a, b}
# A_h[i, a] x[a, b] A_w[j, b]`. Input pixel (a, b) touches every output (i, j) with factor
# A_h[i, a] A_w[j, b], so `dx[a, b] = sum_{i, j} A_h[i, a] dy[i, j] A_w[j, b]`, i.e.
# `dx = A_h^T dy A_w`: the backward of a linear map is its transpose. A pixel in two
# overlapping bins gets a share from each bin's gradient.

# %%
def adaptive_pool_backward_by_hand(dy, height, width):
    """dy (N, C, p, q) -> dx (N, C, height, width)."""
    a_h = F.adaptive_pool_matrix(height, dy.shape[2])          # (p, H)
    a_w = F.adaptive_pool_matrix(width, dy.shape[3])           # (q, W)
    return a_h.T @ dy @ a_w                                    # (H, p) (p, q) (q, W)


x_pool = rng.standard_normal((1, 2, 10, 7))
y_pool, pool_cache = F.adaptive_avg_pool_forward(x_pool, (3, 2))       # 10 -> 3 bins overlap
dy_pool = rng.standard_normal(y_pool.shape)
ours = adaptive_pool_backward_by_hand(dy_pool, 10, 7)
num, idx = numeric_gradient(lambda: F.adaptive_avg_pool_forward(x_pool, (3, 2))[0], x_pool, dy_pool, rng=rng)
errs = {"vs finite differences": relative_error(ours.reshape(-1)[idx], num),
        "vs npvit adaptive_avg_pool_backward": relative_error(ours, F.adaptive_avg_pool_backward(dy_pool, pool_cache))}
print({k: f"{v:.1e}" for k, v in errs.items()})
assert errs["vs finite differences"] < 1e-8 and errs["vs npvit adaptive_avg_pool_backward"] < 1e-14
if torch is None:
    skip_without_torch("the comparison with torch's adaptive_avg_pool2d backward")
else:
    xt = torch.from_numpy(x_pool).requires_grad_()
    torch.nn.functional.adaptive_avg_pool2d(xt, (3, 2)).backward(torch.from_numpy(dy_pool))
    print(f"vs torch's backward: {relative_error(ours, xt.grad.numpy()):.1e}")
    assert relative_error(ours, xt.grad.numpy()) < 1e-14

# %% [markdown]
# ### Exercise 11.2: the pixel cross entropy with an ignore index
#
# The loss averages `-log softmax(logits)[target]` over the pixels whose target is not
# `ignore_index` (object borders in PASCAL VOC). Per valid pixel the gradient of its term is
# `softmax - onehot(target)` (tutorial 6); ignored pixels get 0, and every valid pixel's
# share is divided by the number of VALID pixels, not of all pixels. Return `dlogits`.

# %%
def pixel_cross_entropy_backward_by_hand(logits, targets, ignore_index):
    """logits (N, C, H, W), targets (N, H, W) ints -> dlogits (N, C, H, W) of the mean loss."""
    raise NotImplementedError


# %%
def check_pixel_cross_entropy_backward_by_hand(candidate):
    r = np.random.default_rng(112)
    logits = r.standard_normal((2, 4, 3, 5))
    targets = r.integers(0, 4, size=(2, 3, 5))
    targets[r.random(targets.shape) < 0.3] = 255                  # about 30 % ignored
    got = candidate(logits.copy(), targets.copy(), 255)
    assert np.shape(got) == logits.shape, f"dlogits must be {logits.shape}, got {np.shape(got)}"
    _, cache = F.pixel_cross_entropy_forward(logits, targets, ignore_index=255)
    assert relative_error(got, F.pixel_cross_entropy_backward(cache)) < 1e-13, \
        "dlogits differs from npvit's (divided by the valid pixels? zero where ignored?)"
    num, idx = numeric_gradient(lambda: np.array(F.pixel_cross_entropy_forward(logits, targets, 255)[0]),
                                logits, np.array(1.0), max_coords=40, rng=r)
    assert relative_error(np.reshape(got, -1)[idx], num) < 1e-7, "dlogits differs from finite differences"


exercises.check(pixel_cross_entropy_backward_by_hand, check_pixel_cross_entropy_backward_by_hand)

# %% [markdown]
# ## 4. A small segmenter, trained in NumPy
#
# The synthetic shapes (`npvit.data.synthetic`) come with exact masks: one object of K shape
# classes on clutter. The segmentation target is K + 1 classes per pixel: 0 = background,
# 1 + label on the object. The network: three stride-2 conv units (output stride 8), one
# dilated conv, and npvit's DeepLabv3 head (the same ASPP as the releases, with small widths
# and rates 1, 2, 3 for a 6x6 map). Its logits are resized to the image (bilinear,
# align_corners=True, as ml-cvnets' loss does) and trained with the pixel cross entropy; the
# resize's backward and the loss's backward feed `backward`.

# %%
K, side = 3, 48
n_train, n_test, steps = (400, 60, 150) if FAST else (1200, 200, 1500)
train, test = (make_synthetic(n_train, size=side, num_classes=K, seed=0),
               make_synthetic(n_test, size=side, num_classes=K, seed=1))


def as_arrays(data):
    x = data.images.transpose(0, 3, 1, 2).astype(np.float32) / 255          # (n, 3, H, W)
    y = data.masks.astype(np.int64) * (data.labels[:, None, None] + 1)        # (n, H, W)
    return x, y


x_train, y_train = as_arrays(train)
x_test, y_test = as_arrays(test)


class TinyDeepLab(Module):
    def __init__(self, classes):
        super().__init__()
        self.features = Sequential(ConvNormAct(3, 16, 3, stride=2), ConvNormAct(16, 32, 3, stride=2),
                                   ConvNormAct(32, 48, 3, stride=2), ConvNormAct(48, 48, 3, dilation=2))
        self.head = DeepLabV3Head(48, classes, out_chs=48, rates=(1, 2, 3))

    def forward(self, x):
        return self.head.forward(self.features.forward(x))

    def backward(self, dlogits):
        return self.features.backward(self.head.backward(dlogits))


def evaluate(model, x, y):
    model.eval()
    with no_grad():
        logits = model(x)
    model.train()
    masks = F.resize_bilinear_forward(logits, y.shape[1:], align_corners=True)[0].argmax(axis=1)
    matrix = ConfusionMatrix(K + 1)
    matrix.add(y, masks)
    found = ConfusionMatrix(2)                    # object vs background, whatever the class
    found.add((y > 0).astype(np.int64), (masks > 0).astype(np.int64))
    return matrix.scores(), found.scores().iou[1], masks


manual_seed(0)
model = TinyDeepLab(K + 1)
before, _, _ = evaluate(model, x_test, y_test)
optimizer = AdamW(model.named_parameters(), lr=5e-3, weight_decay=1e-4)
batch_rng, losses = np.random.default_rng(0), []
for step in range(steps):
    idx = batch_rng.choice(n_train, 16, replace=False)
    flip = batch_rng.random(16) < 0.5              # mirror half the batch: masks with their images
    xb = np.where(flip[:, None, None, None], x_train[idx][..., ::-1], x_train[idx])
    yb = np.where(flip[:, None, None], y_train[idx][..., ::-1], y_train[idx])
    logits = model(xb)                                                   # (16, K+1, 6, 6)
    up, up_cache = F.resize_bilinear_forward(logits, (side, side), align_corners=True)
    loss, loss_cache = F.pixel_cross_entropy_forward(up, yb, ignore_index=-1)
    model.zero_grad()
    model.backward(F.resize_bilinear_backward(F.pixel_cross_entropy_backward(loss_cache), up_cache))
    optimizer.step()
    losses.append(loss)
after, object_iou, masks = evaluate(model, x_test, y_test)
print(f"held-out mIoU over {K + 1} classes: {before.miou:.3f} untrained -> {after.miou:.3f} "
      f"after {steps} steps; per class {np.round(after.iou, 3).tolist()}")
print(f"object-vs-background IoU: {object_iou:.3f}; pixel accuracy {after.pixel_accuracy:.3f}")
assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:5])
assert after.miou > before.miou + 0.15 and object_iou > 0.3

# %%
fig, axes = plt.subplots(3, 6, figsize=(12, 6.4))
names = ["background"] + train.class_names
for col in range(6):
    axes[0, col].imshow(test.images[col])
    axes[1, col].imshow(y_test[col], vmin=0, vmax=K, cmap="tab10", interpolation="nearest")
    axes[2, col].imshow(masks[col], vmin=0, vmax=K, cmap="tab10", interpolation="nearest")
    axes[0, col].set_title(test.class_names[test.labels[col]], fontsize=9)
for row, label in enumerate(["held-out image", "true mask", "predicted"]):
    axes[row, 0].set_ylabel(label)
for ax in axes.ravel():
    ax.set(xticks=[], yticks=[])
fig.suptitle(f"A DeepLabv3 head trained in NumPy for {steps} steps: held-out mIoU {after.miou:.2f} "
             f"(classes: {', '.join(names)})")
show(fig, "11_tiny_segmenter")

# %% [markdown]
# The network finds the objects long before it tells their shapes apart: the object-vs-
# background IoU rises first, the per-shape IoUs later (train longer, without NPVIT_FAST, to
# see them climb). The image-pooling branch is what lets one answer spread over the object: the
# class is a property of the whole shape, not of a 3x3 neighbourhood.
#
# **Summary.** Dilation keeps a stage's reach while it stops striding; ml-cvnets' rule
# (stride 1, running dilation, doubled for the v2 block) turns the classifier into an
# output-stride-16 or -8 backbone with the same weights. ASPP combines 1x1, three dilated 3x3
# and an image-level branch; PSPNet pools into 1/2/3/6 grids with overlapping bins. All of it
# has a hand-written backward, so the head trains in plain NumPy. The 26 released models run
# with `npvit segment` and are scored with `npvit eval` (README, "Segment").
