"""``npvit detect [IMAGE...]``: the objects an SSDLite detector finds in each image (80 COCO
classes), as a table or JSON, optionally drawn on the image.

Without IMAGE it runs on the example photo that ships with matplotlib (Grace Hopper, public
domain), so it works offline on a fresh install.

Model: --model NAME (default ssdlite_mobilevitv2_050_coco; `npvit models --task detection`
lists the 11 releases); with --weights and no --model, the release is detected from the file.
Weights: --weights PATH, else the official weights in the cache (`npvit download NAME`, or add
--download), else — said in one line on stderr and in the output — RANDOM untrained weights
(whose boxes mean nothing: scores near 1/81 everywhere; try --threshold 0.012 to see them).
Each image is resized to 320 x 320 as the release was evaluated (v0.1: OpenCV bilinear, BGR;
v0.2+: PIL bicubic, RGB); boxes are reported in the image's own pixels as x1 y1 x2 y2.
--threshold T (default 0.3, as ml-cvnets' demo commands) keeps detections scoring above T;
the release's NMS and caps apply as in its evaluation.
-o boxes.png draws the boxes with class names and scores (several images: boxes_<image>.png).

An image that cannot be used gives one line "npvit: error: FILE: problem" on stderr; the
others are still processed. Exit code: 0 when every image was processed, 1 when some were not,
2 for a usage or setup error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.coco import coco_names
from ..detection.draw import draw_detections
from ..detection.pipeline import (DEFAULT_DETECTOR, RANDOM_WEIGHTS, as_records, detect_image,
                                  load_detector)
from ..errors import NpvitError
from ..models import list_models
from ..models.ssdlite import INPUT_SIZE
from ..outputs import save_image
from ..threads import set_num_threads
from .options import ReadableImages, add_images, images_or_example, note_random_weights

DEFAULT_THRESHOLD = 0.3


def drawing_path(output: str, image_path: str, several: bool) -> Path:
    out = Path(output)
    return out.with_name(f"{out.stem}_{Path(image_path).stem}{out.suffix}") if several else out


def run(args) -> int:
    detectors = list_models(task="detection")
    if args.model is not None and args.model not in detectors:
        raise NpvitError(f"unknown detector {args.model!r}; choose one of {', '.join(detectors)}")
    if not 0.0 <= args.threshold < 1.0:
        raise NpvitError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.output is not None and Path(args.output).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise NpvitError(f"-o {args.output}: give a .png or .jpg file name")
    if args.weights is None and args.model is None:
        args.model = DEFAULT_DETECTOR
    images = images_or_example(args, "detect", "looking at")
    set_num_threads(1)   # images one by one, BLAS on one thread (npvit/threads.py): a busy
                         # neighbour then slows this in proportion, not out of it

    model = source = None
    names, readable = coco_names(), ReadableImages(images)
    for image_path, image in readable:
        if model is None:   # loaded at the first readable image, as `npvit predict` does
            model, source = load_detector(args.model, args.weights, fallback_random=True,
                                          download=args.download, seed=args.seed)
            if source == RANDOM_WEIGHTS:
                note_random_weights("detect", model.name)
        found = detect_image(model, image, args.threshold)
        pipeline = model.release.pipeline
        if args.json:
            print(json.dumps({"image": image_path, "model": model.name, "weights": source,
                              "preprocess": pipeline, "size": [INPUT_SIZE, INPUT_SIZE],
                              "threshold": args.threshold, "detections": as_records(found)}))
        else:
            print(f"{image_path}  [{model.name}, {source}, {pipeline} {INPUT_SIZE}x{INPUT_SIZE}, "
                  f"score > {args.threshold:g}: {len(found.scores)} found]")
            for box, score, category in zip(*found):
                x1, y1, x2, y2 = box
                print(f"  {score:6.1%}  {names[int(category)]:<15} ({int(category):>2})  "
                      f"{x1:7.1f} {y1:7.1f} {x2:7.1f} {y2:7.1f}")
        if args.output is not None:
            path = drawing_path(args.output, image_path, len(images) > 1)
            save_image(draw_detections(image, found), path)
            print(f"npvit detect: boxes drawn in {path}", file=sys.stderr)
    return 1 if readable.failures else 0


def add_parser(sub):
    p = sub.add_parser("detect", help="COCO objects in images with an SSDLite detector",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_images(p)
    p.add_argument("--model", metavar="NAME",
                   help=f"one of `npvit models --task detection` (default {DEFAULT_DETECTOR}; "
                        "with --weights: detected)")
    p.add_argument("--weights", metavar="PATH", help="checkpoint (.pt/.pth, .safetensors, .npz)")
    p.add_argument("--download", action="store_true",
                   help="download the official weights into the cache if they are not there")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"keep detections scoring above this (default {DEFAULT_THRESHOLD})")
    p.add_argument("-o", "--output", metavar="FILE.png", help="draw the boxes into this image file")
    p.add_argument("--json", action="store_true", help="one JSON object per image (JSON lines)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, when used")
    p.set_defaults(func=run)
