"""Batch norm (train and eval), layer norm and group norm against finite differences and
torch.nn.functional; the BatchNorm2d module's running statistics against torch.nn.BatchNorm2d.
Tolerances: tests/op_reference.py."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit
import npvit.functional as F
from op_reference import assert_close, case_rng, gradcheck_pair, torch_forward_backward, with_torch

DTYPES = st.sampled_from([np.float64, np.float32])
EPS = st.sampled_from([1e-5, 1e-3])
SEEDS = st.integers(0, 2**32 - 1)
# NOTE_TWO_VALUES: every case standardises at least 3 values at once. With 1 value training
# batch norm is undefined (torch refuses it); with 2, x_hat = +-1 whatever x is, so the true
# dL/dx is only O(eps / var) and comes out of a cancellation between O(1) terms: float32 (and
# finite differences) keep only a few digits of it, in npvit and in PyTorch alike.


@st.composite
def batchnorm_cases(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if n * h * w < 3:           # see NOTE_TWO_VALUES
        h += 2
    return (n, c, h, w), draw(st.sampled_from([0.1, 0.3])), draw(EPS), draw(SEEDS)


def _bn_arrays(shape, seed, dtype):
    rng = case_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    running_mean = rng.standard_normal(c).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, c).astype(dtype)
    return x, gamma, beta, running_mean, running_var


# --- batch norm ---------------------------------------------------------------------------------
@given(batchnorm_cases(), st.booleans())
def test_batchnorm_backward_matches_finite_differences(case, training):
    shape, momentum, eps, seed = case
    x, gamma, beta, rm, rv = _bn_arrays(shape, seed, np.float64)
    # fresh copies of the running statistics each call: training updates them in place
    gradcheck_pair(lambda x, gamma, beta: F.batchnorm2d_forward(
        x, gamma, beta, rm.copy(), rv.copy(), training, momentum, eps),
        F.batchnorm2d_backward, dict(x=x, gamma=gamma, beta=beta), ["x", "gamma", "beta"])


@with_torch
@given(batchnorm_cases(), st.booleans(), DTYPES)
def test_batchnorm_matches_torch(torch, case, training, dtype):
    shape, momentum, eps, seed = case
    x, gamma, beta, rm, rv = _bn_arrays(shape, seed, dtype)
    rm_torch, rv_torch = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    y, cache = F.batchnorm2d_forward(x, gamma, beta, rm, rv, training, momentum, eps)
    assert y.dtype == dtype
    dy = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = F.batchnorm2d_backward(dy, cache)
    y_ref, g = torch_forward_backward(
        torch, lambda x, gamma, beta: torch.nn.functional.batch_norm(
            x, rm_torch, rv_torch, gamma, beta, training=training, momentum=momentum, eps=eps),
        dict(x=x, gamma=gamma, beta=beta), dy)
    assert_close(y, y_ref, dtype, "batch norm y")
    assert_close(dx, g["x"], dtype, "batch norm dx")
    assert_close(dgamma, g["gamma"], dtype, "batch norm dgamma")
    assert_close(dbeta, g["beta"], dtype, "batch norm dbeta")
    # training updated the running statistics in place exactly as torch did (unbiased var);
    # eval left them alone
    assert_close(rm, rm_torch.numpy(), dtype, "running_mean")
    assert_close(rv, rv_torch.numpy(), dtype, "running_var")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batchnorm_module_tracks_running_stats_like_torch(torch, dtype):
    """Several training steps of different batch sizes, then eval: npvit.nn.BatchNorm2d and
    torch.nn.BatchNorm2d (momentum 0.1) agree on outputs, gradients, running_mean,
    running_var (updated with the unbiased variance) and num_batches_tracked."""
    rng = np.random.default_rng(0)
    c = 3
    ours = npvit.nn.BatchNorm2d(c, dtype=dtype)
    ref = torch.nn.BatchNorm2d(c).to(torch.float64 if dtype == np.float64 else torch.float32)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    ours.load_state_dict({"weight": gamma, "bias": beta}, strict=False)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
    for step, n in enumerate([2, 4, 1, 3]):
        x = (rng.standard_normal((n, c, 3, 2)) * (step + 1) + step).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        ours.zero_grad()
        y = ours(x)
        dx = ours.backward(dy)
        xt = torch.from_numpy(x).requires_grad_(True)
        ref.zero_grad()
        y_ref = ref(xt)
        y_ref.backward(torch.from_numpy(dy))
        assert_close(y, y_ref.detach().numpy(), dtype, f"step {step} y")
        assert_close(dx, xt.grad.numpy(), dtype, f"step {step} dx")
        assert_close(ours.weight.grad, ref.weight.grad.numpy(), dtype, f"step {step} dgamma")
        assert_close(ours.bias.grad, ref.bias.grad.numpy(), dtype, f"step {step} dbeta")
        sd, sd_ref = ours.state_dict(), ref.state_dict()
        assert list(sd) == list(sd_ref)
        assert_close(sd["running_mean"], sd_ref["running_mean"].numpy(), dtype, f"step {step} mean")
        assert_close(sd["running_var"], sd_ref["running_var"].numpy(), dtype, f"step {step} var")
        assert int(sd["num_batches_tracked"]) == int(sd_ref["num_batches_tracked"]) == step + 1
    ours.eval()
    ref.eval()
    x = rng.standard_normal((2, c, 4, 3)).astype(dtype)
    assert_close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), dtype, "eval y")
    assert int(ours.state_dict()["num_batches_tracked"]) == 4   # eval does not count


# --- layer norm ---------------------------------------------------------------------------------
@st.composite
def layernorm_cases(draw):
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    return lead + (draw(st.integers(3, 8)),), draw(EPS), draw(SEEDS)   # NOTE_TWO_VALUES


def _affine_arrays(shape, n_affine, seed, dtype):
    rng = case_rng(seed)
    x = (rng.standard_normal(shape) * 3 - 1).astype(dtype)
    return (x, rng.standard_normal(n_affine).astype(dtype),
            rng.standard_normal(n_affine).astype(dtype))


@given(layernorm_cases())
def test_layernorm_backward_matches_finite_differences(case):
    shape, eps, seed = case
    x, gamma, beta = _affine_arrays(shape, shape[-1], seed, np.float64)
    gradcheck_pair(lambda x, gamma, beta: F.layernorm_forward(x, gamma, beta, eps),
                   F.layernorm_backward, dict(x=x, gamma=gamma, beta=beta), ["x", "gamma", "beta"])


@with_torch
@given(layernorm_cases(), DTYPES)
def test_layernorm_matches_torch(torch, case, dtype):
    shape, eps, seed = case
    x, gamma, beta = _affine_arrays(shape, shape[-1], seed, dtype)
    y, cache = F.layernorm_forward(x, gamma, beta, eps)
    assert y.dtype == dtype
    dy = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = F.layernorm_backward(dy, cache)
    y_ref, g = torch_forward_backward(
        torch, lambda x, gamma, beta: torch.nn.functional.layer_norm(
            x, (shape[-1],), gamma, beta, eps), dict(x=x, gamma=gamma, beta=beta), dy)
    assert_close(y, y_ref, dtype, "layer norm y")
    assert_close(dx, g["x"], dtype, "layer norm dx")
    assert_close(dgamma, g["gamma"], dtype, "layer norm dgamma")
    assert_close(dbeta, g["beta"], dtype, "layer norm dbeta")


# --- group norm ---------------------------------------------------------------------------------
@st.composite
def groupnorm_cases(draw):
    # groups = 1 is MobileViTv2's LayerNorm2D; otherwise several groups of C/G channels.
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    if c // groups * int(np.prod(spatial)) < 3:     # NOTE_TWO_VALUES
        spatial = spatial + (3,)
    return (draw(st.integers(1, 3)), c) + spatial, groups, draw(EPS), draw(SEEDS)


@given(groupnorm_cases())
def test_groupnorm_backward_matches_finite_differences(case):
    shape, groups, eps, seed = case
    x, gamma, beta = _affine_arrays(shape, shape[1], seed, np.float64)
    gradcheck_pair(lambda x, gamma, beta: F.groupnorm_forward(x, groups, gamma, beta, eps),
                   F.groupnorm_backward, dict(x=x, gamma=gamma, beta=beta), ["x", "gamma", "beta"])


@with_torch
@given(groupnorm_cases(), DTYPES)
def test_groupnorm_matches_torch(torch, case, dtype):
    shape, groups, eps, seed = case
    x, gamma, beta = _affine_arrays(shape, shape[1], seed, dtype)
    y, cache = F.groupnorm_forward(x, groups, gamma, beta, eps)
    assert y.dtype == dtype
    dy = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = F.groupnorm_backward(dy, cache)
    y_ref, g = torch_forward_backward(
        torch, lambda x, gamma, beta: torch.nn.functional.group_norm(x, groups, gamma, beta, eps),
        dict(x=x, gamma=gamma, beta=beta), dy)
    assert_close(y, y_ref, dtype, "group norm y")
    assert_close(dx, g["x"], dtype, "group norm dx")
    assert_close(dgamma, g["gamma"], dtype, "group norm dgamma")
    assert_close(dbeta, g["beta"], dtype, "group norm dbeta")
