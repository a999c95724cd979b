"""Activations (SiLU, ReLU, exact GELU), softmax on any axis, inverted dropout, global average
pooling and linear, against finite differences and PyTorch. Tolerances: tests/op_reference.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit
import npvit.functional as F
from op_reference import (assert_close, case_rng, gradcheck_pair, torch_forward_backward,
                          with_torch)

DTYPES = st.sampled_from([np.float64, np.float32])
SEEDS = st.integers(0, 2**32 - 1)
SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


def _x(shape, seed, dtype, scale=3.0):
    return (case_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _dy(shape, seed, dtype):
    return np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)


# --- activations --------------------------------------------------------------------------------
ACTIVATIONS = {
    "silu": (F.silu_forward, F.silu_backward, lambda t, x: t.nn.functional.silu(x)),
    "relu": (F.relu_forward, F.relu_backward, lambda t, x: t.nn.functional.relu(x)),
    "gelu": (F.gelu_forward, F.gelu_backward,
             lambda t, x: t.nn.functional.gelu(x, approximate="none")),
}


def _away_from_kink(x):
    # ReLU has no derivative at 0; keep finite differences (step 1e-6) off it.
    return np.where(np.abs(x) < 1e-3, np.copysign(1e-2, x), x)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(shape=SHAPES, seed=SEEDS)
def test_activation_backward_matches_finite_differences(name, shape, seed):
    fwd, bwd, _ = ACTIVATIONS[name]
    x = _away_from_kink(_x(shape, seed, np.float64))
    gradcheck_pair(fwd, bwd, dict(x=x), ["x"])


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@with_torch
@given(shape=SHAPES, seed=SEEDS, dtype=DTYPES)
def test_activation_matches_torch(torch, name, shape, seed, dtype):
    fwd, bwd, ref = ACTIVATIONS[name]
    x, dy = _x(shape, seed, dtype), _dy(shape, seed, dtype)
    y, cache = fwd(x)
    dx = bwd(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, g = torch_forward_backward(torch, lambda x: ref(torch, x), dict(x=x), dy)
    # Errors scaled by the input's magnitude (|f(x)| <= |x| and |f'| < 1.2 for all three):
    # PyTorch computes GELU's Phi(x) as (1 + erf(x / sqrt 2)) / 2, which cancels for x << 0
    # (npvit uses erfc, see test_gelu_is_accurate_in_the_left_tail), so an array made only of
    # far-tail values would otherwise compare torch's rounding noise.
    assert_close(y, y_ref, dtype, f"{name} y", scale=np.abs(x).max())
    assert_close(dx, g["x"], dtype, f"{name} dx", scale=np.abs(dy).max())


def test_activations_at_extreme_inputs_stay_finite(torch):
    # exp overflows for |x| ~ 710 in float64 and ~ 89 in float32; the ops must not.
    for dtype in (np.float64, np.float32):
        x = np.array([-1e4, -800.0, -100.0, -30.0, 0.0, 30.0, 100.0, 800.0, 1e4], dtype=dtype)
        for name, (fwd, bwd, ref) in ACTIVATIONS.items():
            y, cache = fwd(x)
            dx = bwd(np.ones_like(x), cache)
            assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx)), name
            y_ref, g = torch_forward_backward(torch, lambda x: ref(torch, x), dict(x=x),
                                              np.ones_like(x))
            assert_close(y, y_ref, dtype, f"{name} y at extremes")
            assert_close(dx, g["x"], dtype, f"{name} dx at extremes")


def test_gelu_is_accurate_in_the_left_tail(torch):
    # Elementwise relative accuracy of float32 GELU against torch in float64, on [-5, 0) where
    # float64's (1 + erf) still has ~10 correct digits; float32 (1 + erf) would have none left
    # near -5, erfc keeps them.
    x = np.linspace(-5.0, -0.01, 300).astype(np.float32)
    y, cache = F.gelu_forward(x)
    dx = F.gelu_backward(np.ones_like(x), cache)
    y_ref, g = torch_forward_backward(
        torch, lambda x: torch.nn.functional.gelu(x), dict(x=x.astype(np.float64)), np.ones(x.shape))
    assert np.max(np.abs(y - y_ref) / np.abs(y_ref)) < 1e-5
    assert np.max(np.abs(dx - g["x"]) / np.abs(g["x"])) < 1e-4   # Phi + x phi itself cancels a bit


# --- softmax ------------------------------------------------------------------------------------
@st.composite
def softmax_cases(draw):
    shape = draw(SHAPES)
    return shape, draw(st.integers(-len(shape), len(shape) - 1)), draw(SEEDS)


@given(softmax_cases())
def test_softmax_backward_matches_finite_differences(case):
    shape, axis, seed = case
    gradcheck_pair(lambda x: F.softmax_forward(x, axis), F.softmax_backward,
                   dict(x=_x(shape, seed, np.float64)), ["x"])


@with_torch
@given(softmax_cases(), DTYPES)
def test_softmax_matches_torch(torch, case, dtype):
    shape, axis, seed = case
    x, dy = _x(shape, seed, dtype), _dy(shape, seed, dtype)
    y, cache = F.softmax_forward(x, axis)
    dx = F.softmax_backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, g = torch_forward_backward(torch, lambda x: torch.softmax(x, dim=axis), dict(x=x), dy)
    assert_close(y, y_ref, dtype, "softmax y")
    # dx = y (dy - sum(y dy)) is a difference of terms of size |y| |dy|; when one probability
    # is close to 1 the result is much smaller than they are, so scale by them.
    assert_close(dx, g["x"], dtype, "softmax dx", scale=np.abs(y).max() * np.abs(dy).max())
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_softmax_of_huge_logits_does_not_overflow():
    y, _ = F.softmax_forward(np.array([[1000.0, 1000.0, -1000.0], [3e38, 0.0, 3e38]]), axis=1)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])


# --- dropout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_statistics(p):
    """Each element is kept independently with probability 1 - p and scaled by 1 / (1 - p), so
    the expected output equals the input (inverted dropout: nothing to undo at eval)."""
    n = 200_000
    x = np.random.default_rng(1).uniform(0.5, 1.5, n)
    y, mask = F.dropout_forward(x, p, training=True, rng=np.random.default_rng(2))
    dropped = y == 0
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(dropped.mean() - p) < 5 * sigma
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - p), rtol=1e-12)
    # E[y_i] = x_i and Var(y_i) = x_i^2 p / (1 - p), so the mean of y is within 5 sd of x's
    sd_of_mean = np.sqrt(np.mean(x * x) * p / (1 - p) / n)
    assert abs(y.mean() - x.mean()) < 5 * sd_of_mean
    # a second call draws a fresh mask
    y2, _ = F.dropout_forward(x, p, training=True, rng=np.random.default_rng(3))
    assert not np.array_equal(y2 == 0, dropped)


@pytest.mark.parametrize("training, p", [(False, 0.5), (False, 0.0), (True, 0.0)])
def test_dropout_is_the_identity_in_eval_and_at_p0(training, p, rng):
    x = rng.standard_normal((3, 4, 5))
    y, mask = F.dropout_forward(x, p, training=training, rng=rng)
    np.testing.assert_array_equal(y, x)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(F.dropout_backward(dy, mask), dy)


def test_dropout_p1_drops_everything(rng):
    x = rng.standard_normal((4, 5))
    y, mask = F.dropout_forward(x, 1.0, training=True, rng=rng)
    np.testing.assert_array_equal(y, np.zeros_like(x))
    np.testing.assert_array_equal(F.dropout_backward(np.ones_like(x), mask), np.zeros_like(x))


@given(shape=SHAPES, seed=SEEDS, p=st.sampled_from([0.2, 0.5, 0.8]))
def test_dropout_backward_uses_the_forward_mask(shape, seed, p):
    x = _x(shape, seed, np.float64) + 10.0     # no exact zeros in x itself
    y, mask = F.dropout_forward(x, p, training=True, rng=np.random.default_rng(seed))
    dy = _dy(shape, seed, np.float64)
    dx = F.dropout_backward(dy, mask)
    kept = y != 0
    np.testing.assert_array_equal(dx[~kept], 0.0)
    np.testing.assert_allclose(dx[kept], dy[kept] / (1 - p), rtol=1e-12)
    # and, with the mask fixed by re-seeding every call, it is the true derivative
    gradcheck_pair(lambda x: F.dropout_forward(x, p, True, np.random.default_rng(seed)),
                   F.dropout_backward, dict(x=x), ["x"])


def test_dropout_module_train_and_eval(rng):
    drop = npvit.nn.Dropout(0.5, rng=np.random.default_rng(0))
    x = rng.standard_normal((6, 7)) + 5.0
    y = drop(x)
    assert np.any(y == 0) and np.any(y != 0)
    dx = drop.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx == 0, y == 0)
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), np.ones_like(x))


# --- global average pooling ---------------------------------------------------------------------
@st.composite
def pool_cases(draw):
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 6)),
            draw(st.integers(1, 6))), draw(SEEDS)


@given(pool_cases())
def test_global_avg_pool_backward_matches_finite_differences(case):
    shape, seed = case
    gradcheck_pair(F.global_avg_pool_forward, F.global_avg_pool_backward,
                   dict(x=_x(shape, seed, np.float64)), ["x"])


@with_torch
@given(pool_cases(), DTYPES)
def test_global_avg_pool_matches_torch(torch, case, dtype):
    shape, seed = case
    x = _x(shape, seed, dtype)
    y, cache = F.global_avg_pool_forward(x)
    dy = _dy(y.shape, seed, dtype)
    dx = F.global_avg_pool_backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, g = torch_forward_backward(
        torch, lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1), dict(x=x), dy)
    assert_close(y, y_ref, dtype, "pool y")
    assert_close(dx, g["x"], dtype, "pool dx")


# --- linear -------------------------------------------------------------------------------------
@st.composite
def linear_cases(draw):
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    return lead, draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.booleans()), draw(SEEDS)


def _linear_arrays(case, dtype):
    lead, d_in, d_out, bias, seed = case
    rng = case_rng(seed)
    x = rng.standard_normal(lead + (d_in,)).astype(dtype)
    w = rng.standard_normal((d_out, d_in)).astype(dtype)
    return (dict(x=x, w=w, b=rng.standard_normal(d_out).astype(dtype)) if bias
            else dict(x=x, w=w))


@given(linear_cases())
def test_linear_backward_matches_finite_differences(case):
    gradcheck_pair(lambda x, w, b=None: F.linear_forward(x, w, b), F.linear_backward,
                   _linear_arrays(case, np.float64), ["x", "w", "b"])


@with_torch
@given(linear_cases(), DTYPES)
def test_linear_matches_torch(torch, case, dtype):
    inputs = _linear_arrays(case, dtype)
    y, cache = F.linear_forward(**inputs)
    dy = _dy(y.shape, case[-1], dtype)
    dx, dw, db = F.linear_backward(dy, cache)
    assert y.dtype == dx.dtype == dw.dtype == dtype
    y_ref, g = torch_forward_backward(
        torch, lambda x, w, b=None: torch.nn.functional.linear(x, w, b), inputs, dy)
    assert_close(y, y_ref, dtype, "linear y")
    assert_close(dx, g["x"], dtype, "linear dx")
    assert_close(dw, g["w"], dtype, "linear dw")
    if "b" in inputs:
        assert_close(db, g["b"], dtype, "linear db")
    else:
        assert db is None
