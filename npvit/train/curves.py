"""The learning-curve figure of a run: loss, accuracy and the learning rate, per epoch.

    fig = training_curves(history, lrs, steps_per_epoch, num_classes, label_smoothing)

``history`` is the run's epoch log (one dict per finished epoch, as npvit finetune writes in
run.json): ``train_loss`` (label smoothed, train mode: what was minimised), ``train_ce`` (plain
cross-entropy of the same training logits), ``val_loss`` and ``val_acc`` (plain cross-entropy
and accuracy on held-out images in eval mode, absent without them) and ``train_acc``.
``lrs`` is the learning rate of every optimisation step of the whole run (the schedule is known
in advance), drawn with the finished part solid.

Two reference lines keep the loss readable: chance, ln K (a model that knows nothing), and the
label-smoothing floor, the smallest loss a smoothed target allows (the entropy of the target:
a perfect model's smoothed training loss stays above it, which is why that curve flattens).
"""
from __future__ import annotations

import math

from matplotlib.figure import Figure     # no pyplot: no backend, no window, nothing global


def smoothing_floor(num_classes: int, label_smoothing: float) -> float:
    """The minimum of the label-smoothed cross-entropy: the entropy of the smoothed target
    (1 - eps + eps/K on the true class, eps/K on each of the K - 1 others)."""
    if label_smoothing <= 0:
        return 0.0
    on, off = 1 - label_smoothing + label_smoothing / num_classes, label_smoothing / num_classes
    return -(on * math.log(on) + (num_classes - 1) * off * math.log(off))


def training_curves(history: list[dict], lrs, steps_per_epoch: int, num_classes: int,
                    label_smoothing: float, title: str = "") -> Figure:
    """The three-panel figure (loss, accuracy, learning rate) described above."""
    fig = Figure(figsize=(12, 3.6))
    # a fixed layout: tight_layout costs more than drawing, and the figure is redrawn each epoch
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.84, wspace=0.25)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    epochs = [h["epoch"] for h in history]
    has_val = any("val_loss" in h for h in history)

    if label_smoothing > 0:
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue",
                     alpha=0.45, label=f"train, smoothed {label_smoothing:g} (minimised)")
    ax_loss.plot(epochs, [h["train_ce"] for h in history], "o-", color="tab:blue",
                 label="train (train mode)")
    if has_val:
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", color="tab:orange",
                     label="held-out (eval mode)")
    ax_loss.axhline(math.log(num_classes), color="gray", ls=":", label=f"chance, ln {num_classes}")
    if label_smoothing > 0:
        ax_loss.axhline(smoothing_floor(num_classes, label_smoothing), color="tab:blue", ls="--",
                        lw=0.8, label="smoothing floor")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", ylim=(0, None))
    ax_loss.legend(fontsize=7)

    ax_acc.plot(epochs, [h["train_acc"] for h in history], "o-", color="tab:blue",
                label="train (train mode)")
    if has_val:
        ax_acc.plot(epochs, [h["val_acc"] for h in history], "s-", color="tab:orange",
                    label="held-out (eval mode)")
    ax_acc.axhline(1 / num_classes, color="gray", ls=":", label=f"chance, 1/{num_classes}")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1.02))
    ax_acc.legend(fontsize=7)

    lrs = list(lrs)
    done = (epochs[-1] if epochs else 0) * steps_per_epoch      # steps taken so far
    x = [t / steps_per_epoch for t in range(len(lrs))]          # step t in epochs
    ax_lr.plot(x[:done], lrs[:done], color="tab:green", label="done")
    if done < len(lrs):
        rest = max(done - 1, 0)
        ax_lr.plot(x[rest:], lrs[rest:], color="tab:green", ls="--", alpha=0.5, label="to come")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedule (per step)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_lr.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def write_png(fig: Figure, f) -> None:
    """Write ``fig`` as PNG into the open binary file ``f``."""
    fig.savefig(f, format="png", dpi=80)
