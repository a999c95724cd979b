"""MobileViT v1 variants (Mehta & Rastegari, ICLR 2022): xxs, xs, s.

Widths from the paper's Table 4 / ml-cvnets `mobilevit.py` configs (timm's model_cfgs agree):
  channels of stages 0-4, transformer width d of the three MobileViT blocks, the inverted
  residual expansion, and the width of the final 1x1 conv. Transformer depths are 2, 4, 3;
  4 heads; FFN width 2d; patch 2x2.
"""
from __future__ import annotations

import numpy as np

from ..nn.blocks import InvertedResidual, MobileViTBlock
from ..nn.module import Module
from .network import MobileViTNet, dilated_stages

CONFIGS = {
    #                channels (stages 0-4)      d of blocks 2-4   expand  final
    "mobilevit_xxs": dict(chs=(16, 24, 48, 64, 80), dims=(64, 80, 96), expand=2.0, final=320),
    "mobilevit_xs": dict(chs=(32, 48, 64, 80, 96), dims=(96, 120, 144), expand=4.0, final=384),
    "mobilevit_s": dict(chs=(32, 64, 96, 128, 160), dims=(144, 192, 240), expand=4.0, final=640),
}
STEM_CHS = 16
IR_DEPTHS = (1, 3)              # inverted residuals in stages 0 and 1
TRANSFORMER_DEPTHS = (2, 4, 3)  # transformer layers in the blocks of stages 2, 3, 4


def build_stages(name: str, output_stride=32, dtype=np.float32) -> tuple[int, list[list[Module]]]:
    """(stem channels, the blocks of stages 0-4) at the given output stride (network.py)."""
    cfg = CONFIGS[name]
    chs, e = cfg["chs"], cfg["expand"]
    stages, prev = [], STEM_CHS
    for i, depth in enumerate(IR_DEPTHS):
        blocks = []
        for j in range(depth):
            stride = 2 if (i == 1 and j == 0) else 1
            blocks.append(InvertedResidual(prev, chs[i], stride, e, dtype=dtype))
            prev = chs[i]
        stages.append(blocks)
    for c, d, depth, (stride, dilation, _) in zip(chs[2:], cfg["dims"], TRANSFORMER_DEPTHS,
                                                   dilated_stages(output_stride)):
        # The v1 block ignores the stage's dilation: ml-cvnets builds it without one.
        stages.append([InvertedResidual(prev, c, stride, e, dilation=dilation, dtype=dtype),
                       MobileViTBlock(c, d, depth, num_heads=4, mlp_ratio=2.0, dtype=dtype)])
        prev = c
    return STEM_CHS, stages


def build(name: str, num_classes=1000, drop_rate=0.0, dtype=np.float32) -> MobileViTNet:
    stem_chs, stages = build_stages(name, dtype=dtype)
    return MobileViTNet(name, 1, stem_chs, stages, CONFIGS[name]["final"], num_classes, drop_rate,
                        dtype)
