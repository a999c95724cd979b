"""Centred finite differences for any forward/backward pair (cs231n's numeric gradient).

For a scalar loss L = sum(f(x) * g) with a fixed random g, the analytic gradient is backward(g);
the numeric one is (L(x + h e_i) - L(x - h e_i)) / 2h for each coordinate i. Run in float64.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def numeric_gradient(f: Callable[[], np.ndarray], x: np.ndarray, g: np.ndarray,
                     h: float = 1e-6, max_coords: int | None = None,
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """d sum(f() * g) / dx by centred differences, perturbing ``x`` in place (restored after).

    ``f`` takes no arguments and reads ``x``, so the same call works for inputs and parameters.
    Returns (numeric values, flat indices checked); with ``max_coords`` a random subset.
    """
    flat = x.reshape(-1)  # a view: perturbing it perturbs x
    if not np.shares_memory(flat, x):
        raise ValueError("numeric_gradient needs a contiguous array to perturb in place")
    idx = np.arange(flat.size)
    if max_coords is not None and flat.size > max_coords:
        rng = rng or np.random.default_rng(0)
        idx = np.sort(rng.choice(flat.size, max_coords, replace=False))
    out = np.empty(idx.size, dtype=np.float64)
    for n, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        plus = float(np.sum(f() * g))
        flat[i] = old - h
        minus = float(np.sum(f() * g))
        flat[i] = old
        out[n] = (plus - minus) / (2 * h)
    return out, idx


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|, tiny): scale-free, so one tolerance fits every op."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-12)
    return float(np.abs(a - b).max(initial=0.0) / scale)


def check_gradients(forward: Callable, backward: Callable, inputs: dict[str, np.ndarray],
                    h: float = 1e-6, max_coords: int | None = 64, seed: int = 0) -> dict[str, float]:
    """Compare backward with finite differences for every array in ``inputs``.

    forward(**inputs) -> y;  backward(g) -> dict name -> analytic gradient for (some of) the
    inputs. Returns name -> relative error. Inputs must be float64 and contiguous.
    """
    rng = np.random.default_rng(seed)
    y = forward(**inputs)
    g = rng.standard_normal(np.shape(y))
    analytic = backward(g)
    errors = {}
    for name, grad in analytic.items():
        x = inputs[name]
        num, idx = numeric_gradient(lambda: forward(**inputs), x, g, h, max_coords, rng)
        errors[name] = relative_error(np.asarray(grad).reshape(-1)[idx], num)
    return errors


def wrap_op(op_forward: Callable, op_backward: Callable, grad_names):
    """Turn an (out, cache) op pair into the (forward, backward) that `check_gradients` takes.

    ``op_forward(**inputs) -> (y, cache)``; ``op_backward(dy, cache)`` returns one gradient or a
    tuple, matched in order to ``grad_names`` (None names and None gradients are skipped).
    """
    state = {}

    def forward(**inputs):
        y, state["cache"] = op_forward(**inputs)
        return y

    def backward(g):
        grads = op_backward(g, state["cache"])
        grads = grads if isinstance(grads, tuple) else (grads,)
        return {n: v for n, v in zip(grad_names, grads) if n is not None and v is not None}
    return forward, backward
