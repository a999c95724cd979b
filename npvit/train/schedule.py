"""Cosine learning-rate schedule with linear warm-up, per optimisation step.

This is ml-cvnets' iteration-based cosine scheduler (apple/ml-cvnets,
``optim/scheduler/cosine.py``, ``scheduler.is_iteration_based: true``), for step t = 0, 1, ...:

    t <  W:  lr = warmup_init_lr + t * (max_lr - warmup_init_lr) / W          linear warm-up
    t >= W:  lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * (t - W) / period)) / 2

with W = warmup_steps and period = total_steps - W + 1 (ml-cvnets' "+ 1": the last step,
t = total_steps - 1, lands just above min_lr rather than on it). Defaults are ml-cvnets' too
(warmup_init_lr 1e-7, min_lr 1e-5). Two differences: ml-cvnets rounds the lr to 8 decimals and
its ImageNet recipes anneal per epoch after the warm-up; here the formula is used as is, per step.

The object drives the optimiser the way torch.optim.lr_scheduler does: creating it sets every
group's lr to lr(0); ``step()``, called after ``opt.step()``, moves to the next t. With
W = 0 it equals torch's CosineAnnealingLR(T_max=period, eta_min=min_lr); with warm-up, torch's
LinearLR followed by CosineAnnealingLR (the tests check both).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import NpvitError


class WarmupCosineSchedule:
    def __init__(self, optimizer, max_lr: float, total_steps: int, warmup_steps: int = 0,
                 warmup_init_lr: float = 1e-7, min_lr: float = 1e-5):
        if not 0 <= warmup_steps < total_steps:
            raise NpvitError(f"warm-up steps must lie in [0, total steps = {total_steps}), "
                             f"got {warmup_steps}")
        self.optimizer = optimizer
        self.max_lr, self.min_lr, self.warmup_init_lr = max_lr, min_lr, warmup_init_lr
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.period = total_steps - warmup_steps + 1
        self.t = 0
        self._set_lr()

    def lr_at(self, t: int) -> float:
        """The learning rate of optimisation step t (0-based)."""
        if t < self.warmup_steps:
            lr = self.warmup_init_lr + t * (self.max_lr - self.warmup_init_lr) / self.warmup_steps
        else:
            cosine = math.cos(math.pi * (t - self.warmup_steps) / self.period)
            lr = self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1 + cosine)
        return max(0.0, lr)

    @property
    def lr(self) -> float:
        """The learning rate the next ``opt.step()`` uses."""
        return self.lr_at(self.t)

    def step(self) -> None:
        self.t += 1
        self._set_lr()

    def _set_lr(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, np.ndarray]:
        # the settings come from the constructor; only the position moves
        return {"t": np.array(self.t, dtype=np.int64)}

    def load_state_dict(self, sd: dict) -> None:
        self.t = int(np.asarray(sd["t"]))
        self._set_lr()
