"""Bilinear resize against F.interpolate, and the v1 / v2 patch unfold/fold against the
reshapes timm's MobileVitBlock / MobileVitV2Block do. Tolerances: tests/op_reference.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit.functional as F
from op_reference import (assert_close, case_rng, gradcheck_pair, torch_forward_backward,
                          with_torch)

DTYPES = st.sampled_from([np.float64, np.float32])
SEEDS = st.integers(0, 2**32 - 1)


# --- bilinear resize ----------------------------------------------------------------------------
@st.composite
def resize_cases(draw):
    # Input and output sizes drawn independently per axis: up, down, equal, non-square, and
    # 1-pixel edges (align_corners=True with a 1-pixel output divides by zero if done naively).
    size = st.integers(1, 9)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(size), draw(size))
    return shape, (draw(size), draw(size)), draw(st.booleans()), draw(SEEDS)


@given(resize_cases())
def test_resize_backward_matches_finite_differences(case):
    shape, out_hw, align_corners, seed = case
    x = case_rng(seed).standard_normal(shape)
    gradcheck_pair(lambda x: F.resize_bilinear_forward(x, out_hw, align_corners),
                   F.resize_bilinear_backward, dict(x=x), ["x"])


def _check_resize_against_torch(torch, shape, out_hw, align_corners, seed, dtype):
    x = case_rng(seed).standard_normal(shape).astype(dtype)
    y, cache = F.resize_bilinear_forward(x, out_hw, align_corners)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    dx = F.resize_bilinear_backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, g = torch_forward_backward(
        torch, lambda x: torch.nn.functional.interpolate(
            x, size=out_hw, mode="bilinear", align_corners=align_corners), dict(x=x), dy)
    what = f"resize {shape[2:]} -> {out_hw}, align_corners={align_corners}"
    assert_close(y, y_ref, dtype, what + " y")
    assert_close(dx, g["x"], dtype, what + " dx")


@with_torch
@given(resize_cases(), DTYPES)
def test_resize_matches_torch(torch, case, dtype):
    _check_resize_against_torch(torch, *case, dtype)


# The resizes MobileViT does (v1: up to the next multiple of 2 and back; v2: up) and plain
# 2x up / down, whatever hypothesis draws.
@pytest.mark.parametrize("in_hw, out_hw", [((7, 7), (8, 8)), ((8, 8), (7, 7)), ((5, 9), (6, 10)),
                                           ((4, 6), (8, 12)), ((8, 12), (4, 6)), ((14, 3), (5, 7))])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_mobilevit_sizes_match_torch(torch, in_hw, out_hw, align_corners):
    for dtype in (np.float64, np.float32):
        _check_resize_against_torch(torch, (2, 3) + in_hw, out_hw, align_corners, 0, dtype)


def test_resize_to_the_same_size_is_the_identity(rng):
    x = rng.standard_normal((2, 3, 5, 7))
    for align_corners in (False, True):
        y, _ = F.resize_bilinear_forward(x, (5, 7), align_corners)
        np.testing.assert_array_equal(y, x)


# --- patches: unfold / fold ---------------------------------------------------------------------
@st.composite
def patch_cases(draw):
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    n_h, n_w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (b, c, n_h * ph, n_w * pw), ph, pw, draw(SEEDS)


def timm_unfold_v1(x, ph, pw):
    """The [B, C, H, W] -> [B * P, N, C] reshapes of timm's MobileVitBlock.forward."""
    b, c, h, w = x.shape
    n_h, n_w = h // ph, w // pw
    x = x.reshape(b * c * n_h, ph, n_w, pw).transpose(1, 2)        # [B*C*n_h, n_w, p_h, p_w]
    return x.reshape(b, c, n_h * n_w, ph * pw).transpose(1, 3).reshape(b * ph * pw, n_h * n_w, -1)


def timm_fold_v1(t, hw, ph, pw):
    """The [B * P, N, C] -> [B, C, H, W] reshapes of timm's MobileVitBlock.forward."""
    h, w = hw
    n_h, n_w = h // ph, w // pw
    c = t.shape[-1]
    b = t.shape[0] // (ph * pw)
    x = t.contiguous().view(b, ph * pw, n_h * n_w, -1)
    x = x.transpose(1, 3).reshape(b * c * n_h, n_w, ph, pw)
    return x.transpose(1, 2).reshape(b, c, n_h * ph, n_w * pw)


def timm_unfold_v2(x, ph, pw):
    """MobileVitV2Block's [B, C, H, W] -> [B, C, P, N] (its default, non-CoreML path)."""
    b, c, h, w = x.shape
    n_h, n_w = h // ph, w // pw
    x = x.reshape(b, c, n_h, ph, n_w, pw).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c, -1, n_h * n_w)


def timm_fold_v2(t, hw, ph, pw):
    h, w = hw
    n_h, n_w = h // ph, w // pw
    b, c = t.shape[:2]
    x = t.reshape(b, c, ph, pw, n_h, n_w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c, n_h * ph, n_w * pw)


ORDERS = {
    "v1": (F.unfold_v1, F.fold_v1, F.unfold_v1_forward, F.unfold_v1_backward,
           F.fold_v1_forward, F.fold_v1_backward, timm_unfold_v1, timm_fold_v1),
    "v2": (F.unfold_v2, F.fold_v2, F.unfold_v2_forward, F.unfold_v2_backward,
           F.fold_v2_forward, F.fold_v2_backward, timm_unfold_v2, timm_fold_v2),
}


@pytest.mark.parametrize("order", list(ORDERS))
@given(patch_cases())
def test_fold_inverts_unfold_both_ways(order, case):
    unfold, fold = ORDERS[order][:2]
    shape, ph, pw, seed = case
    x = case_rng(seed).standard_normal(shape)
    t = unfold(x, ph, pw)
    assert t.size == x.size
    np.testing.assert_array_equal(fold(t, shape[2:], ph, pw), x)
    t2 = case_rng(seed + 1).standard_normal(t.shape)
    np.testing.assert_array_equal(unfold(fold(t2, shape[2:], ph, pw), ph, pw), t2)


@pytest.mark.parametrize("order", list(ORDERS))
@given(patch_cases())
def test_fold_backward_is_the_adjoint_of_unfold(order, case):
    """<unfold(x), y> == <x, fold(y)>, and each op's backward is the other op."""
    _, _, unfold_fwd, unfold_bwd, fold_fwd, fold_bwd, _, _ = ORDERS[order]
    shape, ph, pw, seed = case
    rng = case_rng(seed)
    x = rng.standard_normal(shape)
    t, unfold_cache = unfold_fwd(x, ph, pw)
    y = rng.standard_normal(t.shape)
    x_back, fold_cache = fold_fwd(y, shape[2:], ph, pw)
    lhs, rhs = np.sum(t * y), np.sum(x * x_back)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
    # unfold's backward (fold) and fold's backward (unfold) are those adjoints
    np.testing.assert_array_equal(unfold_bwd(y, unfold_cache), x_back)
    np.testing.assert_array_equal(fold_bwd(x, fold_cache), t)


@pytest.mark.parametrize("order", list(ORDERS))
@with_torch
@given(patch_cases())
def test_unfold_and_fold_match_timm_reshapes(torch, order, case):
    unfold, fold, *_, timm_unfold, timm_fold = ORDERS[order]
    shape, ph, pw, seed = case
    x = case_rng(seed).standard_normal(shape)
    t = unfold(x, ph, pw)
    np.testing.assert_array_equal(t, timm_unfold(torch.from_numpy(x), ph, pw).numpy())
    np.testing.assert_array_equal(fold(t, shape[2:], ph, pw),
                                  timm_fold(torch.from_numpy(t), shape[2:], ph, pw).numpy())


@with_torch
@given(patch_cases())
def test_unfold_v2_matches_torch_unfold_and_pixel_shuffle(torch, case):
    """timm's CoreML-exportable v2 path: F.unfold with kernel = stride = patch for the unfold,
    and pixel_shuffle for the fold (square patches only), give the same layout."""
    shape, ph, pw, seed = case
    x = case_rng(seed).standard_normal(shape)
    b, c, h, w = shape
    n = (h // ph) * (w // pw)
    t = F.unfold_v2(x, ph, pw)
    ref = torch.nn.functional.unfold(torch.from_numpy(x), kernel_size=(ph, pw), stride=(ph, pw))
    np.testing.assert_array_equal(t, ref.reshape(b, c, ph * pw, n).numpy())
    if ph == pw:
        folded = torch.nn.functional.pixel_shuffle(
            torch.from_numpy(t).reshape(b, c * ph * pw, h // ph, w // pw), upscale_factor=ph)
        np.testing.assert_array_equal(F.fold_v2(t, (h, w), ph, pw), folded.numpy())


@pytest.mark.parametrize("order", list(ORDERS))
def test_unfold_backward_matches_finite_differences(order, rng):
    unfold_fwd, unfold_bwd = ORDERS[order][2:4]
    gradcheck_pair(lambda x: unfold_fwd(x, 2, 2), unfold_bwd,
                   dict(x=rng.standard_normal((2, 3, 4, 6))), ["x"])


def test_unfold_groups_pixels_by_position_in_the_patch():
    # The meaning of the layout, on a map whose values name their own (row, col):
    # sequence p of v1 / row p of v2 holds pixel (p // 2, p % 2) of every 2x2 patch.
    h, w = 4, 6
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = (10 * rows + cols).reshape(1, 1, h, w).astype(float)
    v1 = F.unfold_v1(x)[:, :, 0]               # (P, N)
    v2 = F.unfold_v2(x)[0, 0]                  # (P, N)
    np.testing.assert_array_equal(v1, v2)
    for p in range(4):
        i, j = divmod(p, 2)
        np.testing.assert_array_equal(v1[p], x[0, 0, i::2, j::2].reshape(-1))
