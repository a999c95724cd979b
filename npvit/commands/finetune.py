"""``npvit finetune DIR --model NAME``: train a MobileViT classifier on a folder of images.

DIR holds one sub-folder per class, either split already (DIR/train/<class>/, DIR/val/<class>/)
or not (DIR/<class>/: --val-fraction of each class is held out, with a seeded shuffle); see
npvit.train.folder. The model starts from --weights (any checkpoint npvit reads, in the model's
layout; ``official`` for the cached official ImageNet weights) or from random weights. When the
number of classes differs from the checkpoint's, the classifier (head.fc) is replaced by a new,
randomly initialised one.

Training: AdamW (weight decay 0.05, none on norms and biases, as ml-cvnets), cosine schedule
with a linear warm-up over the first epoch (at most a tenth of the run) from max lr down to
lr / 100, label smoothing 0.1, random resized crop + horizontal flip at --size; validation
uses the model family's evaluation preprocessing at --size (short side size + 32, centre
crop). --freeze-backbone trains head.fc only, running the backbone as a fixed feature
extractor (see npvit.train.trainer).

Every epoch writes, atomically, into --out:
    checkpoint.npz   model + optimiser + schedule + settings: continue with --resume
    model.npz        the weights alone (timm names): --weights for another run, or
                     create_model(NAME, num_classes=N) + load_state_dict(read_checkpoint(...))
    classes.txt      the class names, line i = class index i

--resume continues exactly where the checkpoint stopped: the settings that shape the run
(model, epochs, lr, batch size, size, ...) come from the checkpoint, and any given on the
command line must agree with them, so re-running the same command plus --resume works. Each
epoch's shuffling and augmentation depend only on the seed and the epoch number, so a resumed
run ends with the same parameters as one that was never interrupted.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data import MIN_SIDE, default_pipeline
from ..errors import NpvitError
from ..models import create_model, list_models
from ..nn import Linear, manual_seed
from ..train import (AdamW, ImageLoader, WarmupCosineSchedule, checkpoint_meta, eval_transform,
                     evaluate, find_image_folder, load_checkpoint, save_checkpoint,
                     train_one_epoch, train_transform, weight_decay_groups)
from ..weights import detect_model, pretrained_path, read_checkpoint, save_npz, to_npvit_names

# The settings that determine a run, with their defaults. On the command line they default to
# None, so an explicitly given value can be told apart (and checked against a checkpoint's).
DEFAULTS = {"model": None, "weights": "", "epochs": 10, "lr": None, "batch_size": 32,
            "size": 256, "weight_decay": 0.05, "label_smoothing": 0.1,
            "freeze_backbone": False, "val_fraction": 0.2, "seed": 0}


def default_lr(settings: dict) -> float:
    """Gentle for pre-trained weights that all train; larger for a new head or from scratch."""
    fine_tuning_all = settings["weights"] and not settings["freeze_backbone"]
    return 2e-4 if fine_tuning_all else 1e-3


def resolve_settings(args) -> dict:
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if args.resume:
        saved = {k[len("setting."):]: v for k, v in checkpoint_meta(args.resume).items()
                 if k.startswith("setting.")}
        if set(saved) != set(DEFAULTS):
            raise NpvitError(f"{args.resume} was not written by npvit finetune")
        differ = [f"--{k.replace('_', '-')} {given[k]} (checkpoint: {saved[k]})"
                  for k in given if given[k] != saved[k]]
        if differ:
            raise NpvitError(f"{args.resume} was trained with other settings: "
                             + ", ".join(differ))
        return saved
    settings = {**DEFAULTS, **given}
    if settings["model"] is None:
        raise NpvitError("--model is required (unless you --resume a checkpoint)")
    if settings["model"] not in list_models(task="classification"):
        raise NpvitError(f"unknown model {settings['model']!r}; choose one of "
                         f"{', '.join(list_models(task='classification'))}")
    if settings["lr"] is None:
        settings["lr"] = default_lr(settings)
    for key, low in (("epochs", 1), ("batch_size", 1), ("size", MIN_SIDE)):
        if settings[key] < low:
            raise NpvitError(f"--{key.replace('_', '-')} must be at least {low}, "
                             f"got {settings[key]}")
    if settings["lr"] <= 0:
        raise NpvitError(f"--lr must be positive, got {settings['lr']}")
    return settings


def build_model(settings: dict, num_classes: int, resume: str | None):
    """The model with a ``num_classes`` head; weights from --weights unless resuming (then the
    checkpoint fills everything). Returns (model, a sentence saying where it came from)."""
    name = settings["model"]
    manual_seed(settings["seed"])
    if resume or not settings["weights"]:
        model = create_model(name, num_classes=num_classes)
        return model, f"resumed from {resume}" if resume else "random initialisation"
    path = pretrained_path(name) if settings["weights"] == "official" else settings["weights"]
    _, state = to_npvit_names(read_checkpoint(path))
    head = state.get("head.fc.weight")
    file_classes = 1000 if head is None else int(head.shape[0])   # no head: load will say so
    model = create_model(name, num_classes=file_classes)
    try:
        model.load_state_dict(state)
    except ValueError as e:
        holds = detect_model(state, source=str(path))
        if holds != name:
            raise NpvitError(f"{path} holds {holds} weights, not {name}") from None
        raise NpvitError(f"{path}: {e}") from None
    origin = f"weights from {path}"
    if file_classes != num_classes:
        model.head.fc = Linear(model.num_features, num_classes)
        origin += f", new {num_classes}-class head (was {file_classes})"
    return model, origin


def run(args) -> int:
    settings = resolve_settings(args)
    split = find_image_folder(args.dir, settings["val_fraction"], settings["seed"])
    if args.resume:
        saved_classes = [str(c) for c in checkpoint_meta(args.resume)["classes"]]
        if saved_classes != split.classes:
            raise NpvitError(f"{args.dir} holds other classes than {args.resume} was trained on "
                             f"({', '.join(saved_classes[:5])} ...)")
    out = Path(args.out) if args.out else (Path(args.resume).parent if args.resume
                                            else Path("finetune-out"))
    out.mkdir(parents=True, exist_ok=True)

    model, origin = build_model(settings, len(split.classes), args.resume)
    pipeline, size, seed = default_pipeline(settings["model"]), settings["size"], settings["seed"]
    batch_size = min(settings["batch_size"], len(split.train))
    train_loader = ImageLoader(split.train, train_transform(pipeline, size), batch_size,
                               shuffle=True, drop_last=True, seed=seed)
    val_loader = ImageLoader(split.val, eval_transform(pipeline, size), batch_size)

    if settings["freeze_backbone"]:
        trained = list(model.head.fc.named_parameters("head.fc"))
    else:
        trained = list(model.named_parameters())
    opt = AdamW(weight_decay_groups(trained, settings["weight_decay"]), lr=settings["lr"])
    total_steps = settings["epochs"] * len(train_loader)
    sched = WarmupCosineSchedule(opt, settings["lr"], total_steps,
                                 warmup_steps=min(len(train_loader), total_steps // 10),
                                 min_lr=settings["lr"] / 100)
    start = load_checkpoint(args.resume, model, opt, sched)["epoch"] if args.resume else 0

    n_trained = sum(p.data.size for _, p in trained)
    print(f"data: {len(split.classes)} classes ({', '.join(split.classes[:8])}"
          f"{', ...' if len(split.classes) > 8 else ''}), {len(split.train)} training and "
          f"{len(split.val)} validation images ({split.layout})")
    print(f"model: {settings['model']}, {origin}; training "
          f"{'head.fc only' if settings['freeze_backbone'] else 'all layers'} "
          f"({n_trained:,} of {model.num_parameters():,} parameters)")
    print(f"run: {settings['epochs']} epochs x {len(train_loader)} steps of {batch_size} images "
          f"at {size}x{size} ({pipeline} preprocessing), AdamW lr {settings['lr']:g}"
          + (f", from epoch {start + 1}" if start else ""), flush=True)
    if start >= settings["epochs"]:
        print(f"{args.resume} has finished all {settings['epochs']} epochs; nothing to do")
        return 0

    (out / "classes.txt").write_text("".join(c + "\n" for c in split.classes))
    for epoch in range(start, settings["epochs"]):
        began = time.perf_counter()
        train_loader.set_epoch(epoch)
        epochs = settings["epochs"]
        tag = f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs}"
        stats = train_one_epoch(model, train_loader, opt, sched, settings["label_smoothing"],
                                freeze_backbone=settings["freeze_backbone"],
                                progress=not args.quiet, desc=tag)
        line = f"{tag}  train loss {stats['loss']:.4f} acc {stats['accuracy']:6.1%}"
        if split.val:
            val = evaluate(model, val_loader, progress=not args.quiet, desc="val")
            line += f"  |  val loss {val['loss']:.4f} acc {val['accuracy']:6.1%}"
        save_checkpoint(out / "checkpoint.npz", model, opt, sched, epoch=epoch + 1,
                        classes=np.array(split.classes),
                        **{f"setting.{k}": v for k, v in settings.items()})
        save_npz(model.state_dict(), out / "model.npz")
        print(f"{line}  |  {time.perf_counter() - began:.1f} s", flush=True)
    print(f"wrote {out / 'model.npz'}, {out / 'checkpoint.npz'} (--resume), "
          f"{out / 'classes.txt'}")
    return 0


def add_parser(sub):
    p = sub.add_parser("finetune", help="train a model on a folder of images (DIR/<class>/...)",
                       description="Train a MobileViT classifier on a folder of images; "
                                   "checkpoints every epoch, --resume continues exactly.")
    p.add_argument("dir", metavar="DIR",
                   help="DIR/train/<class>/ and DIR/val/<class>/, or DIR/<class>/ (split here)")
    p.add_argument("--model", metavar="NAME",
                   help=f"one of {', '.join(list_models(task='classification'))}")
    p.add_argument("--weights", metavar="PATH",
                   help="start from this checkpoint ('official': the official ImageNet weights); "
                        "default: random weights")
    p.add_argument("--epochs", type=int, help="default 10")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4 when fine-tuning "
                                            "all layers of loaded weights, else 1e-3)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--size", type=int, help="training and validation image size (default 256)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    p.add_argument("--label-smoothing", type=float, help="default 0.1")
    p.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="train the classifier head.fc only")
    p.add_argument("--val-fraction", type=float,
                   help="share of each class held out when DIR has no train/ folder (default 0.2)")
    p.add_argument("--seed", type=int, help="initialisation, split, shuffling, augmentation "
                                            "(default 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default finetune-out, or the "
                                                "checkpoint's folder with --resume)")
    p.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
