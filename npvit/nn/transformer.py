"""The transformer layers of MobileViT (v1) and MobileViTv2, forward and backward.

Both are pre-norm residual blocks, x = x + attn(norm1(x)); x = x + mlp(norm2(x)), and the
backward of a residual is "the gradient flows straight through and also through the branch":
    dx = dy + branch.backward(dy).

Dropout placement follows timm (ml-cvnets has the same positions):
* v1 ``TransformerLayer`` (timm ``vision_transformer.Block`` as MobileViT builds it):
  attention-weight dropout ``attn_drop`` inside the attention; ``drop`` after the attention's
  output projection, after the MLP's SiLU and after the MLP's fc2;
* v2 ``LinearTransformerLayer`` (timm ``LinearTransformerBlock``): ``drop`` after the
  attention's output projection and after the MLP's SiLU (timm's ``ConvMlp`` has none after fc2).
"""
from __future__ import annotations

import numpy as np

from .attention import MultiHeadAttention, SeparableSelfAttention
from .layers import Conv2d, Dropout, GroupNorm, LayerNorm, Linear, SiLU
from .module import Module, Sequential


class Mlp(Sequential):
    """timm's ``Mlp`` on tokens (B, k, d): fc1 (d -> hidden), SiLU, dropout, fc2, dropout.
    Children are named as timm's (fc1, act, drop1, fc2, drop2), so the keys are mlp.fc1.*,
    mlp.fc2.*."""

    def __init__(self, dim, hidden, drop=0.0, dtype=np.float32):
        Module.__init__(self)
        self.fc1 = Linear(dim, hidden, dtype=dtype)
        self.act = SiLU(inplace=True)                    # fc1 output is fresh: overwrite it
        self.drop1 = Dropout(drop)
        self.fc2 = Linear(hidden, dim, dtype=dtype)
        self.drop2 = Dropout(drop)


class ConvMlp(Sequential):
    """timm's ``ConvMlp`` on (B, d, P, N): 1x1 conv fc1 (d -> hidden), SiLU, dropout,
    1x1 conv fc2 (hidden -> d)."""

    def __init__(self, dim, hidden, drop=0.0, dtype=np.float32):
        Module.__init__(self)
        self.fc1 = Conv2d(dim, hidden, 1, dtype=dtype)
        self.act = SiLU(inplace=True)                    # fc1 output is fresh: overwrite it
        self.drop = Dropout(drop)
        self.fc2 = Conv2d(hidden, dim, 1, dtype=dtype)


class PreNormResidualLayer(Module):
    """The computation both MobileViT transformer layers share; subclasses only choose the
    norm, attention and MLP modules (norm1, attn, attn_out_drop, norm2, mlp):
        x = x + drop(attn(norm1(x)));  x = x + mlp(norm2(x))"""

    def forward(self, x):
        x = x + self.attn_out_drop.forward(self.attn.forward(self.norm1.forward(x)))
        return x + self.mlp.forward(self.norm2.forward(x))

    def backward(self, dy):
        dy = dy + self.norm2.backward(self.mlp.backward(dy))
        return dy + self.norm1.backward(self.attn.backward(self.attn_out_drop.backward(dy)))


class TransformerLayer(PreNormResidualLayer):
    """MobileViT's transformer layer on tokens (B, k, d):
        x = x + drop(attn(norm1(x)));  x = x + mlp(norm2(x))
    norm1, norm2: LayerNorm (eps 1e-5); attn: MultiHeadAttention; mlp: d -> mlp_ratio*d, SiLU,
    -> d. state_dict keys: norm1.*, attn.qkv.*, attn.proj.*, norm2.*, mlp.fc1.*, mlp.fc2.*."""

    def __init__(self, dim, num_heads=4, mlp_ratio=2.0, drop=0.0, attn_drop=0.0, dtype=np.float32):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.attn = MultiHeadAttention(dim, num_heads, attn_drop=attn_drop, dtype=dtype)
        self.attn_out_drop = Dropout(drop)               # timm's Attention.proj_drop
        self.norm2 = LayerNorm(dim, eps=1e-5, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, dtype=dtype)


class LinearTransformerLayer(PreNormResidualLayer):
    """MobileViTv2's transformer layer on (B, d, P, N):
        x = x + drop(attn(norm1(x)));  x = x + mlp(norm2(x))
    norm1, norm2: GroupNorm(1, d) (ml-cvnets' "LayerNorm2D"); attn: SeparableSelfAttention;
    mlp: 1x1 conv d -> mlp_ratio*d, SiLU, 1x1 conv -> d. state_dict keys: norm1.*,
    attn.qkv_proj.*, attn.out_proj.*, norm2.*, mlp.fc1.*, mlp.fc2.*."""

    def __init__(self, dim, mlp_ratio=2.0, drop=0.0, dtype=np.float32):
        super().__init__()
        self.norm1 = GroupNorm(1, dim, eps=1e-5, dtype=dtype)
        self.attn = SeparableSelfAttention(dim, dtype=dtype)
        self.attn_out_drop = Dropout(drop)               # timm's LinearSelfAttention.out_drop
        self.norm2 = GroupNorm(1, dim, eps=1e-5, dtype=dtype)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop, dtype=dtype)
