"""Labelled segmentation folders in the layouts the datasets ship in:

* PASCAL VOC 2012: ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` (palette PNGs whose
  pixel values are the class indices 0-20, 255 on object borders = ignored) under DIR, or under
  DIR/VOC2012 or DIR/VOCdevkit/VOC2012. With ``ImageSets/Segmentation/val.txt`` the ids listed
  there are used (the 1,449 validation images); otherwise every mask that has its image.
* ADE20k (ADEChallengeData2016): ``images/validation/<id>.jpg`` and
  ``annotations/validation/<id>.png`` (grey PNGs, value k+1 = class channel k, 0 = "other",
  ignored), or ``images/`` and ``annotations/`` holding the files directly.

``read_target`` turns a mask into class channels with the ignored pixels outside [0, C):
VOC keeps 255, ADE20k maps 0 to -1 (ml-cvnets' ``mask - 1``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import NpvitError


def _voc_root(root: Path) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def _ade_dirs(root: Path) -> tuple[Path, Path] | None:
    for images, masks in ((root / "images" / "validation", root / "annotations" / "validation"),
                          (root / "images", root / "annotations")):
        if images.is_dir() and masks.is_dir():
            return images, masks
    return None


def dataset_layout(root) -> str | None:
    """"voc", "ade20k" or None when ``root`` is in neither layout."""
    root = Path(root)
    if _voc_root(root) is not None:
        return "voc"
    if _ade_dirs(root) is not None:
        return "ade20k"
    return None


def labelled_pairs(root) -> tuple[str, list[tuple[Path, Path]]]:
    """(dataset, [(image file, mask file)] sorted by id)."""
    root = Path(root)
    voc = _voc_root(root)
    if voc is not None:
        listing = voc / "ImageSets" / "Segmentation" / "val.txt"
        if listing.is_file():   # the official split; a missing file is reported when read
            ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:                   # every mask that has its image
            ids = sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png")
                         if (voc / "JPEGImages" / f"{p.stem}.jpg").is_file())
        return "voc", [(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png")
                       for i in ids]
    ade = _ade_dirs(root)
    if ade is not None:
        images, masks = ade
        pairs = [(im, masks / f"{im.stem}.png") for im in sorted(images.glob("*.jpg"))]
        return "ade20k", [(im, m) for im, m in pairs if m.is_file()]
    raise NpvitError(f"{root}: not a segmentation dataset folder (expected JPEGImages/ + "
                     f"SegmentationClass/ for PASCAL VOC, or images/ + annotations/ for ADE20k)")


def read_target(path, dataset: str) -> np.ndarray:
    """A mask PNG -> int64 (H, W) class channels; ignored pixels are outside [0, classes)."""
    path = Path(path)
    if not path.is_file():
        raise NpvitError(f"{path}: no such mask file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode not in ("P", "L", "I;16", "I"):
                    raise NpvitError(f"{path}: a mask must hold class indices (palette or grey "
                                     f"PNG), not a {im.mode} colour image")
                values = np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise NpvitError(f"{path}: cannot read the mask ({e})") from None
    return values - 1 if dataset == "ade20k" else values
