"""``npvit eval DIR`` on a COCO-layout folder (npvit.detection.coco_folder): run a detector on
every image (or --limit N spread over them) with its release's evaluation settings (320 x 320
input, score > 0.01 / 0.05, NMS 0.5, 200 boxes), then COCO box AP / AR in NumPy
(npvit.detection.coco_map, equal to pycocotools) over the evaluated images.

Reproducing the model zoo's mAP needs COCO val2017 (5000 images and
annotations/instances_val2017.json) and the official weights:
    npvit download ssdlite_mobilevitv2_050_coco
    npvit eval coco/ --model ssdlite_mobilevitv2_050_coco        # zoo: 21.24
The zoo numbers were computed by ml-cvnets under fp16 autocast on a GPU; float32 NumPy may
differ slightly (dense/NOTES.md 2.5).
"""
from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from ..data import load_image
from ..errors import NpvitError
from ..models.ssdlite import RELEASES
from .coco_folder import read_coco_folder
from .coco_map import coco_evaluate
from .pipeline import DEFAULT_DETECTOR, detect_image, load_detector


def evaluate_folder(model, directory, limit: int | None = None, progress: bool = True):
    """(stats dict, images evaluated, images skipped) for ``model`` on a COCO folder."""
    data, files = read_coco_folder(directory)
    images = sorted(data["images"], key=lambda im: im["id"])
    if limit is not None and limit < len(images):
        images = [images[i] for i in np.linspace(0, len(images) - 1, limit).round().astype(int)]
    detections, used, skipped = [], [], 0
    for info in tqdm(images, unit="img", desc=model.name, disable=None if progress else True):
        try:
            found = detect_image(model, load_image(files[info["id"]]))
        except NpvitError as e:
            tqdm.write(f"npvit: error: {e}", file=sys.stderr)
            skipped += 1
            continue
        used.append(info)
        for (x1, y1, x2, y2), score, category in zip(*found):
            detections.append({"image_id": info["id"], "category_id": int(category),
                               "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                               "score": float(score)})
    if not used:
        raise NpvitError(f"none of the {len(images)} images of {directory} could be read")
    ids = {im["id"] for im in used}
    subset = {"images": used, "categories": data["categories"],
              "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    return coco_evaluate(subset, detections), len(used), skipped


def run(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise NpvitError(f"--limit must be at least 1, got {args.limit}")
    if args.weights is None and args.model is None:
        args.model = DEFAULT_DETECTOR
    model, source = load_detector(args.model, args.weights, download=args.download)
    stats, used, skipped = evaluate_folder(model, args.directory, args.limit)
    if args.json:
        print(json.dumps({"model": model.name, "weights": source, "preprocess": model.release.pipeline,
                          "images": used, "skipped": skipped, **stats}))
    else:
        print(f"{model.name}  [{source}, {model.release.pipeline} 320x320]")
        skipped_note = f", {skipped} skipped (unreadable)" if skipped else ""
        print(f"  images   {used} evaluated{skipped_note}")
        print(f"  mAP      {stats['AP']:.2%}  (box AP@[.5:.95]; the model zoo reports "
              f"{RELEASES[model.name].map:.2f}% on COCO val2017)")
        print(f"  AP50     {stats['AP50']:.2%}    AP75   {stats['AP75']:.2%}")
        print(f"  AP small {stats['AP_small']:.2%}    medium {stats['AP_medium']:.2%}    "
              f"large {stats['AP_large']:.2%}")
    return 1 if skipped else 0

