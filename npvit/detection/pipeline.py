"""Detecting objects in image files with an SSDLite release: what `npvit detect` and
`npvit eval` (COCO folders) share, usable from Python too.

    model, source = load_detector("ssdlite_mobilevitv2_050_coco")    # official weights (cache)
    found = detect_image(model, load_image("street.jpg"))            # boxes in the photo's pixels
    for box, score, category in zip(*found): ...

Weights come from, in this order (as for the classifiers, npvit.inference.load_model): a
checkpoint file (``weights=PATH``, any layout npvit reads, the release detected from its
shapes when ``name`` is None); the official weights in the cache; a download when asked; or,
only with ``fallback_random=True``, random weights (the source then says so).
Every image is resized to 320 x 320 as the release's evaluation did (aspect ratio not kept):
v0.1 releases OpenCV bilinear on BGR, v0.2+ PIL bicubic on RGB; boxes come back in the
original image's pixels (x scaled by W / 320, y by H / 320, as ml-cvnets' eval does).
"""
from __future__ import annotations

import numpy as np

from ..data import preprocess_resized
from ..data.coco import coco_names
from ..errors import NpvitError
from ..models import create_model, list_models
from ..models.ssd_boxes import Detections
from ..models.ssdlite import INPUT_SIZE, SSDLite
from ..weights import convert_checkpoint, local_weights, official, pretrained_path
from ..weights.download import cache_dir
from ..weights.keymap import LAYOUT_NAMES

# The smallest MobileViTv2 detector (2.0 M parameters, 21.24 mAP), PIL preprocessing only.
DEFAULT_DETECTOR = "ssdlite_mobilevitv2_050_coco"
RANDOM_WEIGHTS = "RANDOM weights (untrained)"


def load_detector(name: str | None = None, weights=None, fallback_random: bool = False,
                  download: bool = False, seed: int = 0) -> tuple[SSDLite, str]:
    """(detector in eval mode, one line saying where its weights came from)."""
    detectors = list_models(task="detection")
    if name is not None and name not in detectors:
        raise NpvitError(f"unknown detector {name!r}; choose one of {', '.join(detectors)}")
    if weights is not None:
        converted = convert_checkpoint(weights, model=name)
        if converted.model not in detectors:
            raise NpvitError(f"{weights} holds {converted.model}, not a detector "
                             f"(`npvit models --task detection` lists them)")
        model = create_model(converted.model)
        model.load_state_dict(converted.state)
        return model.eval(), f"weights {weights} ({LAYOUT_NAMES[converted.layout]} layout)"
    name = name or DEFAULT_DETECTOR
    path = local_weights(name)
    if path is None and download:
        path = pretrained_path(name)
    if path is not None:
        model = create_model(name)
        model.load_state_dict(convert_checkpoint(path, model=name).state)
        return model.eval(), f"official weights ({path})"
    if fallback_random:
        return create_model(name, seed=seed).eval(), RANDOM_WEIGHTS
    raise NpvitError(f"no official weights for {name} in {cache_dir()}: run `npvit download {name}` "
                     f"(or add --download), or pass --weights PATH to a checkpoint you fetched "
                     f"({official(name).url})")


def detect_image(model: SSDLite, image, score_threshold: float | None = None) -> Detections:
    """An RGB PIL image -> its Detections in the image's own pixels (labels: COCO category ids).
    score_threshold: None keeps the release's evaluation threshold (0.01 / 0.05)."""
    width, height = image.size
    x = preprocess_resized(image, model.release.pipeline, INPUT_SIZE, INPUT_SIZE)[None]
    found = model.detect(x, score_threshold)[0]
    scale = np.array([width / INPUT_SIZE, height / INPUT_SIZE] * 2, dtype=np.float64)
    return Detections(found.boxes.astype(np.float64) * scale, found.scores.astype(np.float64),
                      found.labels)


def as_records(found: Detections) -> list[dict]:
    """JSON-ready rows: box [x1, y1, x2, y2] (pixels), score, category_id, label."""
    names = coco_names()
    return [{"box": [round(float(v), 2) for v in box], "score": round(float(score), 5),
             "category_id": int(category), "label": names[int(category)]}
            for box, score, category in zip(*found)]
