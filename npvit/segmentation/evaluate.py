"""``npvit eval DIR --model <segmentation release>``: mIoU, pixel accuracy and per-class IoU on a
PASCAL VOC or ADE20k folder (layouts: datasets.py), the way ml-cvnets evaluates its releases:
every image preprocessed as the release's evaluation does (preprocess.py), one image at a
time, the mask predicted at the annotation's size, ignored pixels (VOC 255, ADE20k 0) left out,
one confusion matrix over the whole set (metrics.py).

commands/eval.py hands over here when --model is a segmentation release or DIR is in one of
these layouts. --limit N takes N images spread over the sorted list; --json prints one object.
An unusable image or mask is reported in one line and skipped (exit 1); weights are required:
an untrained network's mIoU measures nothing.
"""
from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from ..data import load_image
from ..errors import NpvitError
from ..inference import load_model
from ..models import list_models
from ..models.segmentation import RELEASES
from .datasets import dataset_layout, labelled_pairs, read_target
from .inference import segment
from .metrics import ConfusionMatrix


def wanted(args) -> bool:
    """Whether an `npvit eval` call is a segmentation evaluation."""
    return args.model in list_models("segmentation") or dataset_layout(args.directory) is not None


def _spread(items: list, limit: int | None) -> list:
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _check_model(name: str, dataset: str, directory) -> None:
    if name not in RELEASES:
        raise NpvitError(f"{name} is a classifier; {directory} is a {dataset} segmentation "
                         f"folder (see `npvit models --task segmentation`)")
    if RELEASES[name].dataset != dataset:
        raise NpvitError(f"{name} predicts {RELEASES[name].dataset} classes but {directory} is "
                         f"a {dataset} folder")


def run(args) -> int:
    if args.size is not None or args.preprocess is not None or args.confusion is not None:
        raise NpvitError("--size, --preprocess and --confusion apply to classification; a "
                         "segmentation release is evaluated with its own preprocessing")
    if args.limit is not None and args.limit < 1:
        raise NpvitError(f"--limit must be at least 1, got {args.limit}")
    dataset, pairs = labelled_pairs(args.directory)
    if args.model is None and args.weights is None:
        raise NpvitError(f"{args.directory} is a {dataset} segmentation folder: name the model "
                         f"with --model (one of `npvit models --task segmentation`)")
    if args.model is not None:         # name problems before any weights are read
        _check_model(args.model, dataset, args.directory)
    model, source = load_model(args.model, args.weights, download=args.download)
    _check_model(model.name, dataset, args.directory)
    if not pairs:
        raise NpvitError(f"{args.directory}: no image with its mask found")
    pairs = _spread(pairs, args.limit)

    matrix, skipped = ConfusionMatrix(model.num_classes), 0
    with tqdm(total=len(pairs), unit="img", desc=model.name, disable=None) as bar:
        for image_path, mask_path in pairs:
            try:
                image, target = load_image(image_path), read_target(mask_path, dataset)
                if target.shape != (image.height, image.width):
                    raise NpvitError(f"{mask_path}: mask is {target.shape[1]}x{target.shape[0]}, "
                                     f"image {image.width}x{image.height}")
                matrix.add(target, segment(model, image))
            except NpvitError as e:
                tqdm.write(f"npvit: error: {e}", file=sys.stderr)
                skipped += 1
            bar.update(1)
            scores = matrix.scores()
            if scores.pixels:
                bar.set_postfix_str(f"mIoU {scores.miou:.1%}", refresh=False)

    scores = matrix.scores()
    if scores.pixels == 0:
        raise NpvitError(f"none of the {len(pairs)} images in {args.directory} could be evaluated")
    evaluated = len(pairs) - skipped
    if args.json:
        print(json.dumps({"model": model.name, "weights": source, "dataset": dataset,
                          "images": evaluated, "skipped": skipped, "miou": scores.miou,
                          "pixel_accuracy": scores.pixel_accuracy,
                          "classes_scored": scores.classes_scored,
                          "iou": {c.name: (None if np.isnan(v) else float(v))
                                  for c, v in zip(model.classes, scores.iou)}}))
    else:
        print(f"{model.name}  [{source}, {model.release.preprocess}]")
        skipped_note = f", {skipped} skipped" if skipped else ""
        print(f"  images          {evaluated} evaluated{skipped_note} ({dataset})")
        print(f"  mIoU            {scores.miou:.2%}  (over {scores.classes_scored} of "
              f"{model.num_classes} classes present)")
        print(f"  pixel accuracy  {scores.pixel_accuracy:.2%}  ({scores.pixels:,} pixels)")
        print("  per-class IoU")
        for c, v in zip(model.classes, scores.iou):
            print(f"    {c.channel:>3}  {c.name:<24} {'-' if np.isnan(v) else f'{v:.2%}'}")
    return 1 if skipped else 0
