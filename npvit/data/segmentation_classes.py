"""The class names of the segmentation releases: PASCAL VOC (21, background = channel 0) and
ADE20k (150; channel k is mask value k + 1, mask value 0 is ignored).

Read from voc_classes.tsv / ade20k_classes.tsv beside this file (written by
tools/make_segmentation_classes.py; their headers say where the lists come from).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import NamedTuple

from ..errors import NpvitError

DATASETS = ("voc", "ade20k")


class SegmentationClass(NamedTuple):
    channel: int      # logit channel (the model's output index)
    mask_value: int   # the value of this class in the dataset's annotation PNGs
    name: str


@lru_cache(maxsize=None)
def segmentation_classes(dataset: str) -> tuple[SegmentationClass, ...]:
    """The classes of ``dataset`` ("voc" or "ade20k") in logit-channel order."""
    if dataset not in DATASETS:
        raise NpvitError(f"unknown segmentation dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    text = (resources.files(__package__) / f"{dataset}_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple(SegmentationClass(int(c), int(v), name) for c, v, name in rows)
