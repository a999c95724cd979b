"""Model registry: ``list_models()`` and ``create_model(name, ...)``."""
from __future__ import annotations

import numpy as np

from ..errors import NpvitError
from . import mobilevit, mobilevit_v2, ssdlite
from .backbone import MobileViTBackbone
from .network import MobileViTNet

_BUILDERS = {**{n: mobilevit.build for n in mobilevit.CONFIGS},
             **{n: mobilevit_v2.build for n in mobilevit_v2.WIDTHS}}


# Dense-prediction releases by task; each is built by its module's build(name, dtype).
_TASKS = {"classification": list(_BUILDERS), "detection": list(ssdlite.RELEASES)}


def list_models(task: str | None = None) -> list[str]:
    """Model names: the ten classifiers (v1 first), then the detectors; ``task`` picks one
    kind ("classification", "detection")."""
    if task is None:
        return [name for names in _TASKS.values() for name in names]
    if task not in _TASKS:
        raise NpvitError(f"unknown task {task!r}; choose one of {', '.join(_TASKS)}")
    return list(_TASKS[task])


def create_model(name: str, num_classes: int = 1000, pretrained=False, dtype=np.float32,
                 drop_rate: float = 0.0, seed: int | None = None) -> MobileViTNet:
    """Build a variant with random weights (PyTorch's default initialisation).

    pretrained: False; True for the official ImageNet-1k weights (from the cache, downloaded
    once); or a path to a checkpoint (.pt/.pth, .safetensors, .npz). drop_rate: dropout before
    the classifier in training (timm's default 0.0; ml-cvnets trained v1 with 0.1).
    seed: makes the random initialisation reproducible.
    """
    if name in ssdlite.RELEASES:
        return _create_detector(name, pretrained, dtype, seed)
    if name not in _BUILDERS:
        raise NpvitError(f"unknown model {name!r}; choose one of {', '.join(_BUILDERS)}")
    if seed is not None:
        from ..nn.init import manual_seed
        manual_seed(seed)
    model = _BUILDERS[name](name, num_classes=num_classes, drop_rate=drop_rate, dtype=dtype)
    if pretrained:
        from ..weights import load_pretrained
        state = load_pretrained(name, pretrained)
        if num_classes != state["head.fc.bias"].shape[0]:
            # A new task: keep the pretrained backbone, start the classifier afresh (as timm does).
            state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
            missing_ok = {"head.fc.weight", "head.fc.bias"}
            model.load_state_dict({**{k: model.state_dict()[k] for k in missing_ok}, **state})
        else:
            model.load_state_dict(state)
    return model


def _create_detector(name, pretrained, dtype, seed):
    """An SSDLite release; pretrained: True (official weights from the cache) or a path."""
    if seed is not None:
        from ..nn.init import manual_seed
        manual_seed(seed)
    model = ssdlite.build(name, dtype=dtype)
    if pretrained:
        from ..weights import load_pretrained
        model.load_state_dict(load_pretrained(name, pretrained))
    return model
