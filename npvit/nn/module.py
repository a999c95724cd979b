"""Module: the small stateful shell around the functional ops.

A Module owns Parameters (an array ``data`` and its gradient ``grad``), buffers (arrays that
are state but not trained, such as BatchNorm's running statistics) and child Modules. Setting
an attribute to one of these registers it under that attribute's name, so the dotted names of
``state_dict()`` come straight from the attribute names (``stages.2.1.conv_kxk.bn.weight``),
the same way PyTorch names them — that is what lets a timm state_dict load 1:1.

The contract every layer follows:
    y  = layer.forward(x)     computes y and keeps the cache backward needs (unless no_grad)
    dx = layer.backward(dy)   returns dL/dx and ADDS dL/dparam into each param.grad
Gradients accumulate like PyTorch's; call ``zero_grad()`` between steps.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..errors import NpvitError

# Per thread, like torch's: images run in a thread pool (npvit.set_num_threads), and one thread
# leaving its no_grad block must not switch gradients back on under another thread's forward.
_grad = threading.local()


@contextlib.contextmanager
def no_grad():
    """Inside this block layers keep no caches, so activations are freed as soon as the next
    layer has used them (inference memory like PyTorch's no_grad); backward is unavailable.
    It applies to the thread that enters it."""
    previous, _grad.enabled = is_grad_enabled(), False
    try:
        yield
    finally:
        _grad.enabled = previous


def is_grad_enabled() -> bool:
    return getattr(_grad, "enabled", True)


class Parameter:
    """A trainable array and its accumulated gradient (None until a backward pass)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data)
        self.grad: np.ndarray | None = None

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g: np.ndarray) -> None:
        if self.grad is None:
            self.grad = np.array(g, dtype=self.data.dtype, copy=True)
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)

    # --- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails: buffers live in _buffers
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        self._buffers[name] = value

    # --- the forward/backward contract ----------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def save_cache(self, cache) -> None:
        """Keep what backward needs, unless inside ``no_grad()``."""
        self._cache = cache if is_grad_enabled() else None

    def pop_cache(self):
        """The cache of the last forward; backward frees it so memory does not pile up."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward "
                               "(or the forward ran under no_grad)")
        self._cache = None
        return cache

    # --- traversal ----------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = ""):
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # --- modes and grads ----------------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype):
        """Cast every floating parameter and buffer to dtype (float32 or float64), in place."""
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = None
            for k, b in m._buffers.items():
                if np.issubdtype(b.dtype, np.floating):
                    m._buffers[k] = b.astype(dtype)
        return self

    @property
    def dtype(self):
        p = next(self.parameters(), None)
        return np.float32 if p is None else p.data.dtype

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and buffers by dotted name, in registration order (timm's key order)."""
        out = OrderedDict()
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                out[pre + name] = p.data
            for name, b in mod._buffers.items():
                out[pre + name] = b
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers, casting to each one's dtype.

        Raises one NpvitError (a ValueError; the CLI prints it as one line) listing every
        missing, unexpected (both only when strict) and mis-shaped key, and never loads part
        of a mismatched state dict.
        """
        targets = {}
        for mod_name, mod in self.named_modules():
            pre = f"{mod_name}." if mod_name else ""
            for name in mod._parameters:
                targets[pre + name] = (mod, name, True)
            for name in mod._buffers:
                targets[pre + name] = (mod, name, False)
        # num_batches_tracked only counts training steps; files without it are fine.
        missing = [k for k in targets if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in targets]
        wrong = []
        for k, (mod, name, is_param) in targets.items():
            if k in state:
                have = mod._parameters[name].data.shape if is_param else np.shape(mod._buffers[name])
                got = np.shape(state[k])
                if tuple(have) != tuple(got):
                    wrong.append(f"{k}: expected {tuple(have)}, got {tuple(got)}")
        problems = []
        if wrong:
            problems.append(f"{len(wrong)} mis-shaped: " + "; ".join(wrong[:10])
                            + (" ..." if len(wrong) > 10 else ""))
        if strict and missing:
            problems.append(f"{len(missing)} missing: " + ", ".join(missing[:10])
                            + (" ..." if len(missing) > 10 else ""))
        if strict and unexpected:
            problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:10])
                            + (" ..." if len(unexpected) > 10 else ""))
        if problems:
            raise NpvitError(f"state dict does not fit {type(self).__name__}: " + " | ".join(problems))
        for k, (mod, name, is_param) in targets.items():
            if k not in state:
                continue
            value = np.asarray(state[k])
            if is_param:
                p = mod._parameters[name]
                p.data = value.astype(p.data.dtype, copy=True)
            else:
                old = mod._buffers[name]
                mod._buffers[name] = value.astype(np.asarray(old).dtype, copy=True)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


class Sequential(Module):
    """Children named 0, 1, 2, ...; forward runs them in order, backward in reverse."""

    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for layer in self._modules.values():
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self._modules.values()):
            dy = layer.backward(dy)
        return dy


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
