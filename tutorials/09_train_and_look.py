# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 9. Train your own MobileViT, then watch where it looks
#
# Every network so far had random weights (the official checkpoints cannot always be
# downloaded). Here a small MobileViTv2 learns from scratch, in NumPy, on a task with a known
# answer: `npvit.data.synthetic` draws ONE object of K shape classes at a random place on
# textured clutter and records its box. So two questions get exact answers:
#
# * **Did it learn?** Accuracy on held-out images, in eval mode (BatchNorm's running
#   statistics), with the confusion matrix and the learning curves.
# * **Does it look at the object?** The share of context-score mass (v2) or of received
#   attention (v1) that falls inside the object's box, for the same held-out images before and
#   after training, against the box's share of the image area (what a map that looks
#   everywhere equally would put there).
#
# On the way we derive the backward of that share (how the measured number moves when the map
# changes) and check it with finite differences. The same is then done for MobileViT v1.

# %%
import time

import numpy as np
from threadpoolctl import threadpool_limits

import npvit
from npvit import functional as F
from npvit import viz
from npvit.data.synthetic import make_synthetic
from npvit.gradcheck import relative_error   # max|a-b| / max(|a|, |b|), tutorial 4
from npvit.train import (AdamW, WarmupCosineSchedule, evaluate, train_one_epoch,
                         weight_decay_groups)
from npvit.train.curves import training_curves
from tutorial_setup import Exercises, FAST, plt, show

exercises = Exercises("09")          # solutions: tutorials/solutions/09_train_and_look.py
start_cpu, start_wall = time.process_time(), time.perf_counter()    # for the total at the end

# %% [markdown]
# ## The task and the budget
#
# The default run trains on the task's defaults, 64x64 images of 4 classes (cross, disc,
# square, triangle; docs/training_small_data.md measures what learns how fast there). In
# NPVIT_FAST mode (CI) the whole tutorial must run in about a minute on two shared cores, and
# 4 classes at 64 px need about ten times that to leave chance clearly (the same doc). So the
# task is made easier: 48 px images and two classes, the two most different shapes (cross and
# disc: the images of the other classes are left out), 1024 training images, and a few
# hundred steps of 16. The objects stay large (a radius of 0.22-0.32 of the side).

# %%
SEED = 0
if FAST:
    SIZE, CLASSES, N_TRAIN, N_VAL, EPOCHS, BATCH = 48, ("cross", "disc"), 1024, 200, 4, 16
    EPOCHS_V1 = 3                    # v1 trains fewer steps in FAST mode (the minute is shared)
    LR, WARMUP_EPOCHS = 3e-3, 0.5
    N_MASS = 40                      # held-out images the score mass is averaged over
else:                                # the loop measured in docs/synthetic_task.md
    SIZE, CLASSES, N_TRAIN, N_VAL, EPOCHS, BATCH = 64, ("cross", "disc", "square", "triangle"), \
        1600, 200, 12, 32
    EPOCHS_V1 = 12
    LR, WARMUP_EPOCHS = 2e-3, 1
    N_MASS = 200
K = len(CLASSES)
WEIGHT_DECAY = 0.01                  # AdamW from scratch, as `npvit finetune --recipe small`

# image i has class i % 4, so the classes kept make up K / 4 of the images drawn
data = make_synthetic(-(-(N_TRAIN + N_VAL) * 4 // K), size=SIZE, num_classes=4, seed=SEED)
kept = np.flatnonzero(np.isin(np.array(data.class_names)[data.labels], CLASSES))[:N_TRAIN + N_VAL]
images = data.images[kept]                                              # (n, H, W, 3) uint8
labels = np.searchsorted(CLASSES, np.array(data.class_names)[data.labels[kept]])  # (n,) in [0, K)
x_all = (images.astype(np.float32) / 255).transpose(0, 3, 1, 2)        # (n, 3, H, W) in [0, 1]
x_train, y_train = x_all[:N_TRAIN], labels[:N_TRAIN]
x_val, y_val, boxes_val = x_all[N_TRAIN:], labels[N_TRAIN:], data.boxes[kept][N_TRAIN:]
print(f"{N_TRAIN} training and {N_VAL} held-out images of {SIZE}x{SIZE}, classes {CLASSES}, "
      f"held-out per class {np.bincount(y_val, minlength=K).tolist()}")
area_share = np.array([viz.box_area_share(b, (SIZE, SIZE)) for b in boxes_val[:N_MASS]])
print(f"the boxes cover {area_share.mean():.1%} of the image on average")

# %%
def draw_box(ax, box, color="white"):
    x0, y0, x1, y1 = box
    # pixel EDGES: imshow puts pixel i's centre at i, so its edges at i - 0.5 and i + 0.5
    ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=color, lw=1.5))


fig, axes = plt.subplots(1, 6, figsize=(12, 2.3))
for ax, i in zip(axes, range(6)):
    ax.imshow(images[N_TRAIN + i])
    draw_box(ax, boxes_val[i])
    ax.set_title(CLASSES[y_val[i]], fontsize=9)
    ax.axis("off")
fig.suptitle("held-out images and their boxes (never trained on)", fontsize=10)
show(fig, "09_task")

# %% [markdown]
# ## The score mass inside the box, and its backward
#
# `npvit.viz.mass_in_box` turns a non-negative (m, n) map V (one layer's context scores,
# pixel-shuffled to the block's grid) into one number. Cell (i, j) covers an equal part of the
# image; `r_i` is the fraction of row band i inside the box's rows and `c_j` that of column
# band j inside its columns, so the mass inside the box is `r^T V c` and the share
#
#     s(V) = r^T V c / S,        S = sum_ij V_ij.
#
# A map that is the same everywhere gives exactly the box's area share. To know how a change
# of the scores moves s (and so which cells pull the share up), differentiate: the quotient
# rule gives
#
#     ds/dV_ij = (r_i c_j S - r^T V c) / S^2 = (r_i c_j - s) / S:
#
# a cell raises the share when more of it lies inside the box than the share already is.

# %%
def box_fractions(cells, length, low, high):
    """(cells,): the fraction of each of ``cells`` equal bands of [0, length) inside [low, high)."""
    edges = np.arange(cells + 1) * (length / cells)
    return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0, None) / (length / cells)


def share_by_hand(values, image_size, box):
    x0, y0, x1, y1 = box
    r = box_fractions(values.shape[0], image_size[0], y0, y1)      # (m,)
    c = box_fractions(values.shape[1], image_size[1], x0, x1)      # (n,)
    return float(r @ values @ c / values.sum()), (r, c)


rng = np.random.default_rng(0)
v_demo = rng.random((6, 6))                          # a 6x6 map: 48 px at output stride 8
box_demo = boxes_val[0].astype(np.float64)
s_demo, (r_demo, c_demo) = share_by_hand(v_demo, (SIZE, SIZE), box_demo)
err = abs(s_demo - viz.mass_in_box(v_demo, (SIZE, SIZE), box_demo))
print(f"share by hand {s_demo:.6f}, npvit.viz.mass_in_box's: relative error {err / s_demo:.1e}")
assert err < 1e-14

# %% [markdown]
# ### Exercise: the share's gradient
#
# Write `share_backward(values, r, c)`, the (m, n) gradient ds/dV of `s = r^T V c / sum(V)`
# (derived above). The checker compares it with central finite differences of
# `npvit.viz.mass_in_box`.

# %%
def share_backward(values, r, c):
    raise NotImplementedError


def check_share_backward(candidate):
    got = np.asarray(candidate(v_demo, r_demo, c_demo), np.float64)
    assert got.shape == v_demo.shape, f"the gradient must have the map's shape, got {got.shape}"
    h = 1e-6
    numeric = np.zeros_like(v_demo)
    for idx in np.ndindex(v_demo.shape):
        plus, minus = v_demo.copy(), v_demo.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (viz.mass_in_box(plus, (SIZE, SIZE), box_demo)
                        - viz.mass_in_box(minus, (SIZE, SIZE), box_demo)) / (2 * h)
    assert relative_error(got, numeric) < 1e-6, "differs from finite differences of mass_in_box"


exercises.check(share_backward, check_share_backward)

# %% [markdown]
# The tutorial's own check, the formula against finite differences, whatever the exercise's
# state: the gradient sums to zero over the cells weighted by V (scaling V changes nothing).

# %%
grad_demo = (np.outer(r_demo, c_demo) - s_demo) / v_demo.sum()
fd = np.zeros_like(v_demo)
for idx in np.ndindex(v_demo.shape):
    step = np.zeros_like(v_demo)
    step[idx] = 1e-6
    fd[idx] = (share_by_hand(v_demo + step, (SIZE, SIZE), box_demo)[0]
               - share_by_hand(v_demo - step, (SIZE, SIZE), box_demo)[0]) / 2e-6
print(f"ds/dV: relative error to finite differences {relative_error(grad_demo, fd):.1e}; "
      f"sum_ij V_ij ds/dV_ij = {np.sum(v_demo * grad_demo):.1e}")
assert relative_error(grad_demo, fd) < 1e-7 and abs(np.sum(v_demo * grad_demo)) < 1e-12

# %% [markdown]
# ## Where an untrained network looks
#
# The measured summary is `viz.mean_share`: the share inside the box averaged over every
# transformer layer whose grid has more than one patch (a 1-patch softmax is always 1 and
# measures nothing). Before training, on the held-out images:

# %%
def mean_box_share(model, n=N_MASS):
    """(n,): each held-out image's mean share of attention inside its box."""
    return np.array([viz.mean_share(viz.score_mass_in_box(model, x_val[i], boxes_val[i]))
                     for i in range(n)])


def finest_map(model, i):
    """The (SIZE, SIZE) map of the stride-8 block's last layer for held-out image i, the
    context scores (v2) or the attention each patch receives (v1), upsampled."""
    _, records = viz.run_with_capture(model, x_val[i][None])
    record = [r for r in records if r.stride == 8][-1]
    return viz.upsample_nearest(viz.mass.attention_mass_map(record), (SIZE, SIZE))


models = {"v2": npvit.create_model("mobilevitv2_050", num_classes=K, seed=SEED)}
untrained = {"v2": npvit.create_model("mobilevitv2_050", num_classes=K, seed=SEED)}  # kept as is
share_before = {"v2": mean_box_share(untrained["v2"])}
print(f"untrained mobilevitv2_050: {share_before['v2'].mean():.3f} of the score mass inside "
      f"the box (box's area share {area_share.mean():.3f})")

# %% [markdown]
# ## Training
#
# The loop of tutorial 6 through `npvit.train`: AdamW with weight decay on the weights only,
# a cosine schedule with one epoch of linear warm-up, random horizontal flips, no label
# smoothing (docs/training_small_data.md: smoothing only slows a model far from over-confident).
# After every epoch the held-out images are evaluated in EVAL mode. (In FAST mode: a larger
# peak lr, 3e-3, and half an epoch of warm-up, for the few steps there are.)

# %%
def batches(epoch):
    """One epoch of (x, y) batches: a seeded shuffle and random horizontal flips."""
    rng = np.random.default_rng([SEED, epoch])
    order = rng.permutation(N_TRAIN)
    out = []
    for start in range(0, N_TRAIN - BATCH + 1, BATCH):
        idx = order[start:start + BATCH]
        x = x_train[idx].copy()
        flip = rng.random(len(idx)) < 0.5
        x[flip] = x[flip][..., ::-1]
        out.append((x, y_train[idx]))
    return out


val_batches = [(x_val[i:i + 50], y_val[i:i + 50]) for i in range(0, N_VAL, 50)]


def train(model, epochs):
    steps = N_TRAIN // BATCH
    opt = AdamW(weight_decay_groups(model.named_parameters(), WEIGHT_DECAY), lr=LR)
    sched = WarmupCosineSchedule(opt, LR, total_steps=epochs * steps,
                                 warmup_steps=int(WARMUP_EPOCHS * steps), min_lr=LR / 100)
    lrs = [sched.lr_at(t) for t in range(epochs * steps)]
    history, cpu, wall = [], time.process_time(), time.perf_counter()
    for epoch in range(epochs):
        # one BLAS thread: these matrices are small, and on a shared machine more threads only
        # wait for each other (without the limit, a run here used over five times the CPU time)
        with threadpool_limits(limits=1):
            tr = train_one_epoch(model, batches(epoch), opt, sched, desc=f"epoch {epoch + 1}")
            ev = evaluate(model, val_batches, progress=False)
        history.append({"epoch": epoch + 1, "train_loss": tr["loss"], "train_ce": tr["ce"],
                        "train_acc": tr["accuracy"], "val_loss": ev["loss"],
                        "val_acc": ev["accuracy"]})
        print(f"epoch {epoch + 1}/{epochs}: train loss {tr['loss']:.3f} acc {tr['accuracy']:.1%}"
              f" | held-out loss {ev['loss']:.3f} acc {ev['accuracy']:.1%}")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{epochs * steps} steps of {BATCH} images: {cpu:.0f} s CPU, {wall:.0f} s wall")
    return history, lrs, steps


history, lrs, steps = {}, {}, {}
history["v2"], lrs["v2"], steps["v2"] = train(models["v2"], EPOCHS)

# %%
show(training_curves(history["v2"], lrs["v2"], steps["v2"], K, 0.0,
                     title=f"mobilevitv2_050 from scratch, {SIZE}x{SIZE}, {K} classes"),
     "09_curves_v2")

# %% [markdown]
# ### Exercise: the gradient that trains the classifier
#
# Every step above back-propagated the mean cross-entropy `L = -mean_n log softmax(z_n)[y_n]` of
# the logits z (N, K). Write `cross_entropy_grad(z, y)`, the (N, K) gradient dL/dz. (Hint: a row
# is softmax(z_n) minus the one-hot vector of y_n, and the mean divides every row by N.) The
# checker compares it with npvit's `cross_entropy_backward` and with central finite
# differences of `cross_entropy_forward`.

# %%
def cross_entropy_grad(z, y):
    raise NotImplementedError


z_demo = np.random.default_rng(9).normal(size=(5, K))     # (N, K) logits
y_demo = np.arange(5) % K                                 # (N,) labels


def check_cross_entropy_grad(candidate):
    got = np.asarray(candidate(z_demo.copy(), y_demo), np.float64)
    assert got.shape == z_demo.shape, f"the gradient must have the logits' shape, got {got.shape}"
    _, cache = F.cross_entropy_forward(z_demo, y_demo)
    assert relative_error(got, F.cross_entropy_backward(cache)) < 1e-12, \
        "differs from npvit's cross_entropy_backward"
    h = 1e-6
    numeric = np.zeros_like(z_demo)
    for idx in np.ndindex(z_demo.shape):
        plus, minus = z_demo.copy(), z_demo.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (F.cross_entropy_forward(plus, y_demo)[0]
                        - F.cross_entropy_forward(minus, y_demo)[0]) / (2 * h)
    assert relative_error(got, numeric) < 1e-6, "differs from finite differences"


exercises.check(cross_entropy_grad, check_cross_entropy_grad)

# %% [markdown]
# ## Held-out accuracy and the confusion matrix
#
# Entry (t, p) counts the held-out images of true class t predicted as p, in eval mode.

# %%
def confusion(model):
    model.eval()
    with npvit.nn.no_grad():
        predicted = np.concatenate([model(x).argmax(axis=1) for x, _ in val_batches])
    matrix = np.zeros((K, K), np.int64)
    np.add.at(matrix, (y_val, predicted), 1)
    return matrix


def draw_confusion(ax, matrix, title):
    ax.imshow(matrix, cmap="Blues")
    for (t, p), count in np.ndenumerate(matrix):
        ax.text(p, t, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=range(K), yticks=range(K), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(CLASSES, fontsize=8)
    ax.set_yticklabels(CLASSES, fontsize=8)


matrix = {"v2": confusion(models["v2"])}
accuracy = {"v2": np.trace(matrix["v2"]) / N_VAL}
assert matrix["v2"].sum() == N_VAL and np.isclose(accuracy["v2"], history["v2"][-1]["val_acc"])
print(f"mobilevitv2_050 held-out accuracy {accuracy['v2']:.1%} (chance {1 / K:.1%})")

# %% [markdown]
# ## Where the trained network looks
#
# The same held-out images before and after training: the stride-8 block's last context-score
# map (the finest), with the object's box. The number above each map is that image's share of
# score mass inside the box (all informative layers), to compare with the box's area share.
# (Colours: each map from its own minimum, blue, to its maximum, red.)

# %%
def looks_figure(key, title, n_show=5):
    fig, axes = plt.subplots(3, n_show, figsize=(2.1 * n_show, 6.6))
    for col in range(n_show):
        box = boxes_val[col]
        axes[0, col].imshow(images[N_TRAIN + col])
        axes[0, col].set_title(f"{CLASSES[y_val[col]]}, box {area_share[col]:.0%} "
                               "of area", fontsize=8)
        for row, (model, shares, what) in enumerate(
                ((untrained[key], share_before[key], "untrained"),
                 (models[key], share_after[key], "trained")), start=1):
            axes[row, col].imshow(finest_map(model, col), cmap="jet")
            axes[row, col].set_title(f"{what}: {shares[col]:.0%} in box", fontsize=8)
        for ax in axes[:, col]:
            draw_box(ax, box)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig


share_after = {"v2": mean_box_share(models["v2"])}
show(looks_figure("v2", "mobilevitv2_050: stride-8 context scores before (middle) and after "
                  "(bottom) training"), "09_scores_v2")


def report_shares(key, name):
    before, after, area = share_before[key].mean(), share_after[key].mean(), area_share.mean()
    print(f"{name}, mean over {N_MASS} held-out images: share inside the box trained {after:.3f}, "
          f"untrained {before:.3f}, box's area share {area:.3f}; trained / untrained "
          f"{after / before:.2f}, trained / area {after / area:.2f}")
    return after / before, after / area


ratios = {"v2": report_shares("v2", "mobilevitv2_050")}

# %% [markdown]
# Read the numbers as measured, not as hoped: a classifier can be right while its attention
# stays spread out, because its convolutions alone can find the shape. At these input sizes the
# stride-8 grid has only 3x3 (48 px) or 4x4 (64 px) patches and the stride-16 grid 2x2. In
# FAST mode (seed 0) the trained share came out at 0.99x the box's area share and 0.94x the
# untrained one: no concentration on the object after a few hundred steps.
# docs/training_small_data.md measured the 64 px case after a full 20-epoch run at 98.5-99 %
# held-out: trained / untrained 1.16 for v2 and 1.09 for v1, so the 2x target of issue 17 is
# not met there either.

# %% [markdown]
# ## The same for MobileViT v1
#
# mobilevit_xxs has multi-head attention; what is measured is the attention each patch
# RECEIVES (averaged over heads and query patches), the v1 counterpart of a context score.
# In FAST mode it trains 3 epochs instead of v2's 4, to keep the tutorial near a minute.

# %%
models["v1"] = npvit.create_model("mobilevit_xxs", num_classes=K, seed=SEED)
untrained["v1"] = npvit.create_model("mobilevit_xxs", num_classes=K, seed=SEED)
share_before["v1"] = mean_box_share(untrained["v1"])
history["v1"], lrs["v1"], steps["v1"] = train(models["v1"], EPOCHS_V1)
matrix["v1"] = confusion(models["v1"])
accuracy["v1"] = np.trace(matrix["v1"]) / N_VAL
share_after["v1"] = mean_box_share(models["v1"])
print(f"mobilevit_xxs held-out accuracy {accuracy['v1']:.1%} after {EPOCHS_V1} epochs")
ratios["v1"] = report_shares("v1", "mobilevit_xxs")

# %%
show(training_curves(history["v1"], lrs["v1"], steps["v1"], K, 0.0,
                     title=f"mobilevit_xxs from scratch, {SIZE}x{SIZE}, {K} classes"),
     "09_curves_v1")
show(looks_figure("v1", "mobilevit_xxs: stride-8 received attention before (middle) and after "
                  "(bottom) training"), "09_attention_v1")

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
draw_confusion(axes[0], matrix["v2"], f"mobilevitv2_050: {accuracy['v2']:.1%} held-out")
draw_confusion(axes[1], matrix["v1"], f"mobilevit_xxs: {accuracy['v1']:.1%} held-out")
fig.tight_layout()
show(fig, "09_confusion")

# %% [markdown]
# ## Did it learn? The asserted margin
#
# In FAST mode this configuration was run with SEED = 0, 1 and 2 (this file, nothing else
# changed): mobilevitv2_050 reached 78.5, 71.0 and 73.5 % held-out (chance 50 %), and
# mobilevit_xxs after its 3 epochs 72.5, 48.0 and 65.5 %. So the tutorial asserts v2's accuracy
# above chance + 12 points (62 %): 9 points below the worst seed, about three binomial standard
# deviations of an accuracy on 200 images. v1's short run is not reliably above chance (one seed
# of three was at chance), so it is printed, not asserted. The default configuration is the
# loop of docs/synthetic_task.md, where v2 reached 94.5 % and xxs 94.0 % held-out after 12
# epochs; the same 12-point margin is asserted there (not re-measured with this file).

# %%
MARGIN = 0.12          # measured: FAST-mode v2 held-out 78.5 / 71.0 / 73.5 % over seeds 0, 1, 2
for key, name in (("v2", "mobilevitv2_050"), ("v1", "mobilevit_xxs")):
    print(f"{name}: held-out {accuracy[key]:.1%} (chance {1 / K:.1%})")
print(f"asserted for mobilevitv2_050: above {1 / K + MARGIN:.0%}")
assert accuracy["v2"] > 1 / K + MARGIN
print(f"the whole tutorial: {time.process_time() - start_cpu:.0f} s CPU, "
      f"{time.perf_counter() - start_wall:.0f} s wall")
