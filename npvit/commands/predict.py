"""``npvit predict [IMAGE...]``: the top-k classes of each image (ImageNet's, or a fine-tuned
model's own).

Without IMAGE it classifies the example photo that ships with matplotlib (Grace Hopper in
uniform, public domain), so it runs offline on a fresh install.

Model: --model NAME (default mobilevitv2_050, the smallest MobileViTv2); with --weights and no
--model, the variant is detected from the checkpoint.
Weights: --weights PATH, else the official weights in the cache (`npvit download NAME`, or add
--download), else — said in one line on stderr and in the output — RANDOM untrained weights,
whose "predictions" mean nothing but show the whole path works.
Preprocessing: --preprocess cvnets (default: what the model's official checkpoints were
evaluated with: cvnets-v1 for v1, cvnets-v2 for v2), or cvnets-v1 / cvnets-v2 / hf by name.
A model file written by `npvit finetune` brings its own: its model, input size,
preprocessing and class names are used unless --model / --size / --preprocess say otherwise.

Each image that cannot be used (missing, not an image, truncated, empty, a decompression bomb,
smaller than 32 px) gives one line "npvit: error: FILE: problem" on stderr; the others are
still classified. Exit code: 0 when every image was classified, 1 when some could not be, 2
for a usage or setup error (unknown model, unreadable --weights ...).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading

from ..data import DEFAULT_CROP_SIZE, load_image, preprocess
from ..errors import NpvitError, error_line
from ..inference import (DEFAULT_MODEL, PREPROCESS_CHOICES, RANDOM_WEIGHTS, check_size,
                         class_names, classify, load_model, model_file_settings, pipeline_for,
                         top_k)
from ..models import list_models
from ..threads import map_in_order
from .options import (add_images, add_model_and_weights, add_threads, apply_threads, check_seed,
                      images_or_example, note_random_weights)


class _LazyModel:
    """Loads the model at the first image that was read successfully, so that a run whose
    images are all unusable prints only their errors (no random-weights notice, no work)."""

    def __init__(self, args):
        self.args, self.model, self.source, self.class_names = args, None, None, None
        self._lock = threading.Lock()           # images may be read in a thread pool (--threads)

    def get(self):
        with self._lock:
            return self._load()

    def _load(self):
        if self.model is None:
            args = self.args
            self.model, self.source = load_model(args.model, args.weights, fallback_random=True,
                                                 download=args.download, seed=args.seed)
            check_size(self.model.name, args.size)   # the variant may come from --weights
            self.class_names, note = class_names(self.model)
            if note:
                print(f"npvit predict: {note}", file=sys.stderr)
            if self.source == RANDOM_WEIGHTS:
                note_random_weights("predict", self.model.name)
        return self.model


def _print_table(image, model, source, pipeline, size, rows) -> None:
    print(f"{image}  [{model.name}, {source}, {pipeline} {size}x{size}]")
    for row in rows:
        wnid = f"{row.wnid}  " if row.wnid else ""     # ImageNet classes only
        print(f"  {row.rank:>2}  {row.prob:7.2%}  {row.index:>3}  {wnid}{row.label}")


def run(args) -> int:
    if args.model is not None and args.model not in list_models():
        raise NpvitError(f"unknown model {args.model!r}; choose one of {', '.join(list_models())}")
    if args.weights is None and args.model is None:
        args.model = DEFAULT_MODEL
    check_seed(args.seed)
    apply_threads(args)
    _, args.preprocess, args.size, resize = model_file_settings(args.weights, args.preprocess,
                                                                args.size)
    if args.topk < 1:
        raise NpvitError(f"--topk must be at least 1, got {args.topk}")
    if args.model is not None:
        check_size(args.model, args.size)   # before any image is read
    images = images_or_example(args, "predict", "classifying")

    lazy = _LazyModel(args)

    def classify_one(image_path):
        """(model, rows) or (None, error line) for one image; runs in the --threads pool."""
        try:
            image = load_image(image_path)
        except NpvitError as e:   # one line naming the file; carry on with the next one
            return None, error_line(e)
        model = lazy.get()
        pipeline = pipeline_for(model.name, args.preprocess)
        try:
            x = preprocess(image, pipeline, crop_size=args.size, resize_size=resize)[None]
        except NpvitError as e:   # e.g. a panorama too elongated to resize
            return None, error_line(f"{image_path}: {e}")
        return model, top_k(classify(model, x)[0], args.topk, lazy.class_names)

    failures = 0
    for image_path, (model, rows) in zip(images, map_in_order(classify_one, images)):
        if model is None:
            print(rows, file=sys.stderr)
            failures += 1
            continue
        pipeline = pipeline_for(model.name, args.preprocess)
        if args.json:
            print(json.dumps({"image": image_path, "model": model.name, "weights": lazy.source,
                              "preprocess": pipeline, "size": args.size,
                              "top": [row._asdict() for row in rows]}))
        else:
            _print_table(image_path, model, lazy.source, pipeline, args.size, rows)
    return 1 if failures else 0


def add_parser(sub):
    p = sub.add_parser("predict", help="top-k classes of images (default: an example photo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_images(p)
    add_model_and_weights(p)
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--size", type=int,
                   help=f"network input side: short side resized to SIZE+32, centre crop "
                        f"(default: the model file's, else {DEFAULT_CROP_SIZE})")
    p.add_argument("--preprocess", choices=PREPROCESS_CHOICES,
                   help="default: the model file's, else cvnets = the model family's official "
                        "pipeline "
                        "(cvnets-v1: OpenCV bilinear, BGR; cvnets-v2: PIL bicubic, RGB); "
                        "hf = the Hugging Face port's")
    p.add_argument("--json", action="store_true", help="one JSON object per image (JSON lines)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, when used")
    add_threads(p)
    p.set_defaults(func=run)
