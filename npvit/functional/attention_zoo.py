"""The efficient-attention units that followed MobileViTv2, each a forward/backward pair:

* cascaded group attention — EfficientViT (Liu et al. 2023), timm's
  ``efficientvit_msra.CascadedGroupAttention``: head i sees the i-th channel split of the input
  PLUS head i-1's output (the cascade), its queries pass a depthwise conv, and every head adds a
  learned bias indexed by the relative position of the two tokens;
* EfficientFormer attention (Li et al. 2022), timm's ``efficientformer.Attention``: multi-head
  self-attention with the same kind of learned relative-position bias;
* TinyViT attention (Wu et al. 2022), timm's ``tiny_vit.Attention``: LayerNorm, then the biased
  multi-head attention, run inside 7x7 windows (``npvit.functional.windows``);
* LookupViT bidirectional cross-attention (Koner et al. 2024): M compressed tokens gather from
  the k lookup tokens and the lookup tokens read back from them, through ONE (M x k) score
  matrix per head: O(k M d), nothing k x k;
* MPCViT attention (Zeng et al. 2023): multi-head attention whose softmax is replaced by
  "ReLU softmax" ReLU(s) / (sum ReLU(s) + eps) or by "scaling attention" s / k, the
  MPC-friendly variants its search chooses between (beside the softmax itself).

These sit in their own file so that ``attention.py`` stays the three units of the MobileViTv2
paper a student reads next to it. Shapes: B batch, h heads, k (or N) tokens, d channels;
key_dim / val_dim are the per-head widths of queries-keys and of values. Every step reports
itself to ``npvit.opcount`` like the units in ``attention.py``.
"""
from __future__ import annotations

import numpy as np

from .. import opcount
from .activation import relu_backward, relu_forward, softmax_backward, softmax_forward
from .attention import (_merge_heads, _projected_heads_backward, _projected_heads_forward,
                        _split_heads)
from .conv import conv2d_backward, conv2d_forward
from .linear import linear_backward, linear_forward
from .norm import batchnorm2d_backward, batchnorm2d_forward, layernorm_backward, layernorm_forward

ATTENTION_KINDS = ("softmax", "relu", "scaling")
RELU_SOFTMAX_EPS = 1e-5          # MPCViT's epsilon in ReLU(s) / (sum ReLU(s) + eps)


# --- relative-position bias (LeViT style: EfficientViT, EfficientFormer, TinyViT) ---------------
def relative_position_index(height: int, width: int) -> np.ndarray:
    """(N, N) int64 index, N = height * width tokens in row-major order, into a bias table of
    height * width entries: token pair (i, j) at offset (|dy|, |dx|) reads entry |dy| * width + |dx|.

    timm builds it two ways (EfficientFormer from this formula; TinyViT and EfficientViT by
    numbering offsets in the order they first appear, scanning pairs row-major); the first
    row (token (0, 0) against all) already meets every offset in row-major order, so both
    numberings are this one (the tests compare with timm's buffers).
    """
    rows, cols = np.divmod(np.arange(height * width), width)
    dy = np.abs(rows[:, None] - rows[None, :])
    dx = np.abs(cols[:, None] - cols[None, :])
    return dy * width + dx


def _gather_bias(table, index):
    """table (h, T), index (N, M) -> bias (h, N, M): each head's table looked up per pair."""
    bias = table[:, index]
    opcount.copy("bias = table[:, index]", bias)
    return bias


def _bias_table_grad(dbias, index, table_size: int):
    """dbias (h, N, M) -> dtable (h, T): every pair's gradient added into the entry it read."""
    flat = index.reshape(-1)
    return np.stack([np.bincount(flat, weights=g.reshape(-1), minlength=table_size)
                     for g in dbias]).astype(dbias.dtype)


# --- attention weights: softmax and MPCViT's two replacements ---------------------------------
def _weights_forward(scores, kind: str):
    """scores (..., n, m), owned by the caller -> weights over the last axis, and the cache.

    softmax: exp(s) / sum exp(s);  relu: ReLU(s) / (sum ReLU(s) + eps);  scaling: s / m.
    """
    if kind == "softmax":
        weights, cache = softmax_forward(scores, axis=-1, inplace=True)
        opcount.elementwise("A = softmax(s) over keys", weights, kind="softmax")
        return weights, ("softmax", cache)
    if kind == "relu":
        positive, mask = relu_forward(scores)
        denominator = positive.sum(axis=-1, keepdims=True) + RELU_SOFTMAX_EPS    # (..., n, 1)
        positive /= denominator
        opcount.elementwise("A = ReLU(s) / (sum ReLU(s) + eps)", positive)
        return positive, ("relu", (positive, denominator, mask))
    if kind == "scaling":
        m = scores.shape[-1]
        scores /= m
        opcount.elementwise("A = s / k", scores)
        return scores, ("scaling", m)
    raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")


def _weights_backward(dweights, cache):
    kind, state = cache
    if kind == "heads":                                  # one cache per head
        return np.stack([_weights_backward(np.ascontiguousarray(dweights[:, j]), c)
                         for j, c in enumerate(state)], axis=1)
    if kind == "softmax":
        return softmax_backward(dweights, state)
    if kind == "relu":
        # A = r / D with D = sum r + eps:  dr = (dA - sum(dA * A)) / D, then through the ReLU
        weights, denominator, mask = state
        dpositive = (dweights - (dweights * weights).sum(axis=-1, keepdims=True)) / denominator
        return relu_backward(dpositive, mask)
    return dweights / state                              # scaling: A = s / m


def _heads_weights_forward(scores, kinds):
    """MPCViT's heterogeneous attention: head j of scores (B, h, n, m) uses kinds[j]."""
    weights, caches = np.empty_like(scores), []
    for j, kind in enumerate(kinds):
        weights[:, j], cache = _weights_forward(np.ascontiguousarray(scores[:, j]), kind)
        caches.append(cache)
    return weights, ("heads", caches)


def _attention_forward(q, key, v, scale, bias=None, kind="softmax"):
    """q (B, h, n, dk), key (B, h, m, dk), v (B, h, m, dv), bias (h, n, m) or None:
        s = (scale q) key^T + bias;  A = weights(s) over the m keys;  out = A v  (B, h, n, dv).
    kind: one of ATTENTION_KINDS for every head, or a sequence of h of them (one per head).
    Returns out, A (B, h, n, m) and the cache."""
    q = q * scale
    opcount.elementwise("q = q * scale", q)
    key_t = key.swapaxes(-1, -2)
    scores = q @ key_t                                   # (B, h, n, m)
    opcount.matmul("scores = q k^T", q, key_t, scores)
    if bias is not None:
        scores += bias
        opcount.elementwise("scores + bias", scores)
    if isinstance(kind, str):
        weights, weights_cache = _weights_forward(scores, kind)
    else:
        weights, weights_cache = _heads_weights_forward(scores, kind)
    out = weights @ v
    opcount.matmul("out = A v", weights, v, out)
    return out, weights, (q, key, v, weights, weights_cache, scale, bias is not None)


def _attention_backward(dout, cache):
    """dout (B, h, n, dv) -> dq, dkey, dv and dbias (h, n, m) (None without a bias)."""
    q_scaled, key, v, weights, weights_cache, scale, has_bias = cache
    dv = weights.swapaxes(-1, -2) @ dout
    dscores = _weights_backward(dout @ v.swapaxes(-1, -2), weights_cache)
    dq = (dscores @ key) * scale
    dkey = dscores.swapaxes(-1, -2) @ q_scaled
    dbias = dscores.sum(axis=0) if has_bias else None
    return dq, dkey, dv, dbias


# --- EfficientFormer and TinyViT: multi-head attention with a relative-position bias -----------
def _split_qkv(qkv, num_heads: int, key_dim: int, val_dim: int):
    """(B, N, h * (2 dk + dv)) -> q, key (B, h, N, dk), v (B, h, N, dv): each head's block of
    2 dk + dv channels is [q | k | v], as timm's view(B, N, h, -1).split(...) reads it."""
    b, n, _ = qkv.shape
    per_head = qkv.reshape(b, n, num_heads, 2 * key_dim + val_dim).transpose(0, 2, 1, 3)
    return (per_head[..., :key_dim], per_head[..., key_dim:2 * key_dim],
            per_head[..., 2 * key_dim:])


def biased_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, attention_biases, bias_index,
                             num_heads: int, key_dim: int, val_dim: int):
    """EfficientFormer's attention (timm ``efficientformer.Attention``).

    x: (B, N, C) with N = the resolution's tokens; w_qkv (h (2 dk + dv), C), b_qkv;
    w_proj (C, h dv), b_proj; attention_biases (h, T); bias_index (N, N) into the table.
        q, k, v = split(x W_qkv^T + b);  A = softmax(q k^T / sqrt(dk) + table[:, index]);
        y = concat_h(A v) W_proj^T + b
    Returns y (B, N, C) and the cache; cache["attention"] is A (B, h, N, N).
    """
    qkv, qkv_cache = linear_forward(x, w_qkv, b_qkv)
    opcount.linear("q, k, v = x W_qkv^T + b", w_qkv, qkv, b_qkv)
    q, key, v = _split_qkv(qkv, num_heads, key_dim, val_dim)
    bias = _gather_bias(attention_biases, bias_index)
    out, attention, sdp_cache = _attention_forward(q, key, v, key_dim ** -0.5, bias)
    merged = _merge_heads(out)                           # (B, N, h dv)
    opcount.copy("concatenate heads", merged)
    y, proj_cache = linear_forward(merged, w_proj, b_proj)
    opcount.linear("y = heads W_proj^T + b", w_proj, y, b_proj)
    cache = {"qkv": qkv_cache, "sdp": sdp_cache, "proj": proj_cache, "index": bias_index,
             "table_size": attention_biases.shape[1], "num_heads": num_heads,
             "attention": attention}
    return y, cache


def biased_attention_backward(dy, cache):
    """dy (B, N, C) -> (dx, dw_qkv, db_qkv, dw_proj, db_proj, dattention_biases)."""
    dmerged, dw_proj, db_proj = linear_backward(dy, cache["proj"])
    dq, dkey, dv, dbias = _attention_backward(_split_heads(dmerged, cache["num_heads"]),
                                              cache["sdp"])
    dper_head = np.concatenate([dq, dkey, dv], axis=-1)          # (B, h, N, 2 dk + dv)
    b, h, n, _ = dper_head.shape
    dqkv = dper_head.transpose(0, 2, 1, 3).reshape(b, n, -1)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, cache["qkv"])
    dtable = _bias_table_grad(dbias, cache["index"], cache["table_size"])
    return dx, dw_qkv, db_qkv, dw_proj, db_proj, dtable


def tinyvit_attention_forward(x, norm_weight, norm_bias, w_qkv, b_qkv, w_proj, b_proj,
                              attention_biases, bias_index, num_heads: int, key_dim: int,
                              val_dim: int, eps: float = 1e-5):
    """TinyViT's attention (timm ``tiny_vit.Attention``) on windows x (B * windows, N, C):
    LayerNorm over C (norm_weight, norm_bias), then :func:`biased_attention_forward`.
    Returns y (B * windows, N, C) and the cache."""
    normed, norm_cache = layernorm_forward(x, norm_weight, norm_bias, eps)
    opcount.elementwise("LayerNorm", normed)
    y, cache = biased_attention_forward(normed, w_qkv, b_qkv, w_proj, b_proj, attention_biases,
                                        bias_index, num_heads, key_dim, val_dim)
    cache["norm"] = norm_cache
    return y, cache


def tinyvit_attention_backward(dy, cache):
    """dy -> (dx, dnorm_weight, dnorm_bias, dw_qkv, db_qkv, dw_proj, db_proj, dattention_biases)."""
    dnormed, *grads = biased_attention_backward(dy, cache)
    dx, dnorm_weight, dnorm_bias = layernorm_backward(dnormed, cache["norm"])
    return (dx, dnorm_weight, dnorm_bias, *grads)


# --- EfficientViT: cascaded group attention -----------------------------------------------------
def _conv_bn_forward(x, conv_bn, training, momentum, eps, padding=0, groups=1):
    """timm's ConvNorm: conv (no bias) then BatchNorm2d. conv_bn = (w, gamma, beta, running_mean,
    running_var); in training the running statistics are updated in place."""
    w, gamma, beta, mean, var = conv_bn
    z, conv_cache = conv2d_forward(x, w, None, 1, padding, groups)
    if groups == 1:
        opcount.linear("1x1 conv", w, z, None)
    else:
        opcount.conv("depthwise conv", w, z)
    y, bn_cache = batchnorm2d_forward(z, gamma, beta, mean, var, training, momentum, eps)
    opcount.elementwise("BatchNorm", y)
    return y, (conv_cache, bn_cache)


def _conv_bn_backward(dy, cache):
    """dy -> (dx, (dw, dgamma, dbeta))."""
    conv_cache, bn_cache = cache
    dz, dgamma, dbeta = batchnorm2d_backward(dy, bn_cache)
    dx, dw, _ = conv2d_backward(dz, conv_cache)
    return dx, (dw, dgamma, dbeta)


def cascaded_group_attention_forward(x, qkvs, dws, proj, attention_biases, bias_index,
                                     key_dim: int, val_dim: int, training: bool = False,
                                     momentum: float = 0.1, eps: float = 1e-5):
    """EfficientViT's cascaded group attention (timm ``efficientvit_msra.CascadedGroupAttention``).

    x: (B, C, H, W) with H * W = N tokens; h = len(qkvs) heads, each given C / h channels.
    qkvs[i]: ConvNorm C/h -> 2 dk + dv as (w (2dk+dv, C/h, 1, 1), gamma, beta, mean, var);
    dws[i]: depthwise ConvNorm on the queries, w (dk, 1, kernel, kernel) with padding kernel // 2;
    proj: ConvNorm h dv -> C after a ReLU; attention_biases (h, T), bias_index (N, N).
        feat_0 = x_0;  feat_i = out_{i-1} + x_i          (the cascade: x_i is the i-th split)
        q, k, v = ConvNorm_i(feat_i);  q = dwConvNorm_i(q)
        out_i = v softmax(q^T k / sqrt(dk) + table_i[index])^T     (dv, N) per sample
        y = ConvNorm_proj(ReLU(concat_i out_i))
    The cascade needs dv == C / h (as in every EfficientViT model).
    Returns y (B, C, H, W) and the cache; cache["attention"] lists each head's A (B, N, N).
    """
    b, c, height, width = x.shape
    heads = len(qkvs)
    n = height * width
    splits = np.split(x, heads, axis=1)                  # h times (B, C/h, H, W)
    # channels (B, ch, H, W) -> tokens as rows (B, 1, N, ch): a "head" axis of size 1, so the
    # shared attention code applies to one head at a time
    as_tokens = lambda t: t.reshape(b, 1, t.shape[1], n).swapaxes(-1, -2)
    head_caches, outs, attention = [], [], []
    feat = splits[0]
    for i in range(heads):
        if i > 0:
            feat = outs[-1] + splits[i]
            opcount.elementwise("feat = previous head's output + split", feat)
        qkv, qkv_cache = _conv_bn_forward(feat, qkvs[i], training, momentum, eps)
        q, key, v = qkv[:, :key_dim], qkv[:, key_dim:2 * key_dim], qkv[:, 2 * key_dim:]
        kernel = dws[i][0].shape[-1]
        q, dw_cache = _conv_bn_forward(np.ascontiguousarray(q), dws[i], training, momentum, eps,
                                       padding=kernel // 2, groups=key_dim)
        bias = _gather_bias(attention_biases[i:i + 1], bias_index)               # (1, N, N)
        out, weights, sdp_cache = _attention_forward(as_tokens(q), as_tokens(key), as_tokens(v),
                                                     key_dim ** -0.5, bias)
        out = np.ascontiguousarray(out[:, 0].swapaxes(-1, -2)).reshape(b, val_dim, height, width)
        outs.append(out)
        attention.append(weights[:, 0])
        head_caches.append((qkv_cache, dw_cache, sdp_cache))
    merged = np.concatenate(outs, axis=1)                # (B, h dv, H, W)
    opcount.copy("concatenate heads", merged)
    activated, relu_mask = relu_forward(merged)
    opcount.elementwise("ReLU", activated)
    y, proj_cache = _conv_bn_forward(activated, proj, training, momentum, eps)
    cache = {"heads": head_caches, "proj": proj_cache, "relu_mask": relu_mask,
             "shape": (b, height, width), "val_dim": val_dim,
             "index": bias_index, "table_size": attention_biases.shape[1], "attention": attention}
    return y, cache


def cascaded_group_attention_backward(dy, cache):
    """dy (B, C, H, W) -> (dx, grads) with grads = {"qkvs": [(dw, dgamma, dbeta)] per head,
    "dws": [(dw, dgamma, dbeta)] per head, "proj": (dw, dgamma, dbeta),
    "attention_biases": (h, T)}. The cascade runs backwards: head i's output feeds both the
    concatenation and head i+1's input, so its gradient is the sum of the two."""
    b, height, width = cache["shape"]
    val_dim = cache["val_dim"]
    n = height * width
    dactivated, dproj = _conv_bn_backward(dy, cache["proj"])
    dmerged = relu_backward(dactivated, cache["relu_mask"])
    douts = np.split(dmerged, len(cache["heads"]), axis=1)
    dsplits, dqkvs, ddws, dtables = [], [], [], []
    as_channels = lambda t: t.swapaxes(-1, -2).reshape(b, t.shape[-1], height, width)  # as_tokens^-1
    dfeat_next = None                                    # d loss / d feat_{i+1}
    for i in reversed(range(len(cache["heads"]))):
        qkv_cache, dw_cache, sdp_cache = cache["heads"][i]
        dout = douts[i] if dfeat_next is None else douts[i] + dfeat_next
        dout_tokens = dout.reshape(b, 1, val_dim, n).swapaxes(-1, -2)             # (B, 1, N, dv)
        dq, dkey, dv, dbias = _attention_backward(dout_tokens, sdp_cache)
        dq, ddw = _conv_bn_backward(np.ascontiguousarray(as_channels(dq)), dw_cache)
        dqkv = np.concatenate([dq, as_channels(dkey), as_channels(dv)], axis=1)
        dfeat, dqkv_params = _conv_bn_backward(dqkv, qkv_cache)
        dsplits.append(dfeat)                            # feat_i = out_{i-1} + x_i: both get it
        dfeat_next = dfeat
        dqkvs.append(dqkv_params)
        ddws.append(ddw)
        dtables.append(_bias_table_grad(dbias, cache["index"], cache["table_size"])[0])
    dx = np.concatenate(dsplits[::-1], axis=1)
    grads = {"qkvs": dqkvs[::-1], "dws": ddws[::-1], "proj": dproj,
             "attention_biases": np.stack(dtables[::-1])}
    return dx, grads


# --- LookupViT: bidirectional cross-attention ---------------------------------------------------
def lookup_gather_forward(x, z, w_q, b_q, w_kv, b_kv, w_z_out, b_z_out, num_heads: int):
    """LookupViT's first direction (lookup -> compressed): M compressed tokens z (B, M, d)
    query the k lookup tokens x (B, k, d):
        q = z W_q^T + b;  [K | V] = x W_kv^T + b                 (B, M, d), (B, k, 2d)
        S = q K^T / sqrt(d/h) per head                           (B, h, M, k)
        z_out = concat_h(softmax_k(S) V) W_z_out^T + b           (B, M, d)
    w_q (d, d), w_kv (2d, d), w_z_out (d, d); biases (.,) or None.
    Returns z_out and the cache; cache["scores"] is S, which :func:`lookup_scatter_forward`
    uses for the way back (and overwrites with its own softmax), cache["gather"] softmax_k(S).
    """
    d = x.shape[-1]
    q, q_cache = linear_forward(z, w_q, b_q)
    opcount.linear("q = z W_q^T + b", w_q, q, b_q)
    kv, kv_cache = linear_forward(x, w_kv, b_kv)
    opcount.linear("K, V = x W_kv^T + b", w_kv, kv, b_kv)
    q_h = _split_heads(q, num_heads)                     # (B, h, M, dh)
    key_h = _split_heads(kv[..., :d], num_heads)         # (B, h, k, dh)
    value_h = _split_heads(kv[..., d:], num_heads)
    scale = (d // num_heads) ** -0.5
    q_h = q_h * scale
    opcount.elementwise("q = q / sqrt(d_head)", q_h)
    key_t = key_h.swapaxes(-1, -2)
    scores = q_h @ key_t                                 # (B, h, M, k), the one score matrix
    opcount.matmul("S = q K^T", q_h, key_t, scores)
    gather, gather_cache = softmax_forward(scores, axis=-1)           # over the k lookup tokens
    opcount.elementwise("softmax over lookup tokens", gather, kind="softmax")
    gathered = gather @ value_h                          # (B, h, M, dh)
    opcount.matmul("gathered = softmax_k(S) V", gather, value_h, gathered)
    merged = _merge_heads(gathered)
    opcount.copy("concatenate heads (compressed)", merged)
    z_out, z_out_cache = linear_forward(merged, w_z_out, b_z_out)
    opcount.linear("z_out = heads W_z_out^T + b", w_z_out, z_out, b_z_out)
    cache = {"q": q_cache, "kv": kv_cache, "q_h": q_h, "key_h": key_h, "value_h": value_h,
             "scale": scale, "scores": scores, "gather": gather, "gather_softmax": gather_cache,
             "z_out": z_out_cache, "num_heads": num_heads}
    return z_out, cache


def lookup_gather_backward(dz_out, dscores, cache):
    """dz_out (B, M, d) and dscores (B, h, M, k), the gradient the way back sends into the
    shared S (None if none) -> (dx, dz, dw_q, db_q, dw_kv, db_kv, dw_z_out, db_z_out)."""
    h = cache["num_heads"]
    dmerged, dw_z_out, db_z_out = linear_backward(dz_out, cache["z_out"])
    dgathered = _split_heads(dmerged, h)                 # (B, h, M, dh)
    dvalue_h = cache["gather"].swapaxes(-1, -2) @ dgathered
    dgather = dgathered @ cache["value_h"].swapaxes(-1, -2)
    dscores_gather = softmax_backward(dgather, cache["gather_softmax"])
    dscores = dscores_gather if dscores is None else dscores + dscores_gather   # S feeds both
    dq_h = (dscores @ cache["key_h"]) * cache["scale"]
    dkey_h = dscores.swapaxes(-1, -2) @ cache["q_h"]
    dkv = np.concatenate([_merge_heads(dkey_h), _merge_heads(dvalue_h)], axis=-1)
    dz, dw_q, db_q = linear_backward(_merge_heads(dq_h), cache["q"])
    dx, dw_kv, db_kv = linear_backward(dkv, cache["kv"])
    return dx, dz, dw_q, db_q, dw_kv, db_kv, dw_z_out, db_z_out


def lookup_scatter_forward(z, gather_cache, w_z_value, b_z_value, w_x_out, b_x_out):
    """LookupViT's way back (compressed -> lookup) through the SAME scores S as the gather
    (``gather_cache`` of :func:`lookup_gather_forward`), now normalised over the M compressed
    tokens: every lookup token reads a distribution over them.
        V_z = z W_z_value^T + b;  x_out = concat_h(softmax_M(S)^T V_z) W_x_out^T + b    (B, k, d)
    z (B, M, d): the compressed tokens after the gather (in a LookupViT block, after their
    own self-attention and MLP too). Returns x_out and the cache; cache["scatter"] is
    softmax_M(S) (B, h, M, k).
    """
    h = gather_cache["num_heads"]
    z_value, z_value_cache = linear_forward(z, w_z_value, b_z_value)
    opcount.linear("V_z = z W_z_value^T + b", w_z_value, z_value, b_z_value)
    z_value_h = _split_heads(z_value, h)                 # (B, h, M, dh)
    scatter, scatter_cache = softmax_forward(gather_cache["scores"], axis=-2, inplace=True)
    opcount.elementwise("softmax over compressed tokens", scatter, kind="softmax")
    scatter_t = scatter.swapaxes(-1, -2)                 # (B, h, k, M)
    scattered = scatter_t @ z_value_h                    # (B, h, k, dh)
    opcount.matmul("scattered = softmax_M(S)^T V_z", scatter_t, z_value_h, scattered)
    merged = _merge_heads(scattered)
    opcount.copy("concatenate heads (lookup)", merged)
    x_out, x_out_cache = linear_forward(merged, w_x_out, b_x_out)
    opcount.linear("x_out = heads W_x_out^T + b", w_x_out, x_out, b_x_out)
    cache = {"z_value": z_value_cache, "z_value_h": z_value_h, "scatter": scatter,
             "scatter_softmax": scatter_cache, "x_out": x_out_cache, "num_heads": h}
    return x_out, cache


def lookup_scatter_backward(dx_out, cache):
    """dx_out (B, k, d) -> (dz, dscores (B, h, M, k) for :func:`lookup_gather_backward`,
    dw_z_value, db_z_value, dw_x_out, db_x_out)."""
    dmerged, dw_x_out, db_x_out = linear_backward(dx_out, cache["x_out"])
    dscattered = _split_heads(dmerged, cache["num_heads"])              # (B, h, k, dh)
    # scattered = A_s^T V_z with A_s (B, h, M, k):  dV_z = A_s dscattered, dA_s = V_z dscattered^T
    dz_value_h = cache["scatter"] @ dscattered
    dscatter = cache["z_value_h"] @ dscattered.swapaxes(-1, -2)
    dscores = softmax_backward(dscatter, cache["scatter_softmax"])
    dz, dw_z_value, db_z_value = linear_backward(_merge_heads(dz_value_h), cache["z_value"])
    return dz, dscores, dw_z_value, db_z_value, dw_x_out, db_x_out


def lookup_cross_attention_forward(x, z, w_q, b_q, w_kv, b_kv, w_z_out, b_z_out, w_z_value,
                                   b_z_value, w_x_out, b_x_out, num_heads: int):
    """LookupViT's multi-head bidirectional cross-attention between k lookup tokens x (B, k, d)
    and M compressed tokens z (B, M, d), ONE score matrix S (B, h, M, k) per head used both
    ways: :func:`lookup_gather_forward` then :func:`lookup_scatter_forward` on its z_out
    (the attention unit on its own: a LookupViT block runs the compressed tokens through
    self-attention and an MLP between the two, see ``npvit.nn.LookupCrossAttention``).
    Every array is O(k d) or O(k M): nothing is k x k.
    Returns (x_out (B, k, d), z_out (B, M, d)) and the cache; cache["gather"] is softmax_k(S),
    cache["scatter"] softmax_M(S), both (B, h, M, k).
    """
    z_out, gather_cache = lookup_gather_forward(x, z, w_q, b_q, w_kv, b_kv, w_z_out, b_z_out,
                                                num_heads)
    x_out, scatter_cache = lookup_scatter_forward(z_out, gather_cache, w_z_value, b_z_value,
                                                  w_x_out, b_x_out)
    cache = {"gather_cache": gather_cache, "scatter_cache": scatter_cache,
             "gather": gather_cache["gather"], "scatter": scatter_cache["scatter"]}
    return (x_out, z_out), cache


def lookup_cross_attention_backward(dx_out, dz_out, cache):
    """dx_out (B, k, d) and dz_out (B, M, d) (None: z_out feeds nothing else) ->
    (dx, dz, dw_q, db_q, dw_kv, db_kv, dw_z_out, db_z_out, dw_z_value, db_z_value,
    dw_x_out, db_x_out)."""
    dz_mid, dscores, dw_z_value, db_z_value, dw_x_out, db_x_out = lookup_scatter_backward(
        dx_out, cache["scatter_cache"])
    dz_total = dz_mid if dz_out is None else dz_mid + dz_out
    dx, dz, dw_q, db_q, dw_kv, db_kv, dw_z_out, db_z_out = lookup_gather_backward(
        dz_total, dscores, cache["gather_cache"])
    return (dx, dz, dw_q, db_q, dw_kv, db_kv, dw_z_out, db_z_out, dw_z_value, db_z_value,
            dw_x_out, db_x_out)


# --- MPCViT: multi-head attention with a softmax, ReLU softmax or scaling -----------------------
def mpc_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, num_heads: int, kind="relu"):
    """MPCViT's attention heads (Zeng et al. 2023): timm-style multi-head self-attention
    (fused qkv (3d, d) with rows [q | k | v], output projection (d, d)) whose weights are
        softmax:  A = softmax(s)                       (the baseline ViT head)
        relu:     A = ReLU(s) / (sum_keys ReLU(s) + eps),  eps = 1e-5   ("ReLU softmax")
        scaling:  A = s / k                            ("scaling attention", k = tokens)
    with s = q k^T / sqrt(d/h). ``kind`` names one for all heads, or is a sequence of
    num_heads names: MPCViT's searched "heterogeneous" attention, each head its own kind.
    x (B, k, d) -> y (B, k, d), the cache; cache["attention"] is A.
    """
    dh = x.shape[-1] // num_heads
    return _projected_heads_forward(x, w_qkv, b_qkv, w_proj, b_proj, num_heads,
                                    lambda q, key, v: _attention_forward(q, key, v, dh ** -0.5,
                                                                         kind=kind))


def mpc_attention_backward(dy, cache):
    """dy (B, k, d) -> (dx, dw_qkv, db_qkv, dw_proj, db_proj); bias grads None if absent."""
    return _projected_heads_backward(dy, cache, _attention_backward)
