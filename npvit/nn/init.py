"""Random initialisation, PyTorch's defaults, drawn from one seedable generator."""
from __future__ import annotations

import numpy as np

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Make every later layer construction reproducible."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _rng


def uniform_fan_in(shape, fan_in: int, dtype=np.float32) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear and Conv2d weights
    (kaiming_uniform with a=sqrt(5)) and biases."""
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)
