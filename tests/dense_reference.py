"""The PyTorch side of the dense-prediction tests: timm backbones re-configured to ml-cvnets'
output stride 16 / 8 (NOTES.md section 1.3, written out here independently of npvit's rule).
Import only inside tests that already required torch."""
from __future__ import annotations

# (stage, block) -> (stride, dilation) of the convs ml-cvnets changes, from the table in
# ../shared/reference/dense/NOTES.md 1.3: the stride-2 inverted residual's depthwise 3x3
# (stages.L.0.conv2_kxk) and, in v2 only, the MobileViT block's local 3x3 (stages.L.1.conv_kxk).
DILATION_TABLE = {
    16: {(4, 0): (1, 1), (4, 1): (1, 2)},
    8: {(3, 0): (1, 1), (3, 1): (1, 2), (4, 0): (1, 2), (4, 1): (1, 4)},
}


def dilate_timm_backbone(model, output_stride: int, version: int):
    """Change a timm MobileViT's convs in place to ml-cvnets' output stride (32, 16 or 8)."""
    for (stage, block), (stride, dilation) in DILATION_TABLE.get(output_stride, {}).items():
        if block == 0:
            conv = model.stages[stage][0].conv2_kxk.conv
        elif version == 2:
            conv = model.stages[stage][1].conv_kxk.conv
        else:
            continue                       # v1 MobileViT blocks are never dilated
        conv.stride, conv.dilation, conv.padding = (stride, stride), (dilation, dilation), \
            (dilation, dilation)
    return model


def timm_stage_outputs(model, x):
    """The five stage outputs of a timm MobileViT (stem -> stages), with autograd."""
    feats = []
    y = model.stem(x)
    for stage in model.stages:
        y = stage(y)
        feats.append(y)
    return feats
