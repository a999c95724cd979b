"""The ops dense prediction adds: adaptive average pooling (PyTorch's bins), the pixel cross
entropy with an ignore index, channel dropout and nearest resizing, against torch and finite
differences. Tolerances: tests/op_reference.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit.functional as F
from npvit.errors import NpvitError
from op_reference import (assert_close, case_rng, gradcheck_pair, torch_forward_backward,
                          with_torch)

DTYPES = st.sampled_from([np.float64, np.float32])
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def pool_cases(draw):
    # PSPNet's pool sizes 1, 2, 3, 6 on maps that do and do not divide (overlapping bins), and
    # output sizes larger than the input (repeated pixels).
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 13)),
             draw(st.integers(1, 13)))
    size = (draw(st.sampled_from([1, 2, 3, 6, 7])), draw(st.sampled_from([1, 2, 3, 6, 4])))
    return shape, size, draw(SEEDS)


@given(pool_cases())
def test_adaptive_avg_pool_backward_matches_finite_differences(case):
    shape, size, seed = case
    gradcheck_pair(lambda x: F.adaptive_avg_pool_forward(x, size), F.adaptive_avg_pool_backward,
                   dict(x=case_rng(seed).standard_normal(shape)), ["x"])


@with_torch
@given(pool_cases(), DTYPES)
def test_adaptive_avg_pool_matches_torch(torch, case, dtype):
    shape, size, seed = case
    x = case_rng(seed).standard_normal(shape).astype(dtype)
    y, cache = F.adaptive_avg_pool_forward(x, size)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    dx = F.adaptive_avg_pool_backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, g = torch_forward_backward(
        torch, lambda x: torch.nn.functional.adaptive_avg_pool2d(x, size), dict(x=x), dy)
    assert_close(y, y_ref, dtype, "adaptive pool y")
    assert_close(dx, g["x"], dtype, "adaptive pool dx")


def test_adaptive_pool_bins_overlap_as_pytorch_says():
    # NOTES.md 1.5: start = floor(i*H/p), end = ceil((i+1)*H/p); 64 -> 6 gives bins of 11 that
    # share their edge pixels.
    a = F.adaptive_pool_matrix(64, 6)
    starts = [int(np.flatnonzero(row)[0]) for row in a]
    ends = [int(np.flatnonzero(row)[-1]) + 1 for row in a]
    assert starts == [i * 64 // 6 for i in range(6)]
    assert ends == [-(-(i + 1) * 64 // 6) for i in range(6)]
    assert starts[1] < ends[0]                      # overlap
    np.testing.assert_allclose(a.sum(axis=1), 1.0)


@st.composite
def pixel_ce_cases(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(2, 6))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    ignore = draw(st.sampled_from([-1, 255]))
    return n, c, h, w, ignore, draw(st.sampled_from([0.1, 3.0, 100.0])), draw(SEEDS)


def _pixel_arrays(case):
    n, c, h, w, ignore, scale, seed = case
    rng = case_rng(seed)
    logits = rng.standard_normal((n, c, h, w)) * scale
    targets = rng.integers(0, c, (n, h, w))
    targets[rng.random((n, h, w)) < 0.3] = ignore
    targets.flat[0] = 0                              # at least one pixel counts
    return logits, targets, ignore


@with_torch
@given(pixel_ce_cases(), DTYPES)
def test_pixel_cross_entropy_equals_torch_with_ignore_index(torch, case, dtype):
    logits, targets, ignore = _pixel_arrays(case)
    logits = logits.astype(dtype)
    loss, cache = F.pixel_cross_entropy_forward(logits, targets, ignore)
    dlogits = F.pixel_cross_entropy_backward(cache)
    assert dlogits.dtype == dtype
    z = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(z, torch.tensor(targets), ignore_index=ignore)
    ref.backward()
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert loss == pytest.approx(ref.item(), rel=tol, abs=tol)
    assert_close(dlogits, z.grad.numpy(), dtype, "pixel cross entropy dlogits")
    assert not dlogits.transpose(0, 2, 3, 1)[targets == ignore].any()


@given(pixel_ce_cases())
def test_pixel_cross_entropy_backward_matches_finite_differences(case):
    logits, targets, ignore = _pixel_arrays(case)
    logits = logits / max(1.0, np.abs(logits).max() / 3)   # away from saturation for the FD step

    def forward(z):
        loss, cache = F.pixel_cross_entropy_forward(z, targets, ignore)
        return np.array(loss), cache
    gradcheck_pair(forward, lambda g, cache: float(g) * F.pixel_cross_entropy_backward(cache),
                   dict(z=logits), ["z"])


def test_pixel_cross_entropy_with_every_pixel_ignored_is_zero_with_zero_gradient():
    loss, cache = F.pixel_cross_entropy_forward(np.ones((1, 3, 2, 2)), np.full((1, 2, 2), 255), 255)
    assert loss == 0.0 and not F.pixel_cross_entropy_backward(cache).any()


@pytest.mark.parametrize("targets, match", [
    (np.full((1, 2, 2), 3), r"\[0, 3\)"),
    (np.full((1, 2, 2), 0.0), "integer"),
    (np.zeros((1, 2, 3), int), "targets"),
])
def test_pixel_cross_entropy_refuses_bad_targets(targets, match):
    with pytest.raises(NpvitError, match=match):
        F.pixel_cross_entropy_forward(np.zeros((1, 3, 2, 2)), targets, ignore_index=-1)


def test_dropout2d_drops_whole_planes_and_its_backward_is_the_mask():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 50, 3, 5))
    y, mask = F.dropout2d_forward(x, 0.3, True, np.random.default_rng(1))
    assert mask.shape == (4, 50, 1, 1)
    dropped = (y == 0).all(axis=(2, 3))
    assert 0.15 < dropped.mean() < 0.45
    np.testing.assert_allclose(y[~dropped], (x / 0.7)[~dropped])
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(F.dropout_backward(dy, mask), dy * mask)
    same, none = F.dropout2d_forward(x, 0.3, False)
    assert same is x and none is None


@pytest.mark.parametrize("hw, size", [((4, 6), (17, 23)), ((5, 5), (3, 2)), ((1, 3), (4, 9))])
def test_nearest_resize_equals_torch(torch, hw, size):
    x = np.random.default_rng(0).standard_normal((2, 3, *hw))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="nearest").numpy()
    np.testing.assert_array_equal(F.resize_nearest(x, size), ref)
