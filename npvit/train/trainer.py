"""The training loop: one optimisation step, one epoch of them, and evaluation.

    opt = AdamW(weight_decay_groups(model.named_parameters(), 0.05), lr=1e-3)
    sched = WarmupCosineSchedule(opt, 1e-3, total_steps=epochs * len(train_loader))
    for epoch in range(epochs):
        train_one_epoch(model, train_loader, opt, sched, label_smoothing=0.1)
        print(evaluate(model, val_loader)["accuracy"])

A loader is anything that yields ``(x, y)`` batches — x (B, 3, H, W) float, y (B,) integer
class indices — and has a ``len()`` for the progress bar: a list of batches will do, and so does
npvit.train.ImageLoader.

Frozen backbone. With ``freeze_backbone=True`` only the classifier (``head``) learns. The
backbone then runs in eval mode (BatchNorm uses and keeps its running statistics) and under
``no_grad()``, so it stores no caches, and backward goes through the head alone: the cost of a
step is one inference pass, instead of a forward and a backward pass through the whole network.
Give the optimiser only the head's parameters, e.g. ``model.head.named_parameters("head")``.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ..data import check_input
from ..errors import NpvitError
from ..functional.loss import cross_entropy_backward, cross_entropy_forward
from ..nn import no_grad
from .clip import clip_grad_norm


class NonFiniteLoss(NpvitError):
    """The loss of a batch is NaN or infinite: raised before the backward pass and the update,
    so the parameters still hold their last finite values."""


def backbone_features(model, x) -> np.ndarray:
    """The input of the classifier head, (B, C, h, w): stem, stages and (v1) final 1x1 conv."""
    x = check_input(x).astype(model.dtype, copy=False)
    return model.final_conv.forward(model.stages.forward(model.stem.forward(x)))


def set_train_mode(model, freeze_backbone: bool = False) -> None:
    """Training mode for what learns; a frozen backbone stays in eval mode."""
    if freeze_backbone:
        model.eval()
        model.head.train()
    else:
        model.train()


def train_step(model, x, y, opt, sched=None, label_smoothing: float = 0.0,
               clip_norm: float | None = None, freeze_backbone: bool = False):
    """Forward, loss, backward, (clip,) update, (schedule step). The model's modes are the
    caller's (see ``set_train_mode``). Returns (loss, logits): the mean loss of the batch and the
    logits it was computed from, before the update. A non-finite loss raises NonFiniteLoss
    before anything is updated."""
    if freeze_backbone:
        with no_grad():
            features = backbone_features(model, x)
        logits = model.head.forward(features)
    else:
        logits = model(x)
    loss, cache = cross_entropy_forward(logits, y, label_smoothing)
    if not np.isfinite(loss):
        raise NonFiniteLoss(f"the training loss became {loss} (learning rate "
                            f"{opt.param_groups[0]['lr']:.3g})")
    model.zero_grad()
    dlogits = cross_entropy_backward(cache)
    if freeze_backbone:
        model.head.backward(dlogits)    # the gradient w.r.t. the features is not needed
    else:
        model.backward(dlogits)
    if clip_norm is not None:
        clip_grad_norm(model.parameters(), clip_norm)
    opt.step()
    if sched is not None:
        sched.step()
    return loss, logits


def train_one_epoch(model, loader, opt, sched=None, label_smoothing: float = 0.0,
                    clip_norm: float | None = None, freeze_backbone: bool = False,
                    progress: bool = True, desc: str = "train") -> dict:
    """One pass over ``loader``, one ``train_step`` per batch. Returns the mean loss (label
    smoothed, what is minimised), the mean plain cross-entropy ``ce`` of the same logits (no
    smoothing, comparable with ``evaluate``'s loss) and the accuracy of the training batches,
    all as predicted in training mode before each update."""
    set_train_mode(model, freeze_backbone)
    total_loss, total_ce, correct, seen = 0.0, 0.0, 0, 0
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
    for x, y in bar:
        loss, logits = train_step(model, x, y, opt, sched, label_smoothing, clip_norm,
                                  freeze_backbone)
        total_loss += loss * len(y)
        total_ce += (cross_entropy_forward(logits, y)[0] if label_smoothing else loss) * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.1%}")
    return {"loss": total_loss / max(seen, 1), "ce": total_ce / max(seen, 1),
            "accuracy": correct / max(seen, 1), "images": seen}


def evaluate(model, loader, progress: bool = True, desc: str = "eval") -> dict:
    """Mean cross-entropy (no smoothing) and top-1 accuracy over ``loader``, in eval mode and
    without caches. The model is left in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with no_grad():
        for x, y in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            logits = model(x)
            total_loss += cross_entropy_forward(logits, y)[0] * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": seen}
