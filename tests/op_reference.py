"""Helpers for the functional-op tests: finite-difference checks and the PyTorch reference.

Tolerances (the same for every op):
* backward vs centred finite differences, float64: relative error <= 1e-6;
* forward and backward vs PyTorch: <= 1e-10 in float64 and <= 1e-5 in float32.
Both are measured with ``npvit.gradcheck.relative_error``, max |a - b| / max(|a|, |b|): an
absolute error scaled by the largest magnitude in the compared arrays ("scaled absolute").
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings

from npvit.gradcheck import check_gradients, relative_error, wrap_op

FD_TOL = 1e-6
TORCH_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}

# The `torch` fixture is function-scoped but it is just the torch module, the same object for
# every hypothesis example, so sharing it across examples is safe.
with_torch = settings(suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


def case_rng(seed: int) -> np.random.Generator:
    """The generator for one test case's arrays. Its stream differs from that of any integer
    seed, in particular check_gradients' seed 0: when hypothesis shrinks a case seed to 0, the
    input would otherwise be made of the same normals as the finite-difference cotangent (for
    a norm that makes the true gradient ~0 and the comparison meaningless)."""
    return np.random.default_rng([seed, 1])


def assert_close(ours, ref, dtype, what: str, scale: float | None = None) -> None:
    """ours vs the PyTorch result ``ref``: max |ours - ref| / scale <= TORCH_TOL[dtype].

    ``scale`` defaults to the largest magnitude in the two arrays (``relative_error``). A test
    passes a larger, stated scale where the result is a small difference of larger terms
    (softmax's backward, GELU's far tail): there both libraries' rounding is relative to those
    terms, not to the small result.
    """
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != torch {ref.shape}"
    if scale is None:
        err = relative_error(ours, ref)
    else:
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0)
        err = float(diff / max(scale, 1e-12))
    tol = TORCH_TOL[np.dtype(dtype)]
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e} ({np.dtype(dtype)})"


def torch_forward_backward(torch, fn, inputs: dict, dy: np.ndarray, no_grad=()):
    """Run ``fn(**tensors)`` with autograd and back-propagate ``dy``.

    Every floating input except those named in ``no_grad`` requires grad.
    Returns (y, {name: grad}) as NumPy arrays.
    """
    tensors = {}
    for name, v in inputs.items():
        t = torch.from_numpy(np.array(v))   # a copy: in-place torch updates stay in torch
        if t.is_floating_point() and name not in no_grad:
            t.requires_grad_(True)
        tensors[name] = t
    y = fn(**tensors)
    y.backward(torch.from_numpy(np.ascontiguousarray(dy)))
    grads = {n: t.grad.numpy() for n, t in tensors.items() if t.requires_grad}
    return y.detach().numpy(), grads


def gradcheck_pair(forward, backward, inputs: dict, grad_names) -> None:
    """Check an (out, cache) op pair against centred finite differences (float64).

    ``forward(**inputs) -> (y, cache)``; ``backward(dy, cache)`` returns one gradient or a
    tuple, matched in order to ``grad_names`` (None entries are skipped).
    """
    errors = check_gradients(*wrap_op(forward, backward, grad_names), inputs)
    assert set(errors) == {n for n in grad_names if n is not None and n in inputs}, errors
    for name, err in errors.items():
        assert err <= FD_TOL, f"d/d{name}: relative error {err:.2e} vs finite differences"
