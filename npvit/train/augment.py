"""Image -> training input: random resized crop and horizontal flip (train), or the model
family's evaluation pipeline (validation). Pillow and NumPy only.

Both transforms take ``(image, rng)`` — an RGB PIL image and a ``np.random.Generator`` — and
return float32 (3, size, size) in [0, 1], with the channels in the order of the pipeline the
model's official weights expect (BGR for v1, RGB for v2; see npvit.data.preprocess). Training
and evaluation must agree on that order, or fine-tuning from official v1 weights would start
from a network that sees every image with red and blue swapped.

The training augmentation is the one both MobileViT ImageNet recipes use before their extras
(ml-cvnets ``random_resized_crop`` + ``random_horizontal_flip``; the v2 recipe adds RandAugment,
random erasing, mixup and cutmix, which are left out here):
  random resized crop   pick a box covering scale ~ U(0.08, 1) of the image area with aspect
                        ratio w/h log-uniform in (3/4, 4/3), then resize it to size x size
                        (torchvision's ``RandomResizedCrop.get_params``: ml-cvnets'
                        data/transforms/image_pil.py RandomResizedCrop subclasses it)
  horizontal flip       with probability 1/2
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..data import get_pipeline, preprocess

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)

# the resampling filter of each pipeline, for the crop's resize (PIL stands in for OpenCV's
# bilinear in v1: no antialiasing matters little for a random augmentation)
_PIL_FILTER = {"opencv-bilinear": Image.Resampling.BILINEAR,
               "pil-bilinear": Image.Resampling.BILINEAR,
               "pil-bicubic": Image.Resampling.BICUBIC}


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(left, top, crop_width, crop_height) of a random crop, as torchvision draws it.

    Up to 10 tries: area = U(scale) * W * H, aspect = exp(U(log ratio)), w = round(sqrt(area *
    aspect)), h = round(sqrt(area / aspect)); the first box that fits is placed uniformly. If
    none fits (very elongated images), fall back to the largest centred box whose aspect ratio
    is clamped into ``ratio``.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif image_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _to_input(pixels: np.ndarray, channel_order: str) -> np.ndarray:
    """uint8 (S, S, 3) RGB -> float32 (3, S, S) in [0, 1], channels in ``channel_order``."""
    x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    if channel_order == "BGR":
        x = x[::-1]
    return np.ascontiguousarray(x)


def train_transform(pipeline: str, size: int, scale=SCALE, flip: bool = True):
    """The training transform for models evaluated with ``pipeline``: a random resized crop
    covering ``scale`` = (min, max) of the image area, resized to size x size, then (with
    ``flip``) a horizontal flip with probability 1/2."""
    spec = get_pipeline(pipeline)
    resample = _PIL_FILTER[spec.resample]

    def transform(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        left, top, w, h = random_resized_crop_box(*image.size, rng, scale=scale)
        crop = image.resize((size, size), resample, box=(left, top, left + w, top + h))
        pixels = np.asarray(crop)                       # uint8 (size, size, 3) RGB
        if flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]                    # horizontal flip
        return _to_input(pixels, spec.channel_order)
    return transform


def eval_transform(pipeline: str, size: int, resize_size: int | None = None):
    """The evaluation transform: ``npvit.data.preprocess`` (short side to ``resize_size``,
    default size + 32, then the centre size x size crop; ``resize_size=size`` keeps the whole
    of a square image). Deterministic; ``rng`` is accepted so both transforms look alike."""
    def transform(image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        return preprocess(image, pipeline, crop_size=size, resize_size=resize_size)
    return transform
