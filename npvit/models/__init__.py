"""Model registry: ``list_models(task)`` and ``create_model(name, ...)``."""
from __future__ import annotations

import numpy as np

from ..errors import NpvitError
from . import mobilevit, mobilevit_v2, segmentation, ssdlite
from .backbone import MobileViTBackbone
from .network import MobileViTNet
from .segmentation import SegmentationModel

_BUILDERS = {**{n: mobilevit.build for n in mobilevit.CONFIGS},
             **{n: mobilevit_v2.build for n in mobilevit_v2.WIDTHS}}

# Model names by task, each in release order.
TASKS = {"classification": list(_BUILDERS), "segmentation": list(segmentation.RELEASES),
         "detection": list(ssdlite.RELEASES)}


def list_models(task: str = "classification") -> list[str]:
    """The names of ``task``: "classification" (the ten ImageNet variants, v1 first),
    "segmentation" (the ml-cvnets DeepLabv3 / PSPNet releases), "detection" (the SSDLite
    COCO releases) or "all"."""
    if task == "all":
        return [name for names in TASKS.values() for name in names]
    if task not in TASKS:
        raise NpvitError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}, all")
    return list(TASKS[task])


def create_model(name: str | None = None, num_classes: int | None = None, pretrained=False,
                 dtype=np.float32, drop_rate: float = 0.0, seed: int | None = None):
    """Build a model with random weights (PyTorch's default initialisation).

    pretrained: False; True for the official ImageNet-1k weights (from the cache, downloaded
    once); or a path to a checkpoint (.pt/.pth, .safetensors, .npz). A model file written by
    ``npvit finetune`` names its variant and classes (npvit.weights.meta): ``name`` may then be
    left out (if given, it must agree), and ``model.meta`` holds the file's description
    (``model.meta["classes"]``: the class names). num_classes: default 1000, or the
    checkpoint's number of classes; a different number keeps the pretrained backbone and
    starts the classifier afresh (as timm does). drop_rate: dropout before the classifier in
    training (timm's default 0.0; ml-cvnets trained v1 with 0.1). seed: makes the random
    initialisation reproducible. Segmentation releases (``list_models("segmentation")``) take
    the same arguments; their num_classes defaults to the release's classes. Detection
    releases (``list_models("detection")``) take pretrained, dtype and seed (81 COCO classes).
    """
    if name in segmentation.RELEASES or name in ssdlite.RELEASES:
        _check_arguments(1 if num_classes is None else num_classes, dtype, drop_rate, seed)
    if name in segmentation.RELEASES:
        return segmentation.create(name, num_classes, pretrained, dtype, drop_rate, seed)
    if name in ssdlite.RELEASES:
        return ssdlite.create(name, pretrained, dtype, seed)
    state, meta = None, None
    if pretrained and pretrained is not True:
        from ..weights import load_model_file
        loaded = load_model_file(pretrained, name)
        name, state, meta = loaded.model, loaded.state, loaded.meta
    if name is None:
        raise NpvitError("create_model needs a model name (or pretrained=PATH to a model file "
                         "that names its model)")
    if name not in _BUILDERS:
        raise NpvitError(f"unknown model {name!r}; choose one of {', '.join(list_models('all'))}")
    if pretrained is True:
        from ..weights import load_pretrained
        state = load_pretrained(name, True)
    file_classes = None if state is None else state["head.fc.bias"].shape[0]
    num_classes = num_classes if num_classes is not None else (file_classes or 1000)
    _check_arguments(num_classes, dtype, drop_rate, seed)
    if seed is not None:
        from ..nn.init import manual_seed
        manual_seed(seed)
    model = _BUILDERS[name](name, num_classes=num_classes, drop_rate=drop_rate, dtype=dtype)
    if state is not None:
        if num_classes != file_classes:
            # A new task: keep the pretrained backbone, start the classifier afresh (as timm does).
            state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
            missing_ok = {"head.fc.weight", "head.fc.bias"}
            model.load_state_dict({**{k: model.state_dict()[k] for k in missing_ok}, **state})
        else:
            model.load_state_dict(state)
            model.meta = meta
    return model


# The most classes a head may have: ImageNet-21k has 21 841; 10**12 would ask for terabytes.
MAX_CLASSES = 100_000


def _check_arguments(num_classes, dtype, drop_rate, seed) -> None:
    """One NpvitError line for arguments no network can be built with."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or not 1 <= num_classes <= MAX_CLASSES:
        raise NpvitError(f"num_classes must be an integer from 1 to {MAX_CLASSES:,}, "
                         f"got {num_classes!r}")
    try:
        floating = np.dtype(dtype) in (np.float32, np.float64)
    except TypeError:
        floating = False
    if not floating:
        raise NpvitError(f"dtype must be float32 or float64, got {dtype!r}")
    if not (isinstance(drop_rate, (int, float)) and 0 <= drop_rate < 1):
        raise NpvitError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise NpvitError(f"seed must be a non-negative integer, got {seed!r}")
