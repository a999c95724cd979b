"""``npvit segment [IMAGE...]``: per-pixel classes of each image (PASCAL VOC or ADE20k).

For each image it writes
  - a colour overlay with a legend of the classes present and their share of the pixels
    (``-o PATH`` for a single image, else ``<name>_segment.png`` in the current folder), and
  - the label PNG: a palette PNG in the dataset's annotation values (VOC: class 0-20; ADE20k:
    channel + 1, 0 = other), ``<name>_labels.png`` beside the overlay, or ``DIR/<name>.png``
    with ``--masks DIR`` (the names the dataset's own masks have),
and prints one line with both paths and the largest classes.

Without IMAGE it segments the example photo that ships with matplotlib (Grace Hopper, public
domain). Model: --model NAME, one of `npvit models --task segmentation` (default
deeplabv3_mobilevitv2_050_voc); with --weights and no --model it is detected from the file.
Weights: --weights PATH (official ml-cvnets or Hugging Face segmentation files, or npvit's
.npz), else the official weights in the cache (`npvit download NAME`, or --download), else —
said in one line — RANDOM untrained weights, whose masks mean nothing but show the path works.
Each image is preprocessed as its release's evaluation does and the mask comes out at the
image's own size. An unusable image gives one line "npvit: error: FILE: problem" and the others
are still segmented. Exit code 0 when every image was segmented, 1 when some were not, 2 for a
usage or setup error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import NpvitError
from ..inference import RANDOM_WEIGHTS, load_model
from ..models import SegmentationModel, list_models
from ..segmentation.inference import DEFAULT_SEGMENTATION_MODEL, segment
from ..segmentation.overlay import present_classes, save_label_png, save_overlay
from ..threads import set_num_threads
from .options import (ReadableImages, add_images, add_model_and_weights, images_or_example,
                      note_random_weights)


def _load(args):
    model, source = load_model(args.model, args.weights, fallback_random=True,
                               download=args.download, seed=args.seed)
    if not isinstance(model, SegmentationModel):
        raise NpvitError(f"{args.weights or model.name} holds the classifier {model.name}, not a "
                         f"segmentation model (see `npvit models --task segmentation`)")
    if source == RANDOM_WEIGHTS:
        note_random_weights("segment", model.name)
    return model, source


def run(args) -> int:
    if args.model is not None and args.model not in list_models("segmentation"):
        raise NpvitError(f"unknown segmentation model {args.model!r}; choose one of "
                         f"{', '.join(list_models('segmentation'))}")
    if args.weights is None and args.model is None:
        args.model = DEFAULT_SEGMENTATION_MODEL
    images = images_or_example(args, "segment", "segmenting")
    set_num_threads(1)   # images one by one, BLAS on one thread (npvit/threads.py): a busy
                         # neighbour then slows this in proportion, not out of it
    if args.output and len(images) > 1:
        raise NpvitError("-o/--output names the overlay of ONE image; with several images the "
                         "overlays are written as <name>_segment.png")
    model = source = None
    failures, readable = 0, ReadableImages(images)     # failures: images read but not written
    for image_path, image in readable:
        if model is None:           # only once an image could be read
            model, source = _load(args)
        stem = Path(image_path).stem
        overlay = Path(args.output) if args.output else Path(f"{stem}_segment.png")
        labels = (Path(args.masks) / f"{stem}.png" if args.masks
                  else overlay.with_name(f"{overlay.stem}_labels.png" if args.output
                                         else f"{stem}_labels.png"))
        try:
            mask = segment(model, image)
            save_label_png(mask, model.classes, labels)
            save_overlay(image, mask, model.classes, overlay, f"{model.name}  [{source}]")
        except (NpvitError, OSError) as e:
            print(f"npvit: error: {image_path}: {e}", file=sys.stderr)
            failures += 1
            continue
        largest = ", ".join(f"{c.name} {share:.1%}" for c, share in present_classes(mask, model.classes)[:4])
        print(f"{image_path}  [{model.name}, {source}]  -> {overlay}, {labels}  ({largest})")
    return 1 if failures or readable.failures else 0


def add_parser(sub):
    p = sub.add_parser("segment", help="per-pixel classes of images: overlay + label PNG",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_images(p)
    add_model_and_weights(p)
    p.add_argument("-o", "--output", metavar="PATH", help="the overlay PNG (one image only)")
    p.add_argument("--masks", metavar="DIR", help="write the label PNGs as DIR/<name>.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, when used")
    p.set_defaults(func=run)
