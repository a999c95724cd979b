"""Key layouts of the segmentation checkpoints, renamed to npvit's (models/segmentation.py).

Two foreign layouts (../shared/reference/dense/NOTES.md 3 and 4; the key listings are in
cvnets/seg_*.tsv and hf/seg_*.tsv there):

* "cvnets-seg", the official ml-cvnets files: the classifier's keys under ``encoder.`` (minus its
  classifier and v1's conv_1x1_exp) and the head under ``seg_head.``, with the v0.2+ aux head at
  ``seg_head.aux_head.`` and the v0.1 DeepLabv3 classifier nested one level deeper
  (``seg_head.classifier.classifier.block.conv``);
* "hf-seg", transformers' MobileViT(V2)ForSemanticSegmentation: the backbone under
  ``mobilevit.`` / ``mobilevitv2.`` and ``segmentation_head.`` (no aux head).

The backbone part goes through the classification rules of keymap.py (``encoder.`` stripped,
so the key is a classifier key) and gets npvit's ``backbone.`` prefix; the head part through the
rules below. Example:
    seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.norm.weight
    head.aspp.pool.block.norm.weight                       (the image-pooling branch)
    head.aspp.pool.bn.weight                               (.block.norm. -> .bn.)
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import NpvitError

CVNETS_HEAD_RULES = [
    (r"^seg_head\.aux_head\.0\.", "aux_head.conv."),
    (r"^seg_head\.aux_head\.2\.block\.conv\.", "aux_head.classifier."),
    (r"^seg_head\.aspp\.aspp_layer\.convs\.4\.aspp_pool\.conv_1x1\.", "head.aspp.pool."),
    (r"^seg_head\.aspp\.aspp_layer\.", "head.aspp."),
    (r"^seg_head\.psp_layer\.psp_branches\.(\d)\.1\.", r"head.branches.\1."),
    (r"^seg_head\.psp_layer\.fusion\.0\.", "head.fusion."),
    (r"^seg_head\.classifier\.(classifier\.)?block\.conv\.", "head.classifier."),  # v0.1 nests it
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]

HF_HEAD_RULES = [
    (r"^segmentation_head\.aspp\.convs\.4\.conv_1x1\.", "head.aspp.pool."),
    (r"^segmentation_head\.aspp\.", "head.aspp."),
    (r"^segmentation_head\.classifier\.convolution\.", "head.classifier."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
]

LAYOUT_NAMES = {"cvnets-seg": "ml-cvnets segmentation", "hf-seg": "Hugging Face segmentation"}


def detect_segmentation_layout(keys) -> str | None:
    """"cvnets-seg", "hf-seg", "timm" (npvit's own segmentation names) or None (not a
    segmentation checkpoint)."""
    keys = list(keys)
    if any(k.startswith("seg_head.") for k in keys):
        return "cvnets-seg"
    if any(k.startswith("segmentation_head.") for k in keys):
        return "hf-seg"
    if any(k.startswith(("head.aspp.", "head.fusion.")) for k in keys):
        return "timm"
    return None


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def segmentation_to_npvit_names(state: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """A "cvnets-seg" or "hf-seg" state dict with npvit's names, same arrays, same order
    (v1 HF attention projections fused into qkv as for the classifiers)."""
    from .keymap import CVNETS_RULES, HF_RULES, _fuse_qkv
    renamed = {}
    for key, value in state.items():
        if layout == "cvnets-seg":
            new = ("backbone." + _rename(key[len("encoder."):], CVNETS_RULES)
                   if key.startswith("encoder.") else _rename(key, CVNETS_HEAD_RULES))
        else:
            new = (_rename(key, HF_HEAD_RULES) if key.startswith("segmentation_head.")
                   else "backbone." + _rename(key, HF_RULES))
        if new in renamed:
            raise NpvitError(f"two {layout} keys map to the same npvit key {new} (second: {key})")
        renamed[new] = value
    return _fuse_qkv(renamed) if layout == "hf-seg" else renamed


def segmentation_candidates(state: dict[str, np.ndarray]) -> list[str]:
    """The segmentation releases an npvit-named state dict can be (same head kind and class
    count), or [] when it is not a segmentation state dict. Narrows model detection so that it
    builds a few models, not all of them."""
    from ..models.segmentation import RELEASES
    from ..data import segmentation_classes
    if "head.classifier.weight" not in state:
        return []
    head = "pspnet" if "head.fusion.conv.weight" in state else "deeplabv3"
    classes = np.shape(state["head.classifier.weight"])[0]
    return [name for name, r in RELEASES.items() if r.head == head
            and len(segmentation_classes(r.dataset)) == classes]
