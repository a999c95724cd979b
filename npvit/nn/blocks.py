"""The three building blocks of MobileViT and MobileViTv2, forward and backward.

* InvertedResidual — MobileNetV2's block: 1x1 expand -> 3x3 depthwise (carries the stride)
  -> 1x1 project, with an identity shortcut when the shape is unchanged.
* MobileViTBlock (v1) — local 3x3 conv, 1x1 to width d, unfold into P = 2x2 sequences of N
  patches, L transformer layers, LayerNorm, fold, 1x1 back to C, concatenate with the block
  input and fuse with a 3x3 conv.
* MobileViTBlockV2 — depthwise 3x3, 1x1 to d, unfold to (B, d, P, N), L separable-attention
  layers, GroupNorm(1), fold, 1x1 back to C (no activation, no fusion, no shortcut).

Child names are timm's (conv_kxk, conv_1x1, transformer.<i>, norm, conv_proj, conv_fusion;
conv1_1x1, conv2_kxk, conv3_1x1), so the state_dict keys are timm's.

Feature maps whose side is not a multiple of the patch size are resized as ml-cvnets does:
v1 resizes the local representation up with bilinear (align_corners=False) before unfolding and
back down after folding; v2 resizes the *block input* up with bilinear (align_corners=True) and
never back, so later layers see the larger map. timm does exactly the same in both cases.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .layers import Conv2d, ConvNormAct, GroupNorm, LayerNorm
from .module import Module, Sequential
from .transformer import LinearTransformerLayer, TransformerLayer


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of 8, never dropping more than 10% (timm's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def _next_multiple(h: int, w: int, ph: int, pw: int) -> tuple[int, int]:
    return math.ceil(h / ph) * ph, math.ceil(w / pw) * pw


class InvertedResidual(Module):
    """x (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).

    conv1_1x1: C_in -> C_in * expand (BN, SiLU); conv2_kxk: depthwise 3x3 with the stride and
    dilation (BN, SiLU); conv3_1x1: -> C_out (BN, no activation); + x when stride 1 and
    C_in == C_out. (Dilation > 1 only in the dense-prediction backbones, models/network.py.)
    """

    def __init__(self, in_chs, out_chs, stride=1, expand_ratio=2.0, dilation=1, dtype=np.float32):
        super().__init__()
        mid = make_divisible(in_chs * expand_ratio)
        self.out_chs = out_chs
        self.conv1_1x1 = ConvNormAct(in_chs, mid, 1, dtype=dtype)
        self.conv2_kxk = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, dilation=dilation,
                                     dtype=dtype)
        self.conv3_1x1 = ConvNormAct(mid, out_chs, 1, act=False, dtype=dtype)
        self.has_shortcut = stride == 1 and in_chs == out_chs

    def forward(self, x):
        y = self.conv3_1x1.forward(self.conv2_kxk.forward(self.conv1_1x1.forward(x)))
        return y + x if self.has_shortcut else y

    def backward(self, dy):
        dx = self.conv1_1x1.backward(self.conv2_kxk.backward(self.conv3_1x1.backward(dy)))
        return dx + dy if self.has_shortcut else dx


class MobileViTBlock(Module):
    """MobileViT v1 block: x (B, C, H, W) -> (B, C, H, W).

    Shapes, with d the transformer width and (h, w) = (H, W) rounded up to a multiple of 2:
      conv_kxk   3x3 C -> C, BN, SiLU                       (B, C, H, W)
      conv_1x1   1x1 C -> d, no bias                         (B, d, H, W)
      [resize to (h, w), bilinear, align_corners=False]      (B, d, h, w)
      unfold     P = 4 pixel positions, N = h*w/4 patches    (B*P, N, d)
      transformer L x [LN -> MHA -> +, LN -> FFN -> +]       (B*P, N, d)
      norm       LayerNorm                                   (B*P, N, d)
      fold                                                   (B, d, h, w)
      [resize back to (H, W)]                                (B, d, H, W)
      conv_proj  1x1 d -> C, BN, SiLU                        (B, C, H, W)
      conv_fusion 3x3 on concat(x, .) 2C -> C, BN, SiLU      (B, C, H, W)
    """

    patch_size = (2, 2)

    def __init__(self, chs, transformer_dim, depth, num_heads=4, mlp_ratio=2.0, drop=0.0,
                 dtype=np.float32):
        super().__init__()
        self.out_chs = chs
        self.conv_kxk = ConvNormAct(chs, chs, 3, dtype=dtype)
        self.conv_1x1 = Conv2d(chs, transformer_dim, 1, bias=False, dtype=dtype)
        self.transformer = Sequential(*[
            TransformerLayer(transformer_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, drop=drop,
                             dtype=dtype)
            for _ in range(depth)])
        self.norm = LayerNorm(transformer_dim, dtype=dtype)
        self.conv_proj = ConvNormAct(transformer_dim, chs, 1, dtype=dtype)
        self.conv_fusion = ConvNormAct(2 * chs, chs, 3, dtype=dtype)
        self.last_grid = None   # (n_h, n_w) patches of the last forward, for npvit.viz maps

    def forward(self, x):
        ph, pw = self.patch_size
        y = self.conv_1x1.forward(self.conv_kxk.forward(x))
        h, w = y.shape[2:]
        new_hw = _next_multiple(h, w, ph, pw)
        resize_up = resize_down = None
        if new_hw != (h, w):
            y, resize_up = F.resize_bilinear_forward(y, new_hw, align_corners=False)
        self.last_grid = (new_hw[0] // ph, new_hw[1] // pw)
        t = self.norm.forward(self.transformer.forward(F.unfold_v1(y, ph, pw)))
        y = F.fold_v1(t, new_hw, ph, pw)
        if resize_up is not None:
            y, resize_down = F.resize_bilinear_forward(y, (h, w), align_corners=False)
        y = self.conv_proj.forward(y)
        out = self.conv_fusion.forward(np.concatenate([x, y], axis=1))
        self.save_cache((x.shape[1], (h, w), new_hw, resize_up, resize_down))
        return out

    def backward(self, dout):
        c, hw, new_hw, resize_up, resize_down = self.pop_cache()
        ph, pw = self.patch_size
        dcat = self.conv_fusion.backward(dout)
        dx_shortcut, dy = dcat[:, :c], dcat[:, c:]
        dy = self.conv_proj.backward(dy)
        if resize_down is not None:
            dy = F.resize_bilinear_backward(dy, resize_down)
        dt = self.transformer.backward(self.norm.backward(F.unfold_v1(dy, ph, pw)))
        dy = F.fold_v1(dt, new_hw, ph, pw)        # unfold's backward is fold
        if resize_up is not None:
            dy = F.resize_bilinear_backward(dy, resize_up)
        return self.conv_kxk.backward(self.conv_1x1.backward(dy)) + dx_shortcut


class MobileViTBlockV2(Module):
    """MobileViTv2 block: x (B, C, H, W) -> (B, C, h, w), (h, w) = (H, W) rounded up to even.

      [resize input to (h, w), bilinear, align_corners=True]  (B, C, h, w)
      conv_kxk   depthwise 3x3, BN, SiLU                      (B, C, h, w)
      conv_1x1   1x1 C -> d, no bias                          (B, d, h, w)
      unfold     P = 4 pixel positions, N = h*w/4 patches     (B, d, P, N)
      transformer L x [GN(1) -> separable attn -> +, GN(1) -> 1x1 FFN -> +]
      norm       GroupNorm with one group                     (B, d, P, N)
      fold                                                    (B, d, h, w)
      conv_proj  1x1 d -> C, BN, no activation                (B, C, h, w)

    ``dilation`` applies to conv_kxk only (ml-cvnets dilates the local depthwise conv of the v2
    blocks in dilated stages; nothing else in the block changes).
    """

    patch_size = (2, 2)

    def __init__(self, chs, transformer_dim, depth, mlp_ratio=2.0, drop=0.0, dilation=1,
                 dtype=np.float32):
        super().__init__()
        self.out_chs = chs
        self.conv_kxk = ConvNormAct(chs, chs, 3, groups=chs, dilation=dilation, dtype=dtype)
        self.conv_1x1 = Conv2d(chs, transformer_dim, 1, bias=False, dtype=dtype)
        self.transformer = Sequential(*[
            LinearTransformerLayer(transformer_dim, mlp_ratio=mlp_ratio, drop=drop, dtype=dtype)
            for _ in range(depth)])
        self.norm = GroupNorm(1, transformer_dim, dtype=dtype)
        self.conv_proj = ConvNormAct(transformer_dim, chs, 1, act=False, dtype=dtype)
        self.last_grid = None   # (n_h, n_w) patches of the last forward, for npvit.viz maps

    def forward(self, x):
        ph, pw = self.patch_size
        h, w = x.shape[2:]
        new_hw = _next_multiple(h, w, ph, pw)
        resize = None
        if new_hw != (h, w):
            x, resize = F.resize_bilinear_forward(x, new_hw, align_corners=True)
        y = self.conv_1x1.forward(self.conv_kxk.forward(x))
        self.last_grid = (new_hw[0] // ph, new_hw[1] // pw)
        t = self.norm.forward(self.transformer.forward(F.unfold_v2(y, ph, pw)))
        out = self.conv_proj.forward(F.fold_v2(t, new_hw, ph, pw))
        self.save_cache((new_hw, resize))
        return out

    def backward(self, dout):
        new_hw, resize = self.pop_cache()
        ph, pw = self.patch_size
        dt = F.unfold_v2(self.conv_proj.backward(dout), ph, pw)   # fold's backward is unfold
        dy = F.fold_v2(self.transformer.backward(self.norm.backward(dt)), new_hw, ph, pw)
        dx = self.conv_kxk.backward(self.conv_1x1.backward(dy))
        return dx if resize is None else F.resize_bilinear_backward(dx, resize)
