"""Gradient clipping by global norm (Pascanu et al. 2013), as torch.nn.utils.clip_grad_norm_.

All gradients together are treated as one long vector g. If its Euclidean norm ||g|| exceeds
max_norm, every gradient is scaled by max_norm / (||g|| + 1e-6), so the direction of the update
is kept and only its length is capped. (The MobileViTv2 ImageNet recipe clips at 10.)
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import NpvitError
from ..nn.module import Parameter


def clip_grad_norm(parameters: Iterable[Parameter], max_norm: float) -> float:
    """Scale the grads of ``parameters`` in place so their global L2 norm is at most max_norm.

    Returns the norm before clipping. Parameters without a grad are ignored. Like PyTorch, the
    grads are multiplied by min(1, max_norm / (norm + 1e-6)) — the 1e-6 keeps a zero norm from
    dividing by zero. Unlike PyTorch's default, a non-finite norm raises: scaling by nan would
    silently turn every parameter into nan at the next step.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    # the norm of the per-tensor norms equals the norm of all entries together
    total_norm = float(np.linalg.norm([np.linalg.norm(g.reshape(-1)) for g in grads]))
    if not np.isfinite(total_norm):
        raise NpvitError(f"the gradient norm is {total_norm}: training diverged "
                         "(try a lower learning rate)")
    scale = min(1.0, max_norm / (total_norm + 1e-6))
    for g in grads:
        g *= scale
    return total_norm
