"""Optimisers: SGD (momentum, Nesterov) and AdamW, updating npvit Parameters in place.

An optimiser holds parameter groups. A group is a dict with ``params``, a list of
``(name, Parameter)`` pairs, plus its own hyper-parameters (``lr``, ``weight_decay``, ...).
Names make the state dict readable and let it be checked against the model it is loaded into.
The loop they are written for:

    loss, cache = F.cross_entropy_forward(model(x), y, label_smoothing=0.1)
    model.zero_grad()
    model.backward(F.cross_entropy_backward(cache))
    clip_grad_norm(model.parameters(), max_norm=10.0)
    opt.step()
    sched.step()

Each ``step`` follows the update that torch.optim.SGD / torch.optim.AdamW perform (their
documented algorithms), so the tests can compare the two step for step. As in PyTorch, a
parameter whose ``grad`` is None (it took no part in the backward pass) is skipped and gets no
state.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import NpvitError
from ..nn.module import Parameter


def weight_decay_groups(named_parameters: Iterable[tuple[str, Parameter]], weight_decay: float,
                        no_decay_bn_filter_bias: bool = True) -> list[dict]:
    """Split parameters into a group with weight decay and one without, as ml-cvnets does.

    ml-cvnets (apple/ml-cvnets, ``cvnets/misc/common.py``, ``parameter_list``, read at tag
    cvnets-v0.4; ``optim/__init__.py`` ``build_optimizer`` passes it the option) sends every
    parameter with ``len(param.shape) == 1`` to a group with weight_decay 0.0 when the option
    ``optim.no_decay_bn_filter_bias`` is set: "biases and normalization layer parameters are of
    len 1". So the test is the number of dimensions, not the name — BatchNorm, LayerNorm and
    GroupNorm scales and shifts and every bias are 1-D; conv and linear weights are not. The
    decayed group comes first and the other is added only when it is not empty, as there.
    (The MobileViTv2 ImageNet recipe sets the option; the v1 recipe does not.)
    """
    with_decay, without_decay = [], []
    for name, p in named_parameters:
        if no_decay_bn_filter_bias and p.data.ndim == 1:
            without_decay.append((name, p))
        else:
            with_decay.append((name, p))
    groups = [{"params": with_decay, "weight_decay": weight_decay}]
    if without_decay:
        groups.append({"params": without_decay, "weight_decay": 0.0})
    return groups


class Optimizer:
    """Parameter groups, per-parameter state and the state dict; subclasses write ``_update``.

    ``params`` is either an iterable of ``(name, Parameter)`` pairs (one group), such as
    ``model.named_parameters()``, or a list of group dicts as ``weight_decay_groups`` returns.
    Keyword arguments are the defaults for every group that does not set its own.
    """

    # the hyper-parameters a group carries, with their defaults; set by each subclass
    defaults: dict = {}
    # the names of the per-parameter state arrays, e.g. ("momentum_buffer",)
    state_names: tuple = ()

    def __init__(self, params, **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise NpvitError(f"{type(self).__name__} has no option {', '.join(sorted(unknown))}")
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        seen = set()
        for group in groups:
            group = {**self.defaults, **hyper, **group, "params": list(group["params"])}
            for name, p in group["params"]:
                if name in seen:
                    raise NpvitError(f"parameter {name!r} appears in more than one group")
                seen.add(name)
                if not isinstance(p, Parameter):
                    raise NpvitError(f"{name!r} is not an npvit Parameter; pass "
                                     "model.named_parameters() or weight_decay_groups(...)")
            self.param_groups.append(group)
        # name -> {state name -> array}; created on a parameter's first update
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            for name, p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, self.state.setdefault(name, {}), group)

    def _update(self, p: Parameter, grad: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for _, p in group["params"]:
                p.grad = None

    # --- state dict: flat name -> ndarray, so it can go straight into an .npz ------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """``groups.<i>.<hyper>`` (0-d arrays), ``groups.<i>.params`` (the names, a string
        array) and ``state.<param name>.<state name>`` (copies of the state arrays)."""
        out = {}
        for i, group in enumerate(self.param_groups):
            out[f"groups.{i}.params"] = np.array([name for name, _ in group["params"]], dtype=str)
            for key in self.defaults:
                out[f"groups.{i}.{key}"] = np.asarray(group[key])
        for name, state in self.state.items():
            for key, value in state.items():
                out[f"state.{name}.{key}"] = np.array(value, copy=True)
        return out

    def load_state_dict(self, sd: dict) -> None:
        """Restore hyper-parameters and state written by ``state_dict`` of an optimiser of the
        same kind over the same parameters (names and groups must agree)."""
        n_saved = len({k.split(".")[1] for k in sd if k.startswith("groups.")})
        if n_saved != len(self.param_groups):
            raise NpvitError(f"optimizer state has {n_saved} parameter groups, "
                             f"this {type(self).__name__} has {len(self.param_groups)}")
        missing = [f"groups.{i}.{key}" for i in range(n_saved) for key in self.defaults
                   if f"groups.{i}.{key}" not in sd]
        if missing:
            raise NpvitError(f"optimizer state was not written by {type(self).__name__} "
                             f"(no {', '.join(missing[:3])})")
        shapes = {}
        for i, group in enumerate(self.param_groups):
            names = [name for name, _ in group["params"]]
            saved = [str(s) for s in np.asarray(sd[f"groups.{i}.params"]).reshape(-1)]
            if saved != names:
                raise NpvitError(f"optimizer state group {i} holds other parameters than this "
                                 f"optimizer (first differences: "
                                 f"{sorted(set(saved) ^ set(names))[:5]})")
            shapes.update({name: p.data.shape for name, p in group["params"]})
        new_state: dict[str, dict[str, np.ndarray]] = {}
        for key, value in sd.items():
            if not key.startswith("state."):
                continue
            name, state_name = key[len("state."):].rsplit(".", 1)
            if name not in shapes or state_name not in self.state_names:
                raise NpvitError(f"optimizer state entry {key!r} does not fit "
                                 f"this {type(self).__name__}")
            value = np.asarray(value)
            if state_name != "step" and value.shape != shapes[name]:
                raise NpvitError(f"optimizer state {key!r} has shape {value.shape}, "
                                 f"the parameter has {shapes[name]}")
            new_state.setdefault(name, {})[state_name] = np.array(value, copy=True)
        for i, group in enumerate(self.param_groups):
            for key in self.defaults:
                saved = np.asarray(sd[f"groups.{i}.{key}"])
                group[key] = type(self.defaults[key])(saved.item()) if saved.ndim == 0 \
                    else tuple(saved.tolist())
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and Nesterov momentum (torch.optim.SGD without
    dampening). Weight decay here is *coupled* L2: ``wd * param`` is added to the gradient before
    momentum, exactly as torch.optim.SGD does it.

        g = grad + wd * param
        b = g                      on the first step
        b = momentum * b + g       afterwards
        update = g + momentum * b  (Nesterov)   or   b   (plain momentum)
        param -= lr * update
    """

    defaults = {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    state_names = ("momentum_buffer",)

    def __init__(self, params, **hyper):
        super().__init__(params, **hyper)
        for group in self.param_groups:
            if group["nesterov"] and group["momentum"] <= 0:
                raise NpvitError("Nesterov momentum needs momentum > 0")

    def _update(self, p, grad, state, group):
        wd, momentum = group["weight_decay"], group["momentum"]
        g = grad + wd * p.data if wd != 0 else grad
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, copy=True)
            else:
                buf *= momentum
                buf += g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as torch.optim.AdamW:

        param *= 1 - lr * wd                       (decay, not through the gradient)
        m = beta1 * m + (1 - beta1) * g            first moment
        v = beta2 * v + (1 - beta2) * g^2          second moment
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)    bias correction, t = 1, 2, ...
        param -= lr * m_hat / (sqrt(v_hat) + eps)

    eps is added after the square root of the bias-corrected v, as PyTorch does. Defaults are
    PyTorch's (the MobileViT recipes use betas (0.9, 0.999) and weight decay 0.01 or 0.05).
    """

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    state_names = ("step", "exp_avg", "exp_avg_sq")

    def _update(self, p, grad, state, group):
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        if "step" not in state:
            state["step"] = np.array(0, dtype=np.int64)
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] = state["step"] + 1
        t = int(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]

        p.data *= 1 - lr * wd
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        step_size = lr / (1 - beta1 ** t)
        denom = np.sqrt(v) / np.sqrt(1 - beta2 ** t) + eps
        p.data -= step_size * m / denom
