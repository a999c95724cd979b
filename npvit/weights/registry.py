"""The official checkpoints (from ``manifest.json``, the one source of truth, shipped inside the
package) and the checks that tie a state dict to one of npvit's models: ``OFFICIAL`` holds the
ten ImageNet-1k classifiers, ``SEGMENTATION`` the segmentation releases, ``DETECTION`` the
SSDLite COCO detectors; ``official(name)`` finds any of them."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..errors import NpvitError


@dataclass(frozen=True)
class Checkpoint:
    """One official checkpoint: where it lives and what it should be."""
    name: str                   # npvit / timm model name
    url: str
    file_name: str
    params: int                 # parameter count of the model (segmentation: without aux head)
    top1: float | None = None   # ImageNet-1k top-1 (%) reported by ml-cvnets (classifiers)
    sha256: str | None = None   # None: unknown, not checked
    bytes: int | None = None    # None: unknown, not checked
    task: str = "classification"
    miou: float | None = None   # mIoU (%) reported by ml-cvnets (segmentation)
    map: float | None = None    # COCO val2017 box mAP@[.5:.95] (%) reported (detection)


def _load_manifest(section: str) -> dict[str, Checkpoint]:
    text = resources.files(__package__).joinpath("manifest.json").read_text()
    return {row["name"]: Checkpoint(**row) for row in json.loads(text)[section]}


OFFICIAL: dict[str, Checkpoint] = _load_manifest("checkpoints")
SEGMENTATION: dict[str, Checkpoint] = _load_manifest("segmentation")
DETECTION: dict[str, Checkpoint] = _load_manifest("detection")


def official(name: str) -> Checkpoint:
    if name in SEGMENTATION:
        return SEGMENTATION[name]
    if name in DETECTION:
        return DETECTION[name]
    if name not in OFFICIAL:
        raise NpvitError(f"no official checkpoint for {name!r}; choose one of {', '.join(OFFICIAL)} "
                         f"(segmentation: `npvit models --task segmentation`)")
    return OFFICIAL[name]


@functools.lru_cache(maxsize=None)
def expected_shapes(name: str) -> dict[str, tuple]:
    """{key: shape} of the npvit model ``name`` (building one takes well under a second)."""
    from ..models import create_model
    return {k: tuple(np.shape(v)) for k, v in create_model(name).state_dict().items()}


def _optional(key: str) -> bool:
    # BatchNorm's step counter does not affect outputs; files may lack it. So may the
    # segmentation releases' train-only aux head (the Hugging Face port drops it).
    return key.endswith("num_batches_tracked") or key.startswith("aux_head.")


def _fits(key: str, shape: tuple, expected: tuple) -> bool:
    # The classifier may have any number of classes (a fine-tuned checkpoint); only its input
    # width is fixed by the variant. Every other tensor must match exactly.
    if key == "head.fc.weight":
        return len(shape) == 2 and shape[1] == expected[1]
    if key == "head.fc.bias":
        return len(shape) == 1
    return shape == expected


def _shape(value) -> tuple:
    """The shape of an array or of a tensor not yet read (reader.StoredTensor)."""
    return tuple(value.shape)


def mismatches(state: dict, name: str) -> tuple[list, list, list]:
    """(missing, unexpected, mis-shaped) keys of ``state`` (arrays, or tensors not yet read)
    against model ``name``."""
    from ..models import MAX_CLASSES
    expected = expected_shapes(name)
    missing = [k for k in expected if k not in state and not _optional(k)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {_fmt(_shape(v))} (model: {_fmt(expected[k])})"
             for k, v in state.items() if k in expected and not _fits(k, _shape(v), expected[k])]
    if "head.fc.weight" in state and "head.fc.bias" in state and not wrong:
        rows, bias = _shape(state["head.fc.weight"])[0], _shape(state["head.fc.bias"])
        if bias[0] != rows:
            wrong.append(f"head.fc.bias {_fmt(bias)} (head.fc.weight has {rows} rows)")
        elif not 1 <= rows <= MAX_CLASSES:
            wrong.append(f"head.fc.weight {_fmt(_shape(state['head.fc.weight']))} "
                         f"(1 to {MAX_CLASSES:,} classes)")
    return missing, unexpected, wrong


def check_state(state: dict[str, np.ndarray], name: str, source: str = "checkpoint") -> None:
    """Raise one NpvitError listing every missing, unexpected and mis-shaped key."""
    missing, unexpected, wrong = mismatches(state, name)
    problems = [f"{len(items)} {what}: {_listing(items)}" for what, items in
                (("mis-shaped", wrong), ("missing", missing), ("unexpected", unexpected)) if items]
    if problems:
        raise NpvitError(f"{source} does not fit {name}: " + "; ".join(problems))


def detect_model(state: dict[str, np.ndarray], source: str = "checkpoint") -> str:
    """The variant whose keys and shapes the (npvit-named) state dict matches best.

    Exact matches win; otherwise the closest variant is returned when it shares most of its
    keys with the file, so that check_state can then say precisely what differs.
    """
    from ..models import list_models
    from .keymap_segmentation import segmentation_candidates

    def score(name):
        expected = expected_shapes(name)
        return sum(_shape(v) == expected.get(k) for k, v in state.items())

    detectors = list_models("detection") if any(k.startswith("ssd_heads.") for k in state) else []
    best = max(segmentation_candidates(state) or detectors or list_models(), key=score)
    if score(best) < 0.5 * len(expected_shapes(best)):
        raise NpvitError(f"{source} does not look like any MobileViT variant npvit knows "
                         f"(at best {score(best)} of {len(expected_shapes(best))} {best} tensors "
                         f"match); pass the model name explicitly to see what differs")
    return best


def num_parameters(state: dict[str, np.ndarray]) -> int:
    """Parameters only: BatchNorm running statistics and step counters are buffers."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return int(sum(np.prod(_shape(v), dtype=np.int64) for k, v in state.items()
                   if not k.endswith(buffers)))


def _fmt(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _listing(items: list, limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
