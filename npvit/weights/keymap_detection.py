"""Key names of the SSDLite detectors' checkpoints: the official ml-cvnets layout -> npvit's.

An official detector file (../shared/reference/dense/cvnets/det_*.tsv lists every key) holds
  encoder.<ml-cvnets classification key>   the backbone (no classifier, no conv_1x1_exp)
  extra_layers.os_{64,128,256}.{dw_conv,pw_conv}.block.{conv,norm}.*, extra_layers.os_-1.1.block.conv.weight
  ssd_heads.<i>.proj_layer.block.{conv,norm}.*       (heads 0-1, where channels differ)
  ssd_heads.<i>.loc_cls_layer.dw_conv.block.{conv,norm}.*, ...pw_conv.block.conv.{weight,bias}
  ssd_heads.5.loc_cls_layer.block.conv.{weight,bias}
npvit names them ``backbone.`` + timm's name (the classification rules of keymap.py) and, for
the rest, the same module path with ``block.conv``/``block.norm`` written ``conv``/``bn``, bare
convs holding weight/bias directly (models/ssdlite.py shows the table). The layout keeps its
name "cvnets" (described as ml-cvnets); npvit's own names are the "timm" layout.
"""
from __future__ import annotations

from .keymap import CVNETS_RULES, rename_key

HEAD_RULES = [
    (r"^extra_layers\.os_-1\.1\.block\.conv\.", "extra_layers.pooled.conv."),
    (r"\.loc_cls_layer\.pw_conv\.block\.conv\.", ".loc_cls_layer.pw_conv."),     # 1x1 with bias
    (r"^(ssd_heads\.\d+\.loc_cls_layer)\.block\.conv\.", r"\1."),                 # the last head
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]


def is_detector(keys) -> bool:
    return any(k.startswith("ssd_heads.") for k in keys)


def detector_names(state: dict):
    """(layout, state dict with npvit names) for an SSD detector's state dict, in either
    layout; None when ``state`` is not a detector's."""
    if not is_detector(state):
        return None
    if any(k.startswith("backbone.") for k in state):
        return "timm", dict(state)
    renamed = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            new = "backbone." + rename_key(key[len("encoder."):], CVNETS_RULES)
        else:
            new = rename_key(key, HEAD_RULES)
        renamed[new] = value
    return "cvnets", renamed

