"""Model registry: ``list_models(task)`` and ``create_model(name, ...)``."""
from __future__ import annotations

import numpy as np

from ..errors import NpvitError
from . import mobilevit, mobilevit_v2, segmentation
from .backbone import MobileViTBackbone
from .network import MobileViTNet
from .segmentation import SegmentationModel

_BUILDERS = {**{n: mobilevit.build for n in mobilevit.CONFIGS},
             **{n: mobilevit_v2.build for n in mobilevit_v2.WIDTHS}}

# Model names by task, each in release order.
TASKS = {"classification": list(_BUILDERS), "segmentation": list(segmentation.RELEASES)}


def list_models(task: str = "classification") -> list[str]:
    """The names of ``task``: "classification" (the ten ImageNet variants, v1 first),
    "segmentation" (the ml-cvnets DeepLabv3 / PSPNet releases) or "all"."""
    if task == "all":
        return [name for names in TASKS.values() for name in names]
    if task not in TASKS:
        raise NpvitError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}, all")
    return list(TASKS[task])


def create_model(name: str, num_classes: int | None = None, pretrained=False, dtype=np.float32,
                 drop_rate: float = 0.0, seed: int | None = None):
    """Build a model with random weights (PyTorch's default initialisation).

    pretrained: False; True for the official weights (from the cache, downloaded once); or a
    path to a checkpoint (.pt/.pth, .safetensors, .npz). num_classes: default 1000 for the
    classifiers, the release's classes for segmentation; another number gives a fresh
    classifier. drop_rate: dropout before the classifier in training (timm's default 0.0;
    ml-cvnets trained v1 with 0.1); classifiers only. seed: makes the initialisation
    reproducible.
    """
    if name in segmentation.RELEASES:
        return segmentation.create(name, num_classes, pretrained, dtype, drop_rate, seed)
    if name not in _BUILDERS:
        raise NpvitError(f"unknown model {name!r}; choose one of {', '.join(list_models('all'))}")
    num_classes = 1000 if num_classes is None else num_classes
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
