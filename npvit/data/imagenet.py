"""The 1000 ImageNet-1k classes: output index -> (WordNet id, readable label).

Read from imagenet_classes.tsv beside this file (written by tools/make_imagenet_classes.py;
its header says where the lists come from). Index i is the i-th wnid in sorted order, the
order in which ImageNet classifiers, the official MobileViT ones included, number their
outputs.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import NamedTuple


class ImageNetClass(NamedTuple):
    index: int
    wnid: str    # WordNet id, e.g. "n03763968"; also the ImageNet folder name
    label: str   # WordNet lemmas, e.g. "tench, Tinca tinca"

    @property
    def name(self) -> str:
        """The first lemma, a short display name ("tench")."""
        return self.label.split(",")[0]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1000 classes in output-index order."""
    text = (resources.files(__package__) / "imagenet_classes.tsv").read_text(encoding="utf-8")
    classes = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        index, wnid, label = line.split("\t")
        classes.append(ImageNetClass(int(index), wnid, label))
    return tuple(classes)


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    """{"n01440764": 0, ...}: the class index of a folder named by its wnid."""
    return {c.wnid: c.index for c in imagenet_classes()}
