"""Modules around ``npvit.functional.attention_zoo``: the attention units of EfficientViT,
EfficientFormer, TinyViT, LookupViT and MPCViT.

The first three take timm's constructor arguments and input layout and carry timm's state_dict
keys, so a timm state_dict loads 1:1 (``qkvs.0.conv.weight``, ``attention_biases`` ...). The
relative-position index is rebuilt from the resolution (``attention_bias_idxs``): a persistent
buffer in EfficientFormer (so it is in the state_dict, as in timm), a plain attribute in
TinyViT and EfficientViT (timm keeps it out of their state_dicts).

Children such as ``qkv`` or ``qkvs.0`` only hold parameters under timm's names; the fused
functional op reads their arrays and backward accumulates into their gradients.
``last_attention`` keeps the attention weights of the last forward (see ``attention._kept``).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import NpvitError
from ..functional import attention_zoo as Z
from .attention import _check_tokens, _kept
from .init import generator
from .layers import ConvNormAct, LayerNorm, Linear, ReLU
from .module import Module, Parameter, Sequential


def _accumulate_linear(layer, dw, db):
    layer.weight.accumulate(dw)
    if layer.bias is not None:
        layer.bias.accumulate(db)


def _bias(layer):
    return None if layer.bias is None else layer.bias.data


class CascadedGroupAttention(Module):
    """EfficientViT's cascaded group attention, timm ``efficientvit_msra.CascadedGroupAttention``:
    x (B, dim, r, r) -> (B, dim, r, r) with r = resolution. Head i reads the i-th of num_heads
    channel splits plus head i-1's output; per head a ConvNorm dim/h -> 2 key_dim + val_dim
    (``qkvs.i``), a depthwise ConvNorm on the queries (``dws.i``, kernel kernels[i]) and a bias
    table (``attention_biases[i]``); then ReLU and a ConvNorm back to dim (``proj.1``).
    val_dim = attn_ratio * key_dim must equal dim / num_heads (the cascade adds them)."""

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=14,
                 kernels=(5, 5, 5, 5), dtype=np.float32):
        super().__init__()
        val_dim = int(attn_ratio * key_dim)
        if dim % num_heads or val_dim != dim // num_heads:
            raise NpvitError(f"CascadedGroupAttention needs attn_ratio * key_dim == dim / num_heads, "
                             f"got {val_dim} and {dim} / {num_heads}")
        if len(kernels) < num_heads:
            raise NpvitError(f"CascadedGroupAttention needs one kernel per head: {num_heads} heads, "
                             f"kernels {tuple(kernels)}")
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, val_dim
        self.resolution = resolution
        self.qkvs = Sequential(*[ConvNormAct(dim // num_heads, 2 * key_dim + val_dim, 1, act=False,
                                             dtype=dtype) for _ in range(num_heads)])
        self.dws = Sequential(*[ConvNormAct(key_dim, key_dim, kernels[i], groups=key_dim, act=False,
                                            dtype=dtype) for i in range(num_heads)])
        self.proj = Sequential(ReLU(), ConvNormAct(val_dim * num_heads, dim, 1, act=False,
                                                   dtype=dtype))
        self.proj[1].bn.weight.data[:] = 0               # timm: bn_weight_init=0
        self.attention_biases = Parameter(np.zeros((num_heads, resolution * resolution), dtype))
        self.attention_bias_idxs = Z.relative_position_index(resolution, resolution)
        self.last_attention = None
        self.record = False

    @staticmethod
    def _conv_bn(m):
        return (m.conv.weight.data, m.bn.weight.data, m.bn.bias.data, m.bn.running_mean,
                m.bn.running_var)

    def _conv_norms(self):
        return [*self.qkvs, *self.dws, self.proj[1]]

    def forward(self, x):
        r = self.resolution
        dim = self.proj[1].conv.weight.shape[0]
        if x.ndim != 4 or x.shape[1:] != (dim, r, r):
            raise NpvitError(f"CascadedGroupAttention expects (B, {dim}, {r}, {r}), got {x.shape}")
        if self.training:
            for m in self._conv_norms():
                m.bn.num_batches_tracked += 1
        y, cache = F.cascaded_group_attention_forward(
            x, [self._conv_bn(m) for m in self.qkvs], [self._conv_bn(m) for m in self.dws],
            self._conv_bn(self.proj[1]), self.attention_biases.data, self.attention_bias_idxs,
            self.key_dim, self.val_dim, self.training)
        self.last_attention = _kept(self, cache["attention"])
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, grads = F.cascaded_group_attention_backward(dy, self.pop_cache())
        pairs = [*zip(self.qkvs, grads["qkvs"]), *zip(self.dws, grads["dws"]),
                 (self.proj[1], grads["proj"])]
        for m, (dw, dgamma, dbeta) in pairs:
            m.conv.weight.accumulate(dw)
            m.bn.weight.accumulate(dgamma)
            m.bn.bias.accumulate(dbeta)
        self.attention_biases.accumulate(grads["attention_biases"])
        return dx

    def extra_repr(self):
        return (f"heads={self.num_heads}, key_dim={self.key_dim}, val_dim={self.val_dim}, "
                f"resolution={self.resolution}")


class _BiasedAttention(Module):
    """The state EfficientFormer's and TinyViT's attention share: ``qkv`` dim -> h (2 dk + dv)
    (per head [q | k | v]), ``proj`` h dv -> dim, ``attention_biases`` (h, rows * cols)."""

    def __init__(self, dim, key_dim, num_heads, attn_ratio, rows, cols, dtype):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.dim, self.tokens = dim, rows * cols
        self.qkv = Linear(dim, num_heads * (2 * key_dim + self.val_dim), dtype=dtype)
        self.proj = Linear(num_heads * self.val_dim, dim, dtype=dtype)
        self.attention_biases = Parameter(np.zeros((num_heads, rows * cols), dtype))
        self.last_attention = None
        self.record = False

    def _check(self, x):
        _check_tokens(self, x, self.dim)
        if x.shape[1] != self.tokens:
            raise NpvitError(f"{type(self).__name__} was built for {self.tokens} tokens "
                             f"(its resolution), got {x.shape[1]}")

    def _arrays(self):
        return (self.qkv.weight.data, _bias(self.qkv), self.proj.weight.data, _bias(self.proj),
                self.attention_biases.data, self.attention_bias_idxs)

    def _accumulate(self, dw_qkv, db_qkv, dw_proj, db_proj, dtable):
        _accumulate_linear(self.qkv, dw_qkv, db_qkv)
        _accumulate_linear(self.proj, dw_proj, db_proj)
        self.attention_biases.accumulate(dtable)

    def extra_repr(self):
        return (f"dim={self.dim}, key_dim={self.key_dim}, num_heads={self.num_heads}, "
                f"val_dim={self.val_dim}, tokens={self.tokens}")


class EfficientFormerAttention(_BiasedAttention):
    """EfficientFormer's attention, timm ``efficientformer.Attention``: tokens (B, N, dim) ->
    (B, N, dim), N = resolution^2 (resolution an int or a (rows, cols) pair)."""

    def __init__(self, dim=384, key_dim=32, num_heads=8, attn_ratio=4, resolution=7,
                 dtype=np.float32):
        rows, cols = (resolution, resolution) if np.isscalar(resolution) else resolution
        super().__init__(dim, key_dim, num_heads, attn_ratio, rows, cols, dtype)
        self.register_buffer("attention_bias_idxs", Z.relative_position_index(rows, cols))

    def forward(self, x):
        self._check(x)
        y, cache = F.biased_attention_forward(x, *self._arrays(), self.num_heads, self.key_dim,
                                              self.val_dim)
        self.last_attention = _kept(self, cache["attention"])
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, *grads = F.biased_attention_backward(dy, self.pop_cache())
        self._accumulate(*grads)
        return dx


class TinyViTAttention(_BiasedAttention):
    """TinyViT's attention, timm ``tiny_vit.Attention``: windows (B * windows, N, dim) ->
    (B * windows, N, dim), N = resolution[0] * resolution[1]; LayerNorm (``norm``) first.
    Cut a feature map into windows with ``npvit.functional.window_partition_forward``."""

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=(14, 14),
                 dtype=np.float32):
        if not (isinstance(resolution, tuple) and len(resolution) == 2):
            raise NpvitError(f"TinyViTAttention's resolution is a (rows, cols) tuple, "
                             f"got {resolution!r}")
        super().__init__(dim, key_dim, num_heads, attn_ratio, *resolution, dtype)
        self.norm = LayerNorm(dim, dtype=dtype)
        self.attention_bias_idxs = Z.relative_position_index(*resolution)

    def forward(self, x):
        self._check(x)
        y, cache = F.tinyvit_attention_forward(x, self.norm.weight.data, self.norm.bias.data,
                                               *self._arrays(), self.num_heads, self.key_dim,
                                               self.val_dim, self.norm.eps)
        self.last_attention = _kept(self, cache["attention"])
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dnorm_weight, dnorm_bias, *grads = F.tinyvit_attention_backward(dy, self.pop_cache())
        self.norm.weight.accumulate(dnorm_weight)
        self.norm.bias.accumulate(dnorm_bias)
        self._accumulate(*grads)
        return dx


class LookupCrossAttention(Module):
    """LookupViT's bidirectional cross-attention: lookup tokens x (B, k, dim) -> (B, k, dim).

    ``forward(x, z=None)``: z (B, M, dim) are the compressed tokens; without z the module's own
    ``compressed_tokens`` (M, dim) are used for every sample (learned, like Perceiver latents;
    in LookupViT the first block's compressed tokens are a resized patch grid and each later
    block receives the previous block's). ``compressed_mixer``, any Module on (B, M, dim) such
    as a ``TransformerLayer``, runs on the compressed tokens between the gather and the way
    back, as in a LookupViT block; without it the way back reads the gathered tokens directly.
    The compressed tokens after the mixer are ``last_compressed`` (B, M, dim).
    ``backward(dy, dz=None)`` -> dx, where dz is the gradient for ``last_compressed``; the
    gradient for a given z is ``last_dz``. Parameters: ``q`` (compressed queries), ``kv``
    (lookup keys and values), ``proj_compressed``, ``value_compressed`` and ``proj_lookup``
    (all Linear), ``compressed_tokens``, and the mixer's."""

    def __init__(self, dim, num_heads=8, num_compressed=49, compressed_mixer=None,
                 dtype=np.float32):
        super().__init__()
        if dim % num_heads:
            raise NpvitError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.q = Linear(dim, dim, dtype=dtype)
        self.kv = Linear(dim, 2 * dim, dtype=dtype)
        self.proj_compressed = Linear(dim, dim, dtype=dtype)
        self.value_compressed = Linear(dim, dim, dtype=dtype)
        self.proj_lookup = Linear(dim, dim, dtype=dtype)
        self.compressed_tokens = Parameter((0.02 * generator().standard_normal((num_compressed, dim))
                                            ).astype(dtype))
        self.compressed_mixer = compressed_mixer
        self.last_compressed = self.last_dz = None
        self.last_attention = None
        self.record = False

    def forward(self, x, z=None):
        _check_tokens(self, x, self.dim)
        own = z is None
        if own:
            tokens = self.compressed_tokens.data
            z = np.broadcast_to(tokens, (x.shape[0], *tokens.shape))
        elif z.ndim != 3 or z.shape[0] != x.shape[0] or z.shape[2] != self.dim:
            raise NpvitError(f"LookupCrossAttention expects compressed tokens (B, M, {self.dim}) "
                             f"with B = {x.shape[0]}, got {z.shape}")
        z_out, gather_cache = F.lookup_gather_forward(
            x, z, self.q.weight.data, _bias(self.q), self.kv.weight.data, _bias(self.kv),
            self.proj_compressed.weight.data, _bias(self.proj_compressed), self.num_heads)
        self.last_attention = _kept(self, gather_cache["gather"])
        if self.compressed_mixer is not None:
            z_out = self.compressed_mixer.forward(z_out)
        x_out, scatter_cache = F.lookup_scatter_forward(
            z_out, gather_cache, self.value_compressed.weight.data, _bias(self.value_compressed),
            self.proj_lookup.weight.data, _bias(self.proj_lookup))
        self.last_compressed = z_out
        self.save_cache((gather_cache, scatter_cache, own))
        return x_out

    def backward(self, dy, dz=None):
        gather_cache, scatter_cache, own = self.pop_cache()
        dz_mixed, dscores, dw_vc, db_vc, dw_pl, db_pl = F.lookup_scatter_backward(dy, scatter_cache)
        if dz is not None:
            dz_mixed = dz_mixed + dz
        if self.compressed_mixer is not None:
            dz_mixed = self.compressed_mixer.backward(dz_mixed)
        dx, dz_in, dw_q, db_q, dw_kv, db_kv, dw_pc, db_pc = F.lookup_gather_backward(
            dz_mixed, dscores, gather_cache)
        for layer, dw, db in ((self.q, dw_q, db_q), (self.kv, dw_kv, db_kv),
                              (self.proj_compressed, dw_pc, db_pc),
                              (self.value_compressed, dw_vc, db_vc), (self.proj_lookup, dw_pl, db_pl)):
            _accumulate_linear(layer, dw, db)
        if own:
            self.compressed_tokens.accumulate(dz_in.sum(axis=0))
            self.last_dz = None
        else:
            self.last_dz = dz_in
        return dx

    def extra_repr(self):
        return (f"dim={self.dim}, num_heads={self.num_heads}, "
                f"num_compressed={self.compressed_tokens.shape[0]}")


class MPCAttention(Module):
    """MPCViT's attention: tokens (B, k, dim) -> (B, k, dim), multi-head self-attention whose
    softmax is ``kind`` = "softmax", "relu" (ReLU softmax) or "scaling" (scaling attention),
    or a sequence of num_heads of these (MPCViT's heterogeneous attention, a kind per head);
    ``qkv`` (3 dim, dim; bias only with qkv_bias, as MPCViT's code has none) and ``proj``."""

    def __init__(self, dim, num_heads=8, kind="relu", qkv_bias=False, dtype=np.float32):
        super().__init__()
        if dim % num_heads:
            raise NpvitError(f"dim {dim} is not divisible by num_heads {num_heads}")
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if any(k not in Z.ATTENTION_KINDS for k in kinds) or len(kinds) not in (1, num_heads):
            raise NpvitError(f"MPCAttention kind must be one of {', '.join(Z.ATTENTION_KINDS)} or a "
                             f"list of {num_heads} of them (one per head), got {kind!r}")
        kind = kind if isinstance(kind, str) else tuple(kinds)
        self.dim, self.num_heads, self.kind = dim, num_heads, kind
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias, dtype=dtype)
        self.proj = Linear(dim, dim, dtype=dtype)
        self.last_attention = None
        self.record = False

    def forward(self, x):
        _check_tokens(self, x, self.dim)
        y, cache = F.mpc_attention_forward(x, self.qkv.weight.data, _bias(self.qkv),
                                           self.proj.weight.data, _bias(self.proj),
                                           self.num_heads, self.kind)
        self.last_attention = _kept(self, cache["attention"])
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dw_qkv, db_qkv, dw_proj, db_proj = F.mpc_attention_backward(dy, self.pop_cache())
        _accumulate_linear(self.qkv, dw_qkv, db_qkv)
        _accumulate_linear(self.proj, dw_proj, db_proj)
        return dx

    def extra_repr(self):
        return f"dim={self.dim}, num_heads={self.num_heads}, kind={self.kind}"
