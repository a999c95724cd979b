"""Attention modules: parameters named like timm's, math in ``npvit.functional.attention``.

The projections are Linear / Conv2d children only so that the state_dict keys are timm's
(``qkv.weight``, ``proj.bias``, ``qkv_proj.weight`` ...); the fused functional op uses their
arrays directly and the backward accumulates into their gradients.

Each module keeps a reference (not a copy) to what its last forward computed, for the score
and attention maps: ``MultiHeadAttention.last_attention`` (B, h, k, k),
``LinformerAttention.last_attention`` (B, h, k, p) and
``SeparableSelfAttention.last_context_scores`` (B, 1, P, N).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import NpvitError
from .init import generator, uniform_fan_in
from .layers import Conv2d, Linear
from .module import Module, Parameter, is_grad_enabled


def _kept(module, weights):
    """The attention weights to keep on the module for visualisers: while ``npvit.viz.capture``
    records, or whenever backward's cache keeps them alive anyway. Plain inference (no_grad)
    keeps none, so a v1 model does not hold every layer's (B*P, h, N, N) map until the end."""
    return weights if module.record or is_grad_enabled() else None


def _check_tokens(module, x, dim):
    if x.ndim != 3 or x.shape[-1] != dim:
        raise NpvitError(f"{type(module).__name__} expects tokens (B, k, {dim}), got {x.shape}")


class MultiHeadAttention(Module):
    """timm's v1 ``Attention``: tokens (B, k, d) -> (B, k, d); h heads of d/h channels,
    fused qkv projection (3d x d, rows [q | k | v]), scaling 1/sqrt(d/h), dropout attn_drop
    on the attention weights in training, output projection (d x d)."""

    def __init__(self, dim, num_heads, attn_drop=0.0, dtype=np.float32):
        super().__init__()
        if dim % num_heads:
            raise NpvitError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = Linear(dim, 3 * dim, dtype=dtype)
        self.proj = Linear(dim, dim, dtype=dtype)
        self.rng = generator()
        self.last_attention = None
        self.record = False     # npvit.viz.capture sets it while it records

    def forward(self, x):
        _check_tokens(self, x, self.proj.weight.shape[0])
        y, cache = F.multi_head_attention_forward(
            x, self.qkv.weight.data, self.qkv.bias.data, self.proj.weight.data,
            self.proj.bias.data, self.num_heads, self.attn_drop, self.training, self.rng,
            need_weights=self.record or is_grad_enabled())
        self.last_attention = _kept(self, cache["attention"])
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dw_qkv, db_qkv, dw_proj, db_proj = F.multi_head_attention_backward(dy, self.pop_cache())
        self.qkv.weight.accumulate(dw_qkv)
        self.qkv.bias.accumulate(db_qkv)
        self.proj.weight.accumulate(dw_proj)
        self.proj.bias.accumulate(db_proj)
        return dx

    def extra_repr(self):
        return f"dim={self.proj.weight.shape[0]}, num_heads={self.num_heads}"


class LinformerAttention(Module):
    """Linformer self-attention on tokens (B, seq_len, d): like MultiHeadAttention, but keys and
    values are projected from seq_len to proj_len tokens by ``key_proj`` (the paper's E) and
    ``value_proj`` (F), both (proj_len, seq_len) and shared by the heads."""

    def __init__(self, dim, num_heads, seq_len, proj_len, dtype=np.float32):
        super().__init__()
        if dim % num_heads:
            raise NpvitError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.seq_len = num_heads, seq_len
        self.qkv = Linear(dim, 3 * dim, dtype=dtype)
        self.key_proj = Parameter(uniform_fan_in((proj_len, seq_len), seq_len, dtype))
        self.value_proj = Parameter(uniform_fan_in((proj_len, seq_len), seq_len, dtype))
        self.proj = Linear(dim, dim, dtype=dtype)
        self.last_attention = None
        self.record = False     # npvit.viz.capture sets it while it records

    def forward(self, x):
        _check_tokens(self, x, self.proj.weight.shape[0])
        if x.shape[1] != self.seq_len:
            raise NpvitError(f"LinformerAttention was built for {self.seq_len} tokens, got {x.shape[1]}")
        y, cache = F.linformer_attention_forward(
            x, self.qkv.weight.data, self.qkv.bias.data, self.key_proj.data, self.value_proj.data,
            self.proj.weight.data, self.proj.bias.data, self.num_heads)
        self.last_attention = _kept(self, cache["attention"])
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dw_qkv, db_qkv, de, df, dw_proj, db_proj = F.linformer_attention_backward(
            dy, self.pop_cache())
        self.qkv.weight.accumulate(dw_qkv)
        self.qkv.bias.accumulate(db_qkv)
        self.key_proj.accumulate(de)
        self.value_proj.accumulate(df)
        self.proj.weight.accumulate(dw_proj)
        self.proj.bias.accumulate(db_proj)
        return dx

    def extra_repr(self):
        p, k = self.key_proj.shape
        return f"dim={self.proj.weight.shape[0]}, num_heads={self.num_heads}, seq_len={k}, proj_len={p}"


class SeparableSelfAttention(Module):
    """MobileViTv2's separable self-attention, timm's ``LinearSelfAttention``:
    x (B, d, P, N) -> (B, d, P, N), or tokens (B, k, d) -> (B, k, d) (treated as P = 1).
    ``qkv_proj``: 1x1 conv d -> 1 + 2d (rows: 1 query score, d keys, d values);
    ``out_proj``: 1x1 conv d -> d."""

    def __init__(self, dim, dtype=np.float32):
        super().__init__()
        self.dim = dim
        self.qkv_proj = Conv2d(dim, 1 + 2 * dim, 1, dtype=dtype)
        self.out_proj = Conv2d(dim, dim, 1, dtype=dtype)
        self.last_context_scores = None
        self.record = False     # npvit.viz.capture sets it while it records

    def forward(self, x):
        tokens = x.ndim == 3
        if tokens:
            _check_tokens(self, x, self.dim)
            x = x.transpose(0, 2, 1)[:, :, None, :]     # (B, k, d) -> (B, d, 1, k)
        elif x.ndim != 4 or x.shape[1] != self.dim:
            raise NpvitError(f"SeparableSelfAttention expects (B, {self.dim}, P, N) or tokens "
                             f"(B, k, {self.dim}), got {x.shape}")
        y, cache = F.separable_attention_forward(x, self.qkv_proj.weight.data, self.qkv_proj.bias.data,
                                                 self.out_proj.weight.data, self.out_proj.bias.data)
        self.last_context_scores = _kept(self, cache["context_scores"])
        self.save_cache((cache, tokens))
        return y[:, :, 0, :].transpose(0, 2, 1) if tokens else y

    def backward(self, dy):
        cache, tokens = self.pop_cache()
        if tokens:
            dy = dy.transpose(0, 2, 1)[:, :, None, :]
        dx, dw_qkv, db_qkv, dw_out, db_out = F.separable_attention_backward(dy, cache)
        self.qkv_proj.weight.accumulate(dw_qkv)
        self.qkv_proj.bias.accumulate(db_qkv)
        self.out_proj.weight.accumulate(dw_out)
        self.out_proj.bias.accumulate(db_out)
        return dx[:, :, 0, :].transpose(0, 2, 1) if tokens else dx

    def extra_repr(self):
        return f"dim={self.dim}"
