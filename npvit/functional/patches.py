"""Unfold a feature map into patches and fold it back, in the two orders MobileViT uses.

A feature map (B, C, H, W) with H = n_h * p_h and W = n_w * p_w is cut into N = n_h * n_w
non-overlapping patches of P = p_h * p_w pixels. The transformer then attends, for each of
the P pixel positions inside a patch, across the N patches (pixel (0, 0) of every patch forms
one sequence, pixel (0, 1) another, ...). Both functions below are pure reshapes and
transposes, i.e. permutations of the elements, so:
  * fold is the exact inverse of unfold, and
  * the backward of unfold is fold (the adjoint of a permutation is its inverse), and vice versa.

v1 (ml-cvnets MobileViTBlock / timm MobileVitBlock): tokens (B * P, N, C), channels last, so
    a LayerNorm and a Linear work on the last axis.
v2 (ml-cvnets MobileViTBlockv2 / timm MobileVitV2Block, the F.unfold layout): (B, C, P, N),
    channels first, so 1x1 convolutions and GroupNorm work directly.
"""
from __future__ import annotations


def unfold_v1(x, patch_h: int = 2, patch_w: int = 2):
    """x: (B, C, H, W) -> tokens (B * P, N, C); token [b * P + p, n, c] is pixel p of patch n."""
    b, c, h, w = x.shape
    n_h, n_w = h // patch_h, w // patch_w
    t = x.reshape(b, c, n_h, patch_h, n_w, patch_w).transpose(0, 3, 5, 2, 4, 1)  # B ph pw nh nw C
    return t.reshape(b * patch_h * patch_w, n_h * n_w, c)


def fold_v1(t, out_hw, patch_h: int = 2, patch_w: int = 2):
    """tokens (B * P, N, C) -> (B, C, H, W), the inverse of :func:`unfold_v1`."""
    h, w = out_hw
    n_h, n_w = h // patch_h, w // patch_w
    c = t.shape[-1]
    b = t.shape[0] // (patch_h * patch_w)
    x = t.reshape(b, patch_h, patch_w, n_h, n_w, c).transpose(0, 5, 3, 1, 4, 2)  # B C nh ph nw pw
    return x.reshape(b, c, h, w)


def unfold_v2(x, patch_h: int = 2, patch_w: int = 2):
    """x: (B, C, H, W) -> (B, C, P, N); [b, c, p, n] is channel c of pixel p in patch n."""
    b, c, h, w = x.shape
    n_h, n_w = h // patch_h, w // patch_w
    t = x.reshape(b, c, n_h, patch_h, n_w, patch_w).transpose(0, 1, 3, 5, 2, 4)  # B C ph pw nh nw
    return t.reshape(b, c, patch_h * patch_w, n_h * n_w)


def fold_v2(t, out_hw, patch_h: int = 2, patch_w: int = 2):
    """(B, C, P, N) -> (B, C, H, W), the inverse of :func:`unfold_v2`."""
    h, w = out_hw
    n_h, n_w = h // patch_h, w // patch_w
    b, c = t.shape[:2]
    x = t.reshape(b, c, patch_h, patch_w, n_h, n_w).transpose(0, 1, 4, 2, 5, 3)  # B C nh ph nw pw
    return x.reshape(b, c, h, w)


# The (out, cache) / backward form of the other ops: the cache is what the inverse needs.
def unfold_v1_forward(x, patch_h: int = 2, patch_w: int = 2):
    return unfold_v1(x, patch_h, patch_w), (x.shape[2:], patch_h, patch_w)


def unfold_v1_backward(dt, cache):
    hw, ph, pw = cache
    return fold_v1(dt, hw, ph, pw)


def fold_v1_forward(t, out_hw, patch_h: int = 2, patch_w: int = 2):
    return fold_v1(t, out_hw, patch_h, patch_w), (patch_h, patch_w)


def fold_v1_backward(dx, cache):
    return unfold_v1(dx, *cache)


def unfold_v2_forward(x, patch_h: int = 2, patch_w: int = 2):
    return unfold_v2(x, patch_h, patch_w), (x.shape[2:], patch_h, patch_w)


def unfold_v2_backward(dt, cache):
    hw, ph, pw = cache
    return fold_v2(dt, hw, ph, pw)


def fold_v2_forward(t, out_hw, patch_h: int = 2, patch_w: int = 2):
    return fold_v2(t, out_hw, patch_h, patch_w), (patch_h, patch_w)


def fold_v2_backward(dx, cache):
    return unfold_v2(dx, *cache)
