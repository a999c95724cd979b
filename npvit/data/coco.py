"""The 80 COCO detection classes: a detector's softmax column -> (COCO category id, name).

Read from coco_classes.tsv beside this file (written by tools/make_coco_classes.py; its header
says where the names come from). Column 0 of the 81 class logits is background; column k >= 1
is the k-th COCO category id in sorted order, so ids have gaps (12, 26, 29, ... are unused).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import NamedTuple


class CocoClass(NamedTuple):
    column: int        # 1..80: the class's softmax column in an SSD's (.., 81) logits
    category_id: int   # COCO's id, 1..90, as in instances_*.json
    name: str          # e.g. "person"


@lru_cache(maxsize=1)
def coco_classes() -> tuple[CocoClass, ...]:
    """The 80 classes in column order (index i holds column i + 1)."""
    text = (resources.files(__package__) / "coco_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple(CocoClass(int(c), int(i), n) for c, i, n in rows)


@lru_cache(maxsize=1)
def coco_category_ids():
    """int64 (81,): the COCO category id of each softmax column; -1 for background (column 0)."""
    import numpy as np
    return np.array([-1] + [c.category_id for c in coco_classes()], dtype=np.int64)


@lru_cache(maxsize=1)
def coco_names() -> dict[int, str]:
    """{category id: name}, e.g. {1: "person", ..., 90: "toothbrush"}."""
    return {c.category_id: c.name for c in coco_classes()}
