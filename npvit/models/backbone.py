"""The MobileViT feature extractor for dense prediction (segmentation, detection).

The classifier's stem and five stages, built by the same builders as classification
(models/mobilevit.py, models/mobilevit_v2.py), without the classifier head and without v1's
final 1x1 conv (ml-cvnets drops ``conv_1x1_exp`` for segmentation and detection). At output
stride 16 or 8 the last stages stop striding and dilate instead (``network.dilated_stages``):

    output stride     32 (classification, detection)   16                 8
    stage outputs     /2 /4 /8 /16 /32                  /2 /4 /8 /16 /16   /2 /4 /8 /8 /8

Names are timm's (``stem.conv.weight``, ``stages.3.1.conv_kxk.bn.weight``, ...), so the
backbone part of every official checkpoint loads with the classification key maps.
"""
from __future__ import annotations

import numpy as np

from ..data import check_input
from ..errors import NpvitError
from ..nn import ConvNormAct, Module, Sequential
from . import mobilevit, mobilevit_v2

VARIANTS = (*mobilevit.CONFIGS, *mobilevit_v2.WIDTHS)


class MobileViTBackbone(Module):
    """x (B, 3, H, W) -> the outputs of stages 0-4, a list of five (B, C_i, H_i, W_i) arrays.

    ``channels``: the five C_i. ``backward(dys)`` takes one gradient per stage output (an
    array, or None where nothing flows into that level), returns dL/dx and fills every
    parameter's ``grad`` (zeros for stages no gradient reaches).
    """

    def __init__(self, variant: str, output_stride: int = 32, dtype=np.float32):
        super().__init__()
        if variant in mobilevit.CONFIGS:
            stem_chs, stages = mobilevit.build_stages(variant, output_stride, dtype)
            self.version = 1
        elif variant in mobilevit_v2.WIDTHS:
            stem_chs, stages = mobilevit_v2.build_stages(variant, output_stride, dtype)
            self.version = 2
        else:
            raise NpvitError(f"unknown backbone {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.name, self.output_stride = variant, output_stride
        self.stem = ConvNormAct(3, stem_chs, 3, stride=2, dtype=dtype)
        self.stages = Sequential(*[Sequential(*blocks) for blocks in stages])
        self.channels = [blocks[-1].out_chs for blocks in stages]

    def forward(self, x) -> list[np.ndarray]:
        x = self.stem.forward(check_input(x).astype(self.dtype, copy=False))
        features = []
        for stage in self.stages:
            x = stage.forward(x)
            features.append(x)
        return features

    def backward(self, dys) -> np.ndarray:
        if len(dys) != len(self.stages):
            raise ValueError(f"expected {len(self.stages)} gradients (one per stage), got {len(dys)}")
        deepest = max((i for i, dy in enumerate(dys) if dy is not None), default=-1)
        if deepest < 0:
            raise ValueError("backward needs a gradient for at least one stage output")
        for stage in list(self.stages)[deepest + 1:]:    # nothing reaches these stages
            for p in stage.parameters():
                p.accumulate(np.zeros_like(p.data))
            for m in stage.modules():
                m._cache = None                           # free the unused forward caches
        dx = None
        for i in range(deepest, -1, -1):
            if dys[i] is not None:
                dx = dys[i] if dx is None else dx + dys[i]
            dx = self.stages[i].backward(dx)
        return self.stem.backward(dx)

    def extra_repr(self):
        return f"{self.name!r}, output stride {self.output_stride}, {self.num_parameters():,} parameters"
