"""``npvit finetune DIR --model NAME``: train a MobileViT classifier on a folder of images.

DIR holds one sub-folder per class, either split already (DIR/train/<class>/, DIR/val/<class>/)
or not (DIR/<class>/: --val-fraction of each class is held out, with a seeded shuffle); see
npvit.train.folder. The model starts from --weights (any checkpoint npvit reads, in the model's
layout; ``official`` for the cached official ImageNet weights) or from random weights. When the
number of classes differs from the checkpoint's, the classifier (head.fc) is replaced by a new,
randomly initialised one.

Training: AdamW (no weight decay on norms and biases, as ml-cvnets), cosine schedule with a
linear warm-up over the first epoch (at most a tenth of the run) from max lr down to lr / 100,
label-smoothed cross-entropy, random resized crop (+ horizontal flip) at --size; validation in
eval mode on the held-out images with the model family's evaluation preprocessing at --size.
--recipe picks the augmentation, smoothing, weight decay and learning rate as a whole
(npvit.train.recipes: ``imagenet``, ml-cvnets' recipe, the default; ``small``, for small data
from scratch, chosen by measurement in docs/training_small_data.md); --crop-scale, --no-flip,
--label-smoothing, --lr and --weight-decay override single values. --freeze-backbone trains
head.fc only, running the backbone as a fixed feature extractor (see npvit.train.trainer).

Every epoch writes, each file atomically, into --out (npvit.train.run_folder has the rules: one
run per folder unless --overwrite, nothing written before the first epoch ends):
    checkpoint.npz   model + optimiser + schedule + settings + epoch log: continue with --resume
    model.npz        the weights with their model name, class names, input size and
                     preprocessing (npvit.weights.write_model_npz): --weights for predict, eval,
                     scoremap, another finetune, or create_model(pretrained=PATH)
    curves.png       train / held-out loss and accuracy and the learning rate per epoch
    run.json         the manifest and training log: settings, classes, one record per epoch

--resume continues exactly where the checkpoint stopped: the settings that shape the run
(model, epochs, lr, batch size, size, ...) come from the checkpoint, and any given on the
command line must agree with them, so re-running the same command plus --resume works. Each
epoch's shuffling and augmentation depend only on the seed and the epoch number, so a resumed
run ends with the same parameters as one that was never interrupted. A loss that becomes NaN or
infinite stops the run (exit 2) before anything is written, so the last checkpoint stays good.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ..data import MIN_SIDE, default_pipeline
from ..errors import NpvitError
from ..inference import check_size
from ..models import create_model, list_models
from ..nn import Linear, manual_seed
from ..train import (AdamW, ImageLoader, NonFiniteLoss, RunFolder, WarmupCosineSchedule,
                     checkpoint_arrays, checkpoint_meta, eval_transform, evaluate,
                     find_image_folder, load_checkpoint, train_one_epoch, train_transform,
                     weight_decay_groups)
from ..train.recipes import RECIPES, get_recipe
from ..weights import (detect_model, model_meta, pretrained_path, read_checkpoint,
                       to_npvit_names, write_model_npz)
from .options import add_threads, apply_threads

# The settings that determine a run, with their defaults. On the command line they default to
# None, so an explicitly given value can be told apart (and checked against a checkpoint's);
# None here means "the recipe's value" (npvit.train.recipes).
DEFAULTS = {"model": None, "weights": "", "recipe": "imagenet", "epochs": 10, "lr": None,
            "batch_size": 32, "size": 256, "weight_decay": None, "label_smoothing": None,
            "crop_scale_min": None, "crop_scale_max": None, "flip": None, "eval_margin": None,
            "freeze_backbone": False, "val_fraction": 0.2, "seed": 0}
MAX_SEED = 2**32 - 1


def given_settings(args) -> dict:
    """The settings given on the command line (not None), --crop-scale split in two."""
    given = {k: getattr(args, k, None) for k in DEFAULTS}
    if getattr(args, "crop_scale", None) is not None:
        given["crop_scale_min"], given["crop_scale_max"] = args.crop_scale
    return {k: v for k, v in given.items() if v is not None}


def fill_from_recipe(settings: dict) -> dict:
    """Every None setting takes its recipe's value; the lr depends on what trains."""
    recipe = get_recipe(settings["recipe"])
    fine_tuning_all = bool(settings["weights"]) and not settings["freeze_backbone"]
    recipe_values = {"lr": recipe.finetune_lr if fine_tuning_all else recipe.lr,
                     "weight_decay": recipe.weight_decay,
                     "label_smoothing": recipe.label_smoothing,
                     "crop_scale_min": recipe.crop_scale[0], "crop_scale_max": recipe.crop_scale[1],
                     "flip": recipe.flip, "eval_margin": recipe.eval_margin}
    return {k: recipe_values[k] if v is None and k in recipe_values else v
            for k, v in settings.items()}


def check_settings(s: dict) -> None:
    """Refuse, in one line, any value that cannot make a sensible run (non-finite numbers
    included: every comparison with NaN is False, so ``not low <= x <= high`` catches it)."""
    if s["model"] is None:
        raise NpvitError("--model is required (unless you --resume a checkpoint)")
    if s["model"] not in list_models():
        raise NpvitError(f"unknown model {s['model']!r}; choose one of "
                         f"{', '.join(list_models())}")
    for key, low in (("epochs", 1), ("batch_size", 1), ("size", MIN_SIDE)):
        if s[key] < low:
            raise NpvitError(f"--{key.replace('_', '-')} must be at least {low}, got {s[key]}")
    if not 0 <= s["seed"] <= MAX_SEED:
        raise NpvitError(f"--seed must lie in [0, {MAX_SEED}], got {s['seed']}")
    if not 0 < s["lr"] <= 1:
        raise NpvitError(f"--lr must be a number in (0, 1], got {s['lr']}")
    if not 0 <= s["weight_decay"] <= 1:
        raise NpvitError(f"--weight-decay must be a number in [0, 1], got {s['weight_decay']}")
    if not 0 <= s["label_smoothing"] < 1:
        raise NpvitError(f"--label-smoothing must be a number in [0, 1), got "
                         f"{s['label_smoothing']}")
    if not 0 < s["crop_scale_min"] <= s["crop_scale_max"] <= 1:
        raise NpvitError(f"--crop-scale MIN MAX needs 0 < MIN <= MAX <= 1, got "
                         f"{s['crop_scale_min']} {s['crop_scale_max']}")
    if not 0 <= s["val_fraction"] < 1:
        raise NpvitError(f"--val-fraction must lie in [0, 1), got {s['val_fraction']}")


def resolve_settings(args) -> dict:
    given = given_settings(args)
    if args.resume:
        saved = {k[len("setting."):]: v for k, v in checkpoint_meta(args.resume).items()
                 if k.startswith("setting.")}
        if set(saved) != set(DEFAULTS):
            raise NpvitError(f"{args.resume} was not written by this version of npvit finetune")
        differ = [f"--{k.replace('_', '-')} {given[k]} (checkpoint: {saved[k]})"
                  for k in given if given[k] != saved[k]]
        if differ:
            raise NpvitError(f"{args.resume} was trained with other settings: "
                             + ", ".join(differ))
        return saved
    settings = {**DEFAULTS, **given}
    if settings["recipe"] not in RECIPES:
        raise NpvitError(f"unknown recipe {settings['recipe']!r}; choose one of "
                         f"{', '.join(RECIPES)}")
    settings = fill_from_recipe(settings)
    check_settings(settings)
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


def resume_state(path: str) -> tuple[list[str], int, list[dict]]:
    """(classes, finished epochs, epoch log) of a checkpoint written by this command."""
    meta = checkpoint_meta(path)
    try:
        classes = [str(c) for c in np.asarray(meta["classes"]).reshape(-1)]
        epoch, history = int(meta["epoch"]), json.loads(str(meta["history"]))
    except (KeyError, ValueError, TypeError):
        raise NpvitError(f"{path} was not written by this version of npvit finetune") from None
    return classes, epoch, history[:epoch]


def all_finite(model) -> bool:
    return all(np.isfinite(v).all() for v in model.state_dict().values()
               if np.issubdtype(v.dtype, np.floating))


def output_folder(args) -> tuple[Path, bool]:
    """(--out, whether it is the resumed checkpoint's own folder: the run goes on there)."""
    if args.resume:
        home = Path(args.resume).resolve().parent
        out = Path(args.out) if args.out else home
        return out, out.resolve() == home
    return Path(args.out or "finetune-out"), False


def write_epoch(folder: RunFolder, model, opt, sched, settings, classes, history,
                steps_per_epoch, pipeline) -> None:
    """The run's files after an epoch, each atomically; the checkpoint first (resume always
    has the newest state), the manifest last."""
    epoch = history[-1]["epoch"]
    arrays = checkpoint_arrays(model, opt, sched, epoch=epoch, classes=np.array(classes),
                               history=json.dumps(history),
                               **{f"setting.{k}": v for k, v in settings.items()})
    folder.write("checkpoint.npz", lambda f: np.savez(f, **arrays))
    # resize_size: predict/eval/scoremap must prepare images as the validation did
    meta = model_meta(settings["model"], classes, settings["size"], pipeline,
                      resize_size=settings["size"] + settings["eval_margin"])
    write_model_npz(folder.file("model.npz"), model.state_dict(), meta)
    from ..train.curves import training_curves, write_png   # matplotlib: slow to import, so here
    lrs = [sched.lr_at(t) for t in range(sched.total_steps)]
    fig = training_curves(history, lrs, steps_per_epoch, len(classes),
                          settings["label_smoothing"],
                          title=f"{settings['model']}, recipe {settings['recipe']}, "
                                f"{settings['size']}x{settings['size']}")
    folder.write("curves.png", lambda f: write_png(fig, f))
    folder.write_manifest({"format": 1, "model": settings["model"], "classes": classes,
                           "preprocess": pipeline, "input_size": settings["size"],
                           "epochs_done": epoch, "settings": settings,
                           "files": {"checkpoint": "checkpoint.npz", "model": "model.npz",
                                     "curves": "curves.png"},
                           "epochs": history})


def run(args) -> int:
    settings = resolve_settings(args)
    apply_threads(args)   # before the size check, which runs the model
    # a training step's working set must fit in memory (npvit.inference.check_size estimates it)
    check_size(settings["model"], settings["size"], settings["batch_size"], training=True)
    split = find_image_folder(args.dir, settings["val_fraction"], settings["seed"])
    start, history = 0, []
    if args.resume:
        saved_classes, start, history = resume_state(args.resume)
        if saved_classes != split.classes:
            raise NpvitError(f"{args.dir} holds other classes than {args.resume} was trained on "
                             f"({', '.join(saved_classes[:5])} ...)")
    out, continuing = output_folder(args)

    model, origin = build_model(settings, len(split.classes), args.resume)
    pipeline, size, seed = default_pipeline(settings["model"]), settings["size"], settings["seed"]
    batch_size = min(settings["batch_size"], len(split.train))
    crop_scale = (settings["crop_scale_min"], settings["crop_scale_max"])
    train_loader = ImageLoader(split.train, train_transform(pipeline, size, crop_scale,
                                                            settings["flip"]),
                               batch_size, shuffle=True, drop_last=True, seed=seed)
    val_loader = ImageLoader(split.val, eval_transform(pipeline, size,
                                                       size + settings["eval_margin"]),
                             batch_size)

    if settings["freeze_backbone"]:
        trained = list(model.head.fc.named_parameters("head.fc"))
    else:
        trained = list(model.named_parameters())
    opt = AdamW(weight_decay_groups(trained, settings["weight_decay"]), lr=settings["lr"])
    total_steps = settings["epochs"] * len(train_loader)
    sched = WarmupCosineSchedule(opt, settings["lr"], total_steps,
                                 warmup_steps=min(len(train_loader), total_steps // 10),
                                 min_lr=settings["lr"] / 100)
    if args.resume:
        load_checkpoint(args.resume, model, opt, sched)

    n_trained = sum(p.data.size for _, p in trained)
    print(f"data: {len(split.classes)} classes ({', '.join(split.classes[:8])}"
          f"{', ...' if len(split.classes) > 8 else ''}), {len(split.train)} training and "
          f"{len(split.val)} validation images ({split.layout})")
    print(f"model: {settings['model']}, {origin}; training "
          f"{'head.fc only' if settings['freeze_backbone'] else 'all layers'} "
          f"({n_trained:,} of {model.num_parameters():,} parameters)")
    print(f"run: {settings['epochs']} epochs x {len(train_loader)} steps of {batch_size} images "
          f"at {size}x{size} ({pipeline} preprocessing), recipe {settings['recipe']}: AdamW lr "
          f"{settings['lr']:g} wd {settings['weight_decay']:g}, crop {crop_scale[0]:g}-"
          f"{crop_scale[1]:g}{', flip' if settings['flip'] else ''}, label smoothing "
          f"{settings['label_smoothing']:g}" + (f"; from epoch {start + 1}" if start else ""),
          flush=True)
    epochs = settings["epochs"]
    with RunFolder(out, overwrite=args.overwrite, continuing=continuing) as folder:
        if start >= epochs:
            # a run killed between its last checkpoint and its other files: complete them
            write_epoch(folder, model, opt, sched, settings, split.classes, history,
                        len(train_loader), pipeline)
            print(f"{args.resume} has finished all {epochs} epochs; nothing to train "
                  f"(the run's files in {out} are complete)")
            return 0
        for epoch in range(start, epochs):
            began, cpu = time.perf_counter(), time.process_time()
            train_loader.set_epoch(epoch)
            tag = f"epoch {epoch + 1:>{len(str(epochs))}}/{epochs}"
            lr_first = sched.lr
            try:
                stats = train_one_epoch(model, train_loader, opt, sched,
                                        settings["label_smoothing"],
                                        freeze_backbone=settings["freeze_backbone"],
                                        progress=not args.quiet, desc=tag)
            except NonFiniteLoss as e:
                raise NpvitError(f"{tag}: {e}; stopped without writing it"
                                 + kept(folder, epoch)) from None
            record = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_ce": stats["ce"],
                      "train_acc": stats["accuracy"], "lr_first": lr_first,
                      "lr_last": sched.lr_at(sched.t - 1)}
            line = f"{tag}  train loss {stats['loss']:.4f} acc {stats['accuracy']:6.1%}"
            if split.val:
                val = evaluate(model, val_loader, progress=not args.quiet, desc="val")
                record.update(val_loss=val["loss"], val_acc=val["accuracy"])
                line += f"  |  val loss {val['loss']:.4f} acc {val['accuracy']:6.1%}"
            if not all_finite(model) or not math.isfinite(record.get("val_loss", 0.0)):
                raise NpvitError(f"{tag}: the weights or the validation loss became non-finite; "
                                 f"stopped without writing them" + kept(folder, epoch))
            record.update(seconds=time.perf_counter() - began, cpu_seconds=time.process_time() - cpu)
            history.append(record)
            write_epoch(folder, model, opt, sched, settings, split.classes, history,
                        len(train_loader), pipeline)
            print(f"{line}  |  {record['seconds']:.1f} s", flush=True)
    print(f"wrote {out / 'model.npz'}, {out / 'checkpoint.npz'} (--resume), "
          f"{out / 'curves.png'}, {out / 'run.json'}")
    return 0


def kept(folder: RunFolder, epoch: int) -> str:
    """What the user still has after a stopped epoch."""
    if epoch and (folder.path / "checkpoint.npz").exists():
        return f" ({folder.path / 'checkpoint.npz'} keeps epoch {epoch}; try a smaller --lr)"
    return " (no checkpoint was written; try a smaller --lr)"


def add_parser(sub):
    imagenet, small = RECIPES["imagenet"], RECIPES["small"]
    p = sub.add_parser("finetune", help="train a model on a folder of images (DIR/<class>/...)",
                       description="Train a MobileViT classifier on a folder of images; "
                                   "checkpoints every epoch, --resume continues exactly.")
    p.add_argument("dir", metavar="DIR",
                   help="DIR/train/<class>/ and DIR/val/<class>/, or DIR/<class>/ (split here)")
    p.add_argument("--model", metavar="NAME",
                   help=f"one of {', '.join(list_models())}")
    p.add_argument("--weights", metavar="PATH",
                   help="start from this checkpoint ('official': the official ImageNet weights); "
                        "default: random weights")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help=f"'imagenet' (default, for large data and for fine-tuning "
                        f"pre-trained weights): ml-cvnets' ImageNet recipe, crop scale "
                        f"{imagenet.crop_scale[0]:g}-{imagenet.crop_scale[1]:g}, flip, label "
                        f"smoothing {imagenet.label_smoothing:g}, weight decay "
                        f"{imagenet.weight_decay:g}, lr {imagenet.lr:g}; 'small': from scratch "
                        f"on small data, chosen by measurement (docs/training_small_data.md: "
                        f"learns about twice as fast on a few thousand images), "
                        f"crop scale {small.crop_scale[0]:g}-{small.crop_scale[1]:g}"
                        f"{', flip' if small.flip else ', no flip'}, label smoothing "
                        f"{small.label_smoothing:g}, weight decay {small.weight_decay:g}, lr "
                        f"{small.lr:g}, validation on the whole image. The flags below "
                        f"override single values")
    p.add_argument("--epochs", type=int, help="default 10")
    p.add_argument("--lr", type=float, help="peak learning rate, in (0, 1] (default: the "
                                            "recipe's; 2e-4 when fine-tuning all layers of "
                                            "loaded weights)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--size", type=int, help="training and validation image size (default 256)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay, in [0, 1] "
                                                      "(default: the recipe's)")
    p.add_argument("--label-smoothing", type=float, help="in [0, 1) (default: the recipe's)")
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random resized crop: the share of the image area each training crop "
                        "covers, 0 < MIN <= MAX <= 1 (default: the recipe's)")
    p.add_argument("--no-flip", dest="flip", action="store_const", const=False, default=None,
                   help="no random horizontal flip (for classes a mirror image changes)")
    p.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="train the classifier head.fc only")
    p.add_argument("--val-fraction", type=float,
                   help="share of each class held out when DIR has no train/ folder (default 0.2)")
    p.add_argument("--seed", type=int, help="initialisation, split, shuffling, augmentation "
                                            f"(0 ... {MAX_SEED}; default 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default finetune-out, or the "
                                                "checkpoint's folder with --resume); a folder "
                                                "that holds a run is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its files go once the new run has "
                        "finished its first epoch)")
    p.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # the training step sees the whole batch (BatchNorm), so it runs on one thread: a second
    # BLAS thread made it ~13% faster alone and 2-20x slower beside one busy process
    # (docs/benchmark.md, "Threads on a shared machine")
    add_threads(p, "validation images run in a pool of N threads, the training step on one")
    p.set_defaults(func=run)
