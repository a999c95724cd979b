"""Segmentation heads of ml-cvnets, forward and backward: DeepLabv3 (ASPP), PSPNet, and the
auxiliary head the v0.2+ releases train with (../shared/reference/dense/NOTES.md 1.4, 1.5).

Every conv unit is conv (no bias) -> BatchNorm -> ReLU (``ConvNormAct(..., act="relu")``); the
classifiers are 1x1 convs with a bias. npvit's names, with ml-cvnets' beside them:

    DeepLabV3Head                            ml-cvnets seg_head.
      aspp.convs.0      1x1                    aspp.aspp_layer.convs.0.block
      aspp.convs.1-3    3x3, dilation r_i      aspp.aspp_layer.convs.{1,2,3}.block
      aspp.pool         global mean -> 1x1     aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block
      aspp.project      1x1 5C -> C            aspp.aspp_layer.project.block
      classifier        1x1 C -> classes       classifier.block.conv (v0.1: classifier.classifier.block.conv)
    PSPHead
      branches.0-3      pool p x p -> 1x1      psp_layer.psp_branches.{i}.1.block
      fusion            3x3 2C -> 512          psp_layer.fusion.0.block
      classifier        1x1 512 -> classes     classifier.block.conv
    AuxHead (train-only; reads stage 3)
      conv              3x3 C -> max(C//4, 128)  aux_head.0.block
      classifier        1x1 -> classes           aux_head.2.block.conv

Dropouts are as in ml-cvnets (identity in eval): v0.1 ASPP element dropout 0.1 and channel dropout
0.1 before the classifier; v0.2+ channel dropout 0.1 after the ASPP projection, after PSP's fusion
and in the aux head.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..nn import Conv2d, ConvNormAct, Dropout, Dropout2d, Identity, Module, Sequential

DROPOUT = 0.1
PSP_POOL_SIZES = (1, 2, 3, 6)
PSP_FUSION_CHANNELS = 512


class ASPP(Module):
    """Atrous spatial pyramid pooling: x (N, C_in, h, w) -> (N, C, h, w).

    Five parallel branches, concatenated in this order: a 1x1 conv, three 3x3 convs with
    dilation r_1, r_2, r_3 (padding = dilation, so the size is kept), and the image-level
    branch (mean over the map -> 1x1 conv -> broadcast back to h x w; ml-cvnets' bilinear
    resize from 1x1 is exactly this broadcast). Then a 1x1 projection 5C -> C and dropout.
    """

    def __init__(self, in_chs, out_chs, rates, element_dropout=False, dtype=np.float32):
        super().__init__()
        self.convs = Sequential(ConvNormAct(in_chs, out_chs, 1, act="relu", dtype=dtype),
                                *[ConvNormAct(in_chs, out_chs, 3, act="relu", dilation=r, dtype=dtype)
                                  for r in rates])
        self.pool = ConvNormAct(in_chs, out_chs, 1, act="relu", dtype=dtype)
        self.project = ConvNormAct(5 * out_chs, out_chs, 1, act="relu", dtype=dtype)
        self.dropout = Dropout(DROPOUT) if element_dropout else Dropout2d(DROPOUT)

    def forward(self, x):
        h, w = x.shape[2:]
        pooled = self.pool.forward(x.mean(axis=(2, 3), keepdims=True))          # (N, C, 1, 1)
        branches = [conv.forward(x) for conv in self.convs]
        branches.append(np.broadcast_to(pooled, (*pooled.shape[:2], h, w)))
        self.save_cache(x.shape)
        return self.dropout.forward(self.project.forward(np.concatenate(branches, axis=1)))

    def backward(self, dy):
        n, c_in, h, w = self.pop_cache()
        d = self.project.backward(self.dropout.backward(dy))
        parts = np.split(d, 5, axis=1)
        dx = sum(conv.backward(part) for conv, part in zip(self.convs, parts[:4]))
        dpooled = self.pool.backward(parts[4].sum(axis=(2, 3), keepdims=True))  # broadcast's adjoint
        return dx + dpooled / (h * w)                                           # the mean's adjoint


class DeepLabV3Head(Module):
    """x: the last stage's output (N, C_in, h, w) -> logits (N, classes, h, w)."""

    def __init__(self, in_chs, num_classes, out_chs=512, rates=(6, 12, 18), v01=False,
                 dtype=np.float32):
        super().__init__()
        self.aspp = ASPP(in_chs, out_chs, rates, element_dropout=v01, dtype=dtype)
        self.classifier_dropout = Dropout2d(DROPOUT) if v01 else Identity()
        self.classifier = Conv2d(out_chs, num_classes, 1, dtype=dtype)

    def forward(self, x):
        return self.classifier.forward(self.classifier_dropout.forward(self.aspp.forward(x)))

    def backward(self, dy):
        return self.aspp.backward(self.classifier_dropout.backward(self.classifier.backward(dy)))


def psp_branch_channels(in_chs: int) -> int:
    """ml-cvnets' reduction: (C // 4) rounded down to a multiple of 16."""
    return ((in_chs // 4) // 16) * 16


class PSPHead(Module):
    """Pyramid pooling: x (N, C, h, w) -> logits (N, classes, h, w).

    For each pool size p in (1, 2, 3, 6): adaptive average pool to p x p (PyTorch's bins) ->
    1x1 conv C -> R -> bilinear resize back to h x w with align_corners=True. Concatenate
    [x, b_1, b_2, b_3, b_6] (C + 4R channels), 3x3 fusion conv -> 512, dropout, classifier.
    """

    def __init__(self, in_chs, num_classes, dtype=np.float32):
        super().__init__()
        r = psp_branch_channels(in_chs)
        self.branches = Sequential(*[ConvNormAct(in_chs, r, 1, act="relu", dtype=dtype)
                                     for _ in PSP_POOL_SIZES])
        self.fusion = ConvNormAct(in_chs + len(PSP_POOL_SIZES) * r, PSP_FUSION_CHANNELS, 3,
                                  act="relu", dtype=dtype)
        self.dropout = Dropout2d(DROPOUT)
        self.classifier = Conv2d(PSP_FUSION_CHANNELS, num_classes, 1, dtype=dtype)

    def forward(self, x):
        h, w = x.shape[2:]
        parts, caches = [x], []
        for p, branch in zip(PSP_POOL_SIZES, self.branches):
            pooled, pool_cache = F.adaptive_avg_pool_forward(x, (p, p))
            up, up_cache = F.resize_bilinear_forward(branch.forward(pooled), (h, w), align_corners=True)
            parts.append(up)
            caches.append((pool_cache, up_cache))
        self.save_cache((x.shape[1], caches))
        y = self.dropout.forward(self.fusion.forward(np.concatenate(parts, axis=1)))
        return self.classifier.forward(y)

    def backward(self, dy):
        c, caches = self.pop_cache()
        d = self.fusion.backward(self.dropout.backward(self.classifier.backward(dy)))
        dx = d[:, :c].copy()
        parts = np.split(d[:, c:], len(PSP_POOL_SIZES), axis=1)
        for branch, part, (pool_cache, up_cache) in zip(self.branches, parts, caches):
            dpooled = branch.backward(F.resize_bilinear_backward(part, up_cache))
            dx += F.adaptive_avg_pool_backward(dpooled, pool_cache)
        return dx


class AuxHead(Module):
    """The v0.2+ auxiliary classifier on stage 3's output: (N, C, h, w) -> (N, classes, h, w).
    ml-cvnets trains with it (loss weight 0.4) and skips it in evaluation."""

    def __init__(self, in_chs, num_classes, dtype=np.float32):
        super().__init__()
        inner = max(in_chs // 4, 128)
        self.conv = ConvNormAct(in_chs, inner, 3, act="relu", dtype=dtype)
        self.dropout = Dropout2d(DROPOUT)
        self.classifier = Conv2d(inner, num_classes, 1, dtype=dtype)

    def forward(self, x):
        return self.classifier.forward(self.dropout.forward(self.conv.forward(x)))

    def backward(self, dy):
        return self.conv.backward(self.dropout.backward(self.classifier.backward(dy)))
