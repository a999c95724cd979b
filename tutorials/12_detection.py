# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 12. Object detection: anchors, NMS, matching, and a detector trained in NumPy
#
# The MobileViT papers' third task is COCO detection with **SSDLite**: a backbone, a few extra
# stride-2 layers, and at each of six feature maps a small head that predicts, for every
# **anchor** (a fixed box) at every location, 4 box offsets and 81 class scores (80 COCO
# classes + background). npvit builds the 11 released detectors
# (`npvit.list_models("detection")`). This tutorial takes the pieces apart:
#
# 1. the anchors, exactly as ml-cvnets generates them, drawn on a photo;
# 2. decoding offsets into boxes, and non-maximum suppression (NMS);
# 3. matching anchors to a ground-truth box: which anchors learn what;
# 4. the multibox loss with hard negative mining;
# 5. a tiny SSD-style detector trained in NumPy on synthetic shapes, with its COCO AP on
#    held-out images.

# %%
import numpy as np
from matplotlib.patches import Rectangle

import npvit
from npvit.data import example_image_path, load_image, preprocess_resized
from npvit.data.synthetic import make_synthetic
from npvit.detection.coco_map import coco_evaluate
from npvit.detection.multibox_loss import (box_iou, match_anchors, multibox_loss_backward,
                                           multibox_loss_forward)
from npvit.models.ssd_anchors import anchors_per_location, ssd_anchors
from npvit.models.ssd_boxes import (PostProcess, batched_nms, center_to_corner, decode_boxes,
                                    nms, postprocess)
from npvit import functional as F
from npvit.gradcheck import numeric_gradient, relative_error
from npvit.nn import Conv2d, ConvNormAct, Module, Sequential, manual_seed
from npvit.train.optim import AdamW
from tutorial_setup import Exercises, FAST, plt, show

exercises = Exercises("12")          # solutions: tutorials/solutions/12_detection.py

# %% [markdown]
# ## 1. Anchors
#
# At a 320x320 input the six heads read maps of 20x20, 10x10, 5x5, 3x3, 2x2 and 1x1. Level
# *i* has a base scale `s_i` from `linspace(0.1, 1.05, 7)` (fractions of the image side); each
# location gets two squares (`s_i` and `sqrt(s_i s_{i+1})`) and, per aspect ratio r in (2, 3),
# a wide and a tall box of area `s_i^2`: 6 anchors (4 on the last level, ratio 2 only). Anchors
# are (cx, cy, w, h) in [0, 1], clipped, ordered level by level, row-major, slot by slot — the
# same order as the network's outputs.

# %%
detector = npvit.create_model("ssdlite_mobilevitv2_050_coco", seed=0)
sizes = detector.feature_sizes(320, 320)
anchors = detector.anchors(320, 320).astype(np.float64)              # (3232, 4)
counts = [h * w * k for (h, w), k in zip(sizes, anchors_per_location())]
print("feature maps", sizes)
print("anchors per level", counts, "total", len(anchors))
assert len(anchors) == sum(counts) == 3232
starts = np.cumsum([0] + counts)

photo = load_image(example_image_path())
picture = preprocess_resized(photo, "cvnets-v2", 320, 320).transpose(1, 2, 0)   # (320, 320, 3)


def draw_box(ax, box, colour, scale=320, **kw):
    """box (x1, y1, x2, y2) normalised -> a rectangle in pixels."""
    x1, y1, x2, y2 = np.asarray(box) * scale
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, **kw))


fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
for ax, level in zip(axes, (0, 2, 4)):
    h, w = sizes[level]
    k = anchors_per_location()[level]
    block = anchors[starts[level]:starts[level + 1]].reshape(h, w, k, 4)
    ax.imshow(picture)
    ax.scatter(block[:, :, 0, 0].ravel() * 320, block[:, :, 0, 1].ravel() * 320, s=4, c="w")
    for slot, colour in zip(range(k), ["#ff7f0e", "#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#8c564b"]):
        draw_box(ax, center_to_corner(block[h // 2, w // 2, slot]), colour, linewidth=2)
    ax.set_title(f"level {level}: {h}x{w} locations, {k} anchors each")
    ax.axis("off")
show(fig, "12_anchors")

# %% [markdown]
# ## 2. From offsets to boxes, and NMS
#
# The head predicts offsets t relative to each anchor a, scaled by the SSD "variances" 0.1 and
# 0.2: `cx = a_cx + 0.1 t_x a_w`, `w = a_w exp(0.2 t_w)` (the same for y and h). Offsets of
# zero give back the anchor itself.

# %%
assert np.allclose(decode_boxes(np.zeros((1, len(anchors), 4)), anchors)[0], center_to_corner(anchors))

# %% [markdown]
# A trained detector fires on many overlapping anchors around each object. **NMS** keeps the
# best-scoring box, removes every other box of the same class whose IoU with it exceeds 0.5,
# and repeats. Here: 40 noisy candidates around two "objects" of the photo.

# %%
rng = np.random.default_rng(0)
objects = np.array([[0.3, 0.1, 0.72, 0.55], [0.05, 0.6, 0.5, 0.98]])
candidates = np.concatenate([obj + rng.normal(scale=0.03, size=(20, 4)) for obj in objects])
scores = rng.uniform(0.3, 1.0, size=len(candidates))
kept = nms(candidates, scores, iou_threshold=0.5)
print(f"NMS keeps {len(kept)} of {len(candidates)} boxes, scores {np.round(scores[kept], 2)}")

# the properties that define it: kept boxes overlap each other at most 0.5, and every dropped
# box overlaps a kept box of higher score by more than 0.5
iou = box_iou(candidates, candidates, eps=0)
assert all(iou[i, j] <= 0.5 for i in kept for j in kept if i != j)
for j in set(range(len(candidates))) - set(kept):
    assert any(iou[i, j] > 0.5 and scores[i] >= scores[j] for i in kept)
# per class: the same boxes under two labels are suppressed only within each label
doubled = batched_nms(np.concatenate([candidates] * 2), np.concatenate([scores] * 2),
                      np.repeat([1, 2], len(candidates)), 0.5)
assert len(doubled) == 2 * len(kept)

# %% [markdown]
# **Exercise.** Write greedy NMS yourself: repeatedly take the best remaining box, keep it,
# and drop every remaining box whose IoU with it is greater than the threshold. Return the kept
# indices, best first; equal scores keep their index order. The checker compares with
# `npvit.models.ssd_boxes.nms` (which equals torchvision's) on boxes with ties, duplicates and
# IoUs of exactly 0.5.

# %%
def nms_by_hand(boxes, scores, iou_threshold):
    """boxes (N, 4) x1, y1, x2, y2; scores (N,) -> int indices of the kept boxes, best first."""
    raise NotImplementedError


def check_nms_by_hand(candidate):
    grid = np.random.default_rng(1)
    for _ in range(5):
        xy = grid.integers(0, 8, size=(30, 2)) / 2
        boxes = np.concatenate([xy, xy + grid.integers(1, 5, size=(30, 2)) / 2], axis=1)
        boxes[:3] = [[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 2, 1]]       # IoU exactly 0.5, and 1
        ties = grid.integers(0, 6, size=30) / 6.0
        ours = np.asarray(candidate(boxes, ties, 0.5))
        expected = nms(boxes, ties, 0.5)
        assert ours.tolist() == expected.tolist(), f"kept {ours.tolist()}, expected {expected.tolist()}"


exercises.check(nms_by_hand, check_nms_by_hand)

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
for ax, title, which in zip(axes, ("40 candidates", f"after NMS: {len(kept)}"),
                            (range(len(candidates)), kept)):
    ax.imshow(picture)
    for i in which:
        draw_box(ax, candidates[i], plt.cm.viridis(scores[i]), linewidth=1.5)
    ax.set_title(title)
    ax.axis("off")
show(fig, "12_nms")

# %% [markdown]
# ## 3. Matching anchors to ground truth
#
# Training needs a target for every anchor. ml-cvnets' SSD matcher: each anchor takes the
# ground-truth box it overlaps most; anchors with IoU < 0.5 become **background**; and every
# box claims its single best anchor even below 0.5, so no object goes unlearned. Positive
# anchors regress the offsets that would turn them into their box.

# %%
scene = make_synthetic(1, size=320, num_classes=4, seed=3)
truth = scene.boxes[0] / 320                                         # (4,) normalised xyxy
offsets, labels = match_anchors(truth[None], scene.labels[:1] + 1, anchors)
positive = np.flatnonzero(labels > 0)
ious = box_iou(center_to_corner(anchors[positive]), truth[None])[:, 0]
level_of = np.searchsorted(starts, positive, side="right") - 1
print(f"a {scene.class_names[scene.labels[0]]}: {len(positive)} positive anchors, "
      f"IoU {ious.min():.2f}..{ious.max():.2f}, per level {np.bincount(level_of, minlength=6)}")
assert len(positive) >= 1 and (ious >= 0.5).sum() >= len(positive) - 1
# decoding a positive anchor's target offsets gives the ground-truth box back
assert np.allclose(decode_boxes(offsets[positive][None], anchors[positive])[0], truth, atol=1e-6)

fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.imshow(scene.images[0])
for i in positive:
    draw_box(ax, center_to_corner(anchors[i]), "#1f77b4", linewidth=1)
draw_box(ax, truth, "#d62728", linewidth=3)
ax.set_title("ground truth (red) and its positive anchors")
ax.axis("off")
show(fig, "12_matching")

# %% [markdown]
# ## 4. The multibox loss
#
# Box loss: smooth L1 between predicted and target offsets of the positive anchors. Class
# loss: cross-entropy over the positives **and** the hardest negatives, 3 per positive (those
# the network most wrongly thinks are objects); the thousands of easy background anchors are
# left out, or they would swamp the few objects. Both are divided by the number of positives.
# `multibox_loss_backward` gives the gradients for the network's two outputs.

# %%
fake_offsets = rng.normal(size=(1, len(anchors), 4))
fake_logits = rng.normal(size=(1, len(anchors), 81))
loss, cache = multibox_loss_forward(fake_offsets, fake_logits, offsets[None], labels[None])
dboxes, dlogits = multibox_loss_backward(cache)
used = np.flatnonzero(np.abs(dlogits[0]).sum(-1) > 0)
print(f"loss {loss.total:.3f} = box {loss.box:.3f} + class {loss.cls:.3f}; the class loss "
      f"uses {len(used)} anchors = {len(positive)} positives + 3 x {len(positive)} negatives")
assert len(used) == 4 * len(positive) and np.abs(dboxes[0, labels == 0]).sum() == 0

# %% [markdown]
# ### The box loss's backward, by hand
#
# With d = pred - target per number, `l(d) = 0.5 d^2 / beta` for |d| < beta and
# `|d| - 0.5 beta` elsewhere, so `l'(d) = d / beta` inside and `sign(d)` outside. The two
# pieces meet with equal value and slope at |d| = beta (d / beta = +-1 there), so unlike L1 the
# loss is differentiable everywhere and finite differences need no care at the seam; only
# l'' jumps. The box loss sums l over the positive anchors' offsets and divides by their number,
# so its gradient is `l'(d) / num_pos` on the positives and exactly 0 on every other anchor.

# %%
def smooth_l1_backward_by_hand(pred, target, beta=1.0):
    """pred, target: any same shape -> d(sum of l(pred - target)) / d pred."""
    d = pred - target
    return np.where(np.abs(d) < beta, d / beta, np.sign(d))


r_l1 = np.random.default_rng(5)          # its own generator: the training below draws from rng
small_pred, small_target = r_l1.normal(size=(5, 4)) * 1.5, r_l1.normal(size=(5, 4))
ours = smooth_l1_backward_by_hand(small_pred, small_target)
num, _ = numeric_gradient(lambda: np.array(F.smooth_l1_forward(small_pred, small_target)[0]),
                          small_pred, np.array(1.0))
errs = {"vs finite differences": relative_error(ours.reshape(-1), num),
        "vs npvit smooth_l1_backward": relative_error(
            ours, F.smooth_l1_backward(F.smooth_l1_forward(small_pred, small_target)[1]))}
# and inside the multibox loss: l'(d) / num_pos on the positives, nothing elsewhere
box_grad = np.zeros_like(fake_offsets[0])
box_grad[positive] = smooth_l1_backward_by_hand(fake_offsets[0, positive], offsets[positive]) / len(positive)
errs["vs multibox_loss_backward"] = relative_error(box_grad, dboxes[0])
print({k: f"{v:.1e}" for k, v in errs.items()})
assert errs["vs finite differences"] < 1e-8
assert errs["vs npvit smooth_l1_backward"] < 1e-15 and errs["vs multibox_loss_backward"] < 1e-14

# %% [markdown]
# **Exercise.** Write the IoU matrix of two sets of corner boxes (x1, y1, x2, y2) with
# broadcasting, no loops: the intersection is the box from the larger top-left corner to the
# smaller bottom-right one, and its width and height are 0, not negative, when the boxes do not
# overlap. The checker compares with `npvit.detection.multibox_loss.box_iou` (ml-cvnets'
# arithmetic, with eps = 0) on overlapping, nested, touching and disjoint boxes.

# %%
def box_iou_by_hand(boxes_a, boxes_b):
    """boxes_a (M, 4), boxes_b (K, 4) corner boxes of positive area -> (M, K) IoU."""
    raise NotImplementedError


def check_box_iou_by_hand(candidate):
    r = np.random.default_rng(12)
    xy = r.uniform(0, 1, size=(9, 2))
    a = np.concatenate([xy, xy + r.uniform(0.05, 0.5, size=(9, 2))], axis=1)
    b = np.array([[0, 0, 1, 1], [0.2, 0.2, 0.4, 0.4], [1, 0, 2, 1], [3, 3, 4, 4], [-1, -1, 0.1, 0.1]])
    for first, second in ((a, b), (b, b), (a, a)):
        ours = np.asarray(candidate(first, second))
        assert ours.shape == (len(first), len(second)), f"shape {ours.shape}, expected {(len(first), len(second))}"
        assert relative_error(ours, box_iou(first, second, eps=0)) < 1e-12, \
            "IoU differs from npvit's box_iou (are disjoint boxes' overlaps clipped at 0?)"
    assert np.allclose(np.diag(np.asarray(candidate(a, a))), 1.0), "a box's IoU with itself must be 1"


exercises.check(box_iou_by_hand, check_box_iou_by_hand)

# %% [markdown]
# ## 5. A tiny detector, trained in NumPy
#
# The released SSDLite detectors train for 200 epochs on COCO; here a small SSD of the same
# design learns the synthetic shapes task (one object of 4 classes on clutter, box recorded):
# four stride-2 ConvNormAct layers to a 4x4 map, two more stride-2 layers (2x2, 1x1), and a
# 3x3 conv head per level predicting 4 offsets + 5 scores (4 classes + background) for 4 anchors
# per location. Anchors come from the same generator with three levels and scales 0.3-0.95.
# Every layer is npvit's, so forward and backward are the hand-written ones.

# %%
SIZE, K = 64, 4
LEVELS = [(4, 4), (2, 2), (1, 1)]
tiny_anchors = ssd_anchors(LEVELS, aspect_ratios=((2,),) * 3, min_scale=0.3, max_scale=0.95)


class Head(Module):
    """(B, C, h, w) -> (B, h*w*A, 4 + K + 1), the SSD head's layout."""

    def __init__(self, chs, num_anchors):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = Conv2d(chs, num_anchors * (5 + K), 3, padding=1)

    def forward(self, x):
        y = self.conv.forward(x)
        self.save_cache(y.shape)
        b, _, h, w = y.shape
        return y.transpose(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, 5 + K)

    def backward(self, dy):
        b, c, h, w = self.pop_cache()
        return self.conv.backward(np.ascontiguousarray(dy.reshape(b, h, w, c).transpose(0, 3, 1, 2)))


class TinySSD(Module):
    def __init__(self):
        super().__init__()
        self.body = Sequential(ConvNormAct(3, 16, 3, stride=2), ConvNormAct(16, 32, 3, stride=2),
                               ConvNormAct(32, 48, 3, stride=2), ConvNormAct(48, 64, 3, stride=2))
        self.down1 = ConvNormAct(64, 64, 3, stride=2)
        self.down2 = ConvNormAct(64, 64, 3, stride=2)
        self.heads = Sequential(Head(64, 4), Head(64, 4), Head(64, 4))

    def forward(self, x):
        f0 = self.body.forward(x)
        f1 = self.down1.forward(f0)
        f2 = self.down2.forward(f1)
        out = np.concatenate([h.forward(f) for h, f in zip(self.heads, (f0, f1, f2))], axis=1)
        return out[..., :4], out[..., 4:]

    def backward(self, dboxes, dlogits):
        parts = np.split(np.concatenate([dboxes, dlogits], -1), [64, 80], axis=1)
        d2, d1, d0 = (h.backward(p) for h, p in zip(reversed(self.heads), reversed(parts)))
        d1 = self.down2.backward(d2) + d1
        return self.body.backward(self.down1.backward(d1) + d0)


def as_input(images):
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255     # (n, 3, 64, 64) RGB


def coco_truth(data):
    """The held-out set as a COCO instances dict (category id = class + 1)."""
    annotations = [{"id": i + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0))}
                   for i, (c, (x0, y0, x1, y1)) in enumerate(zip(data.labels, data.boxes))]
    return {"images": [{"id": i} for i in range(len(data.labels))], "annotations": annotations,
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(data.class_names)]}


RULE = PostProcess("tiny", score_threshold=0.01, top_k_per_class=100, iou_threshold=0.5,
                   max_per_class=0, max_per_image=20)


def detections(model, data):
    """Detections of every image as COCO results (boxes in pixels)."""
    model.eval()
    offsets, logits = model(as_input(data.images))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    boxes = np.clip(decode_boxes(offsets, tiny_anchors.astype(np.float32)), 0, 1) * SIZE
    results = []
    for i in range(len(boxes)):
        for (x1, y1, x2, y2), score, label in zip(*postprocess(boxes[i], p[i], RULE)):
            results.append({"image_id": i, "category_id": int(label), "score": float(score),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    return results


manual_seed(0)
tiny = TinySSD()
train = make_synthetic(512 if FAST else 2048, size=SIZE, num_classes=K, seed=1)
held_out = make_synthetic(64 if FAST else 256, size=SIZE, num_classes=K, seed=2)
truth_coco = coco_truth(held_out)
before = coco_evaluate(truth_coco, detections(tiny, held_out))
targets = [match_anchors(train.boxes[i:i + 1] / SIZE, train.labels[i:i + 1] + 1, tiny_anchors)
           for i in range(len(train.labels))]
target_offsets = np.stack([t[0] for t in targets]).astype(np.float32)
target_labels = np.stack([t[1] for t in targets])

opt = AdamW(tiny.named_parameters(), lr=3e-3, weight_decay=1e-4)
epochs, batch, history = (6 if FAST else 12), 32, []
for epoch in range(epochs):
    tiny.train()
    for idx in np.split(rng.permutation(len(train.labels)), len(train.labels) // batch):
        offsets_pred, logits_pred = tiny(as_input(train.images[idx]))
        loss, cache = multibox_loss_forward(offsets_pred, logits_pred, target_offsets[idx],
                                            target_labels[idx])
        tiny.zero_grad()
        tiny.backward(*multibox_loss_backward(cache))
        opt.step()
        history.append((loss.box, loss.cls))
    print(f"epoch {epoch + 1}: box loss {loss.box:.3f}, class loss {loss.cls:.3f}")

after = coco_evaluate(truth_coco, detections(tiny, held_out))
print(f"held-out COCO AP: untrained {before['AP']:.3f} (AP50 {before['AP50']:.3f}), "
      f"trained {after['AP']:.3f} (AP50 {after['AP50']:.3f})")
assert after["AP50"] > before["AP50"] + 0.1

# %% [markdown]
# The curves, and the best detection on some held-out images (red: ground truth).

# %%
results = detections(tiny, held_out)
fig, axes = plt.subplots(1, 5, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1.6, 1, 1, 1, 1]})
box_loss, cls_loss = np.array(history).T
axes[0].plot(box_loss, label="box (smooth L1)")
axes[0].plot(cls_loss, label="class (CE, 3:1 mining)")
axes[0].set_xlabel("step")
axes[0].legend()
for ax, i in zip(axes[1:], range(4)):
    ax.imshow(held_out.images[i])
    draw_box(ax, held_out.boxes[i] / SIZE, "#d62728", scale=SIZE, linewidth=2)
    mine = [r for r in results if r["image_id"] == i]
    if mine:
        best = max(mine, key=lambda r: r["score"])
        x, y, w, h = best["bbox"]
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="#2ca02c", linewidth=2))
        ax.set_title(f"{held_out.class_names[best['category_id'] - 1]} {best['score']:.2f}",
                     fontsize=9)
    ax.axis("off")
show(fig, "12_tiny_detector")

# %% [markdown]
# The released detectors are the same recipe at scale: `npvit detect photo.jpg` runs
# `ssdlite_mobilevitv2_050_coco` (its official weights once downloaded), and
# `npvit eval coco/` reproduces the model zoo's mAP where COCO val2017 is at hand.
