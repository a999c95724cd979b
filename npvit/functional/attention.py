"""Self-attention three ways, each a forward/backward pair:

* multi-head self-attention (MHA) — MobileViT v1's, as timm's ``Attention``; every token
  attends to every token, so it builds a (k x k) score matrix per head: O(k^2 d) work and memory;
* Linformer — keys and values are first projected from k tokens down to p by learned (p x k)
  matrices E and F, so the score matrix is (k x p): O(k p d);
* separable self-attention — MobileViTv2's (timm's ``LinearSelfAttention``); one score per
  token, a softmax over the tokens, and a single context vector that every token multiplies
  element-wise: O(k d) and no (k x k) array at all.

Every step reports itself to ``npvit.opcount`` (a no-op unless a counter is active), which is
how the benchmark counts multiply-adds and the largest buffer of the code that actually runs.

The caches are dicts so a visualiser can read what it needs without a second pass:
``cache["attention"]`` (B, h, k, k) for MHA, ``cache["attention"]`` (B, h, k, p) for Linformer,
``cache["context_scores"]`` (B, 1, P, N) for separable attention.
"""
from __future__ import annotations

import numpy as np

from .. import opcount
from .activation import (dropout_forward, relu_backward, relu_forward, softmax_backward,
                         softmax_forward)
from .cache_blocks import blocks
from .conv import conv2d_backward, conv2d_forward
from .linear import linear_backward, linear_forward


def _split_heads(t, num_heads):
    """(B, k, d) -> (B, h, k, d/h): channel c belongs to head c // (d/h), as in timm."""
    b, k, d = t.shape
    return t.reshape(b, k, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def _merge_heads(t):
    """(B, h, k, d/h) -> (B, k, d), the inverse of _split_heads (a copy)."""
    b, h, k, dh = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, k, h * dh)


def _scaled_dot_product_forward(q, key, v, attn_drop, training, rng, need_weights=True):
    """q: (B, h, k, dh); key, v: (B, h, m, dh) -> out (B, h, k, dh), the attention weights
    A (B, h, k, m) and the cache. Shared by MHA (m = k) and Linformer (m = p).

    A = softmax(q k^T / sqrt(dh)) over the keys, out = A v. Three choices make it cheaper than
    the formula read literally, with the same result:
    * the scores are built transposed, s^T = key q^T (B, h, m, k): column i holds query i's
      scores over the m keys, so the softmax's max and sum reduce along axis -2, which NumPy
      vectorises across the columns (max over (4, 4, 256, 256): 0.18 ms, where a reduction
      along the rows of the untransposed layout takes 0.35 ms). A is the (B, h, k, m) view of
      that buffer; the matmuls read either layout at no cost;
    * each query's row of A is exp(s - max) divided by its sum z, and dividing rows commutes
      with the product: out = (exp(s - max) v) / z, a (k x dh) division in place of a (k x m)
      one. Inference (need_weights=False: no backward, no visualiser) never normalises the
      k x m weights at all and returns None for them and for the cache;
    * the softmax's passes run over blocks of the B axis that fit in the cache
      (``cache_blocks``), not over the whole (B, h, m, k) scores: at 256 px and batch 8, v1's
      stage-3 scores are 33 MB. A training step's attention (forward and backward, (32, 4,
      256, 16)) went from 69 to 51 ms.
    """
    scale = q.shape[-1] ** -0.5
    q = q * scale                                        # 1/sqrt(d_head) on q, as timm does
    opcount.elementwise("q = q / sqrt(d_head)", q)
    q_t = q.swapaxes(-1, -2)
    b, h, k, m = q.shape[0], q.shape[1], q.shape[2], key.shape[2]
    dtype = np.result_type(q, key)
    out = np.empty((b, h, k, v.shape[-1]), dtype=np.result_type(dtype, v))
    dropping = training and attn_drop > 0
    # A^T for backward and the visualisers; else one block's scratch, reused
    weights_t = np.empty((b, h, m, k), dtype) if need_weights else None
    dropped_t = np.empty((b, h, m, k), dtype) if need_weights and dropping else None
    drop_mask = np.empty((b, h, m, k), dtype) if dropping else None
    parts = blocks(b, h * m * k * out.itemsize)
    scratch = None if need_weights else np.empty((parts[0].stop, h, m, k), dtype)
    for part in parts:
        scores_t = weights_t[part] if need_weights else scratch[:part.stop - part.start]
        np.matmul(key[part], q_t[part], out=scores_t)    # s^T, (b, h, m, k)
        opcount.matmul("scores = q k^T", key[part], q_t[part], scores_t)
        # softmax over the keys, in place, unnormalised: the division comes after the product
        scores_t -= scores_t.max(axis=-2, keepdims=True)   # so exp never overflows
        np.exp(scores_t, out=scores_t)                   # exp(s - max)
        sums = scores_t.sum(axis=-2, keepdims=True)      # z, (b, h, 1, k): one per query
        opcount.elementwise("softmax over keys", scores_t, kind="softmax")
        mixed_t = scores_t
        if dropping:
            mixed_t, drop_mask[part] = dropout_forward(scores_t, attn_drop, True, rng)
            opcount.elementwise("attention dropout", mixed_t)
        np.matmul(mixed_t.swapaxes(-1, -2), v[part], out=out[part])   # (b, h, k, dh)
        opcount.matmul("out = attention v", mixed_t.swapaxes(-1, -2), v[part], out[part])
        out[part] /= sums.swapaxes(-1, -2)
        if need_weights:
            scores_t /= sums                             # A^T: each column sums to 1
            if dropping:
                np.divide(mixed_t, sums, out=dropped_t[part])
    if not need_weights:
        return out, None, None
    cache = (q, key, v, dropped_t if dropping else weights_t, drop_mask, weights_t, scale)
    return out, weights_t.swapaxes(-1, -2), cache


def _scaled_dot_product_backward(dout, cache):
    """dout: (B, h, k, dh) -> dq (B, h, k, dh), dkey, dv (B, h, m, dh), over the same cache
    blocks as the forward, on its transposed (B, h, m, k) weights."""
    q_scaled, key, v, dropped_t, drop_mask, weights_t, scale = cache
    dq, dkey, dv = np.empty_like(q_scaled), np.empty_like(key), np.empty_like(v)
    b, h, m, k = weights_t.shape
    for part in blocks(b, h * m * k * weights_t.itemsize):
        np.matmul(dropped_t[part], dout[part], out=dv[part])     # out = A v  =>  dv = A^T dout
        dweights_t = v[part] @ dout[part].swapaxes(-1, -2)       # dA^T = (dout v^T)^T
        if drop_mask is not None:
            dweights_t *= drop_mask[part]
        dscores_t = softmax_backward(dweights_t, (weights_t[part], -2))   # (b, h, m, k)
        np.matmul(dscores_t.swapaxes(-1, -2), key[part], out=dq[part])   # scores = (s q) k^T
        np.matmul(dscores_t, q_scaled[part], out=dkey[part])
    dq *= scale
    return dq, dkey, dv


# --- multi-head self-attention -----------------------------------------------------------------
def multi_head_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, num_heads: int,
                                 attn_drop: float = 0.0, training: bool = False,
                                 rng: np.random.Generator | None = None,
                                 need_weights: bool = True):
    """MobileViT v1's attention (timm ``Attention`` with a fused qkv projection).

    x: (B, k, d) tokens; w_qkv: (3d, d), b_qkv: (3d,) or None, output rows [q | k | v], each
    split into h heads of d/h channels; w_proj: (d, d), b_proj: (d,) or None.
        q, k, v = x W_qkv^T + b;  A = softmax(q k^T / sqrt(d/h)) per head;  y = concat(A v) W_proj^T + b
    attn_drop: dropout probability on A (training only, with rng).
    Returns y (B, k, d) and the cache; cache["attention"] is A (B, h, k, k).
    need_weights=False is for inference: A is never normalised as a (k x k) array (see
    _scaled_dot_product_forward), cache["attention"] is None and there is no backward.
    """
    return _projected_heads_forward(
        x, w_qkv, b_qkv, w_proj, b_proj, num_heads,
        lambda q, key, v: _scaled_dot_product_forward(q, key, v, attn_drop, training, rng,
                                                      need_weights))


def multi_head_attention_backward(dy, cache):
    """dy: (B, k, d) -> (dx, dw_qkv, db_qkv, dw_proj, db_proj); biases' grads None if absent."""
    return _projected_heads_backward(dy, cache, _scaled_dot_product_backward)


def _projected_heads_forward(x, w_qkv, b_qkv, w_proj, b_proj, num_heads: int, core):
    """The projections around a multi-head attention core, shared by MHA and MPCViT's attention
    (functional/attention_zoo.py), which differ only in the core:
        q, k, v = x W_qkv^T + b, split into h heads (B, h, k, dh);
        out, A, core_cache = core(q, k, v);  y = concat(out) W_proj^T + b   (B, k, d).
    Returns y and the cache; cache["attention"] is A."""
    qkv, qkv_cache = linear_forward(x, w_qkv, b_qkv)    # (B, k, 3d)
    opcount.linear("q, k, v = x W_qkv^T + b", w_qkv, qkv, b_qkv)
    q, key, v = (_split_heads(t, num_heads) for t in np.split(qkv, 3, axis=-1))  # (B, h, k, dh)
    out, attention, core_cache = core(q, key, v)
    merged = _merge_heads(out)                           # (B, k, d)
    opcount.copy("concatenate heads", merged)
    y, proj_cache = linear_forward(merged, w_proj, b_proj)
    opcount.linear("y = heads W_proj^T + b", w_proj, y, b_proj)
    cache = {"qkv": qkv_cache, "sdp": core_cache, "proj": proj_cache, "num_heads": num_heads,
             "attention": attention}
    return y, cache


def _projected_heads_backward(dy, cache, core_backward):
    """dy: (B, k, d) -> (dx, dw_qkv, db_qkv, dw_proj, db_proj); core_backward(dout, core_cache)
    returns dq, dkey, dv (B, h, k, dh) first."""
    dmerged, dw_proj, db_proj = linear_backward(dy, cache["proj"])
    dq, dkey, dv = core_backward(_split_heads(dmerged, cache["num_heads"]), cache["sdp"])[:3]
    dqkv = np.concatenate([_merge_heads(dq), _merge_heads(dkey), _merge_heads(dv)], axis=-1)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, cache["qkv"])
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


# --- Linformer ---------------------------------------------------------------------------------
def linformer_attention_forward(x, w_qkv, b_qkv, e, f, w_proj, b_proj, num_heads: int):
    """Linformer self-attention (Wang et al. 2020) with one E and F shared by all heads.

    x: (B, k, d); w_qkv (3d, d), b_qkv (3d,) as in MHA; e, f: (p, k) project the k keys and the
    k values to p rows: K' = E K, V' = F V, both (B, p, d); then per head
    A = softmax(q K'^T / sqrt(d/h)) (B, h, k, p), y = concat(A V') W_proj^T + b.
    The input length must equal the k that E and F were built for.
    Returns y (B, k, d) and the cache; cache["attention"] is A (B, h, k, p).
    """
    qkv, qkv_cache = linear_forward(x, w_qkv, b_qkv)    # (B, k, 3d)
    opcount.linear("q, k, v = x W_qkv^T + b", w_qkv, qkv, b_qkv)
    q, key, v = np.split(qkv, 3, axis=-1)                # (B, k, d) each
    key_p = e @ key                                      # (p, k) @ (B, k, d) -> (B, p, d)
    opcount.matmul("k' = E k", e, key, key_p)
    v_p = f @ v
    opcount.matmul("v' = F v", f, v, v_p)
    out, attention, sdp_cache = _scaled_dot_product_forward(
        _split_heads(q, num_heads), _split_heads(key_p, num_heads), _split_heads(v_p, num_heads),
        0.0, False, None)
    merged = _merge_heads(out)                           # (B, k, d)
    opcount.copy("concatenate heads", merged)
    y, proj_cache = linear_forward(merged, w_proj, b_proj)
    opcount.linear("y = heads W_proj^T + b", w_proj, y, b_proj)
    cache = {"qkv": qkv_cache, "sdp": sdp_cache, "proj": proj_cache, "num_heads": num_heads,
             "key": key, "value": v, "e": e, "f": f, "attention": attention}
    return y, cache


def linformer_attention_backward(dy, cache):
    """dy: (B, k, d) -> (dx, dw_qkv, db_qkv, de, df, dw_proj, db_proj)."""
    dmerged, dw_proj, db_proj = linear_backward(dy, cache["proj"])
    dq, dkey_p, dv_p = _scaled_dot_product_backward(_split_heads(dmerged, cache["num_heads"]),
                                                    cache["sdp"])
    dkey_p, dv_p = _merge_heads(dkey_p), _merge_heads(dv_p)          # (B, p, d)
    # K' = E K  =>  dE = sum_B dK' K^T,  dK = E^T dK'   (the same for F and V)
    de = np.einsum("bpd,bkd->pk", dkey_p, cache["key"])
    df = np.einsum("bpd,bkd->pk", dv_p, cache["value"])
    dkey = cache["e"].T @ dkey_p
    dv = cache["f"].T @ dv_p
    dqkv = np.concatenate([_merge_heads(dq), dkey, dv], axis=-1)    # (B, k, 3d)
    dx, dw_qkv, db_qkv = linear_backward(dqkv, cache["qkv"])
    return dx, dw_qkv, db_qkv, de, df, dw_proj, db_proj


# --- separable self-attention (MobileViTv2) ----------------------------------------------------
def separable_attention_forward(x, w_qkv, b_qkv, w_out, b_out):
    """MobileViTv2's separable self-attention on the unfolded layout.

    x: (B, d, P, N): d channels, P pixel positions inside a patch, N patches (tokens are the
    case P = 1: x = tokens.transpose(0, 2, 1)[:, :, None, :]).
    w_qkv: (1 + 2d, d, 1, 1), b_qkv: (1 + 2d,): one 1x1 convolution whose output rows are
    [1 query-score row | d key rows | d value rows]; w_out: (d, d, 1, 1), b_out: (d,).
        i, K, V = conv1x1(x)                    (B, 1, P, N), (B, d, P, N), (B, d, P, N)
        c_s = softmax(i) over N                 context scores, (B, 1, P, N)
        c_v = sum_N K * c_s                     context vector, (B, d, P, 1)
        y   = conv1x1(ReLU(V) * c_v)            c_v broadcast over the N tokens
    Every array is (B, d or 1, P, N) or smaller: nothing is (N x N).
    Returns y (B, d, P, N) and the cache; cache["context_scores"] is c_s (B, 1, P, N).
    """
    d = x.shape[1]
    qkv, qkv_cache = conv2d_forward(x, w_qkv, b_qkv)    # (B, 1 + 2d, P, N)
    opcount.linear("i, K, V = 1x1 conv(x)", w_qkv, qkv, b_qkv)
    query, key, value = qkv[:, :1], qkv[:, 1:1 + d], qkv[:, 1 + d:]
    context_scores, softmax_cache = softmax_forward(query, axis=-1)   # over the N patches
    opcount.elementwise("c_s = softmax(i) over N", context_scores, kind="softmax")
    weighted_keys = key * context_scores                 # (B, d, P, N)
    opcount.elementwise("K * c_s", weighted_keys)
    context_vector = weighted_keys.sum(axis=-1, keepdims=True)        # (B, d, P, 1)
    opcount.reduction("c_v = sum_N K * c_s", weighted_keys, context_vector)
    del weighted_keys
    relu_value, relu_mask = relu_forward(value)
    opcount.elementwise("ReLU(V)", relu_value)
    out = relu_value * context_vector                    # (B, d, P, N)
    opcount.elementwise("ReLU(V) * c_v", out)
    y, out_cache = conv2d_forward(out, w_out, b_out)
    opcount.linear("y = 1x1 conv(out)", w_out, y, b_out)
    cache = {"qkv": qkv_cache, "key": key, "softmax": softmax_cache, "relu_mask": relu_mask,
             "relu_value": relu_value, "context_vector": context_vector, "out": out_cache,
             "context_scores": context_scores}
    return y, cache


def separable_attention_backward(dy, cache):
    """dy: (B, d, P, N) -> (dx, dw_qkv, db_qkv, dw_out, db_out)."""
    dout, dw_out, db_out = conv2d_backward(dy, cache["out"])
    # out = ReLU(V) * c_v, with c_v broadcast over N: its gradient sums over N.
    drelu_value = dout * cache["context_vector"]
    dcontext_vector = (dout * cache["relu_value"]).sum(axis=-1, keepdims=True)   # (B, d, P, 1)
    dvalue = relu_backward(drelu_value, cache["relu_mask"])
    # c_v = sum_N K * c_s: dK = dc_v * c_s; dc_s sums over the d channels.
    dkey = dcontext_vector * cache["context_scores"]
    dcontext_scores = (dcontext_vector * cache["key"]).sum(axis=1, keepdims=True)  # (B, 1, P, N)
    dquery = softmax_backward(dcontext_scores, cache["softmax"])
    dqkv = np.concatenate([dquery, dkey, dvalue], axis=1)                          # (B, 1+2d, P, N)
    dx, dw_qkv, db_qkv = conv2d_backward(dqkv, cache["qkv"])
    return dx, dw_qkv, db_qkv, dw_out, db_out
