"""A photo -> the network input its release was evaluated with (../shared/reference/dense/
NOTES.md 1.6), float32 (1, 3, H', W') in [0, 1], no mean/std normalisation:

  name                 used by                       resize                                  channels
  seg-v0.1             v0.1 DeepLabv3 MobileViT      exactly 512 x 512, OpenCV bilinear      BGR
  seg-v0.2             v0.2+ MobileViTv2 releases    short side 512 (aspect kept), PIL bicubic  RGB
  seg-v0.2-bilinear    v0.2 DeepLabv3 MobileViT-S    short side 512, PIL bilinear            RGB

These are the ``--evaluation.segmentation.resize-input-images`` paths of the docs' evaluation
commands. The model then fits the input to a multiple of its output stride and resizes the
logits to the photo's own size (``SegmentationModel.predict``), so masks always come out at
the original resolution, where the dataset's annotations are.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..data import to_rgb
from ..data.preprocess import resize_opencv_bilinear, resize_short_side
from ..errors import NpvitError

EVAL_SIZE = 512
PIPELINES = ("seg-v0.1", "seg-v0.2", "seg-v0.2-bilinear")


def segmentation_input(image: Image.Image, pipeline: str) -> np.ndarray:
    """PIL image -> float32 (1, 3, H', W') for the named pipeline."""
    rgb = to_rgb(image)
    if pipeline == "seg-v0.1":
        pixels = resize_opencv_bilinear(np.asarray(rgb), EVAL_SIZE, EVAL_SIZE)[:, :, ::-1]  # BGR
    elif pipeline == "seg-v0.2":
        pixels = resize_short_side(rgb, EVAL_SIZE, "pil-bicubic")
    elif pipeline == "seg-v0.2-bilinear":
        pixels = resize_short_side(rgb, EVAL_SIZE, "pil-bilinear")
    else:
        raise NpvitError(f"unknown segmentation preprocessing {pipeline!r}; choose one of "
                         f"{', '.join(PIPELINES)}")
    x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(x)[None]
