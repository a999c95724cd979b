"""MobileViTv2 variants (Mehta & Rastegari, 2022): width multipliers 0.5 ... 2.0.

Base widths (multiplier 1.0): stem 32, stages 0-4 = 64, 128, 256, 384, 512, each scaled by
int(c * multiplier) — identical to ml-cvnets' make_divisible/bound_fn for the seven released
widths (NOTES.md). Inverted residuals expand 2x; the transformer width of a block is half its
channels (rounded to a multiple of 8); depths 2, 4, 3; FFN width 2d; patch 2x2; no final conv.
"""
from __future__ import annotations

import numpy as np

from ..nn.blocks import InvertedResidual, MobileViTBlockV2, make_divisible
from ..nn.module import Module
from .network import MobileViTNet, dilated_stages

WIDTHS = {"mobilevitv2_050": 0.5, "mobilevitv2_075": 0.75, "mobilevitv2_100": 1.0,
          "mobilevitv2_125": 1.25, "mobilevitv2_150": 1.5, "mobilevitv2_175": 1.75,
          "mobilevitv2_200": 2.0}
BASE_CHS = (64, 128, 256, 384, 512)
IR_DEPTHS = (1, 2)
TRANSFORMER_DEPTHS = (2, 4, 3)


def build_stages(name: str, output_stride=32, dtype=np.float32) -> tuple[int, list[list[Module]]]:
    """(stem channels, the blocks of stages 0-4) at the given output stride (network.py)."""
    m = WIDTHS[name]
    chs = tuple(int(c * m) for c in BASE_CHS)
    stem = int(32 * m)
    stages, prev = [], stem
    for i, depth in enumerate(IR_DEPTHS):
        blocks = []
        for j in range(depth):
            stride = 2 if (i == 1 and j == 0) else 1
            blocks.append(InvertedResidual(prev, chs[i], stride, 2.0, dtype=dtype))
            prev = chs[i]
        stages.append(blocks)
    for c, depth, (stride, ir_dilation, block_dilation) in zip(chs[2:], TRANSFORMER_DEPTHS,
                                                              dilated_stages(output_stride)):
        stages.append([InvertedResidual(prev, c, stride, 2.0, dilation=ir_dilation, dtype=dtype),
                       MobileViTBlockV2(c, make_divisible(0.5 * c), depth, mlp_ratio=2.0,
                                        dilation=block_dilation, dtype=dtype)])
        prev = c
    return stem, stages


def build(name: str, num_classes=1000, drop_rate=0.0, dtype=np.float32) -> MobileViTNet:
    stem_chs, stages = build_stages(name, dtype=dtype)
    return MobileViTNet(name, 2, stem_chs, stages, 0, num_classes, drop_rate, dtype)
