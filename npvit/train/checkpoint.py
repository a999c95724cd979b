"""Training checkpoints: model, optimiser and schedule state in one .npz, written atomically.

One flat npz holds ``model/<state_dict key>`` (parameters and buffers, so BatchNorm running
statistics resume too), ``optimizer/<key>``, ``schedule/<key>`` and ``meta/<key>`` for small
values the caller wants back (epoch, best accuracy, ...). Everything is a plain array, so the
file loads with ``allow_pickle=False``.

The file is written to a temporary name in the same directory, flushed to disk and then moved
over the target with ``os.replace``, which is atomic: a crash mid-write leaves the previous
checkpoint intact rather than a truncated one.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..errors import NpvitError

_SECTIONS = ("model", "optimizer", "schedule", "meta")


def save_checkpoint(path, model, optimizer=None, schedule=None, **meta) -> None:
    """Write model (+ optimizer, schedule and ``meta`` values) to ``path`` atomically."""
    arrays = {f"model/{k}": np.asarray(v) for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    if schedule is not None:
        arrays.update({f"schedule/{k}": v for k, v in schedule.state_dict().items()})
    for k, v in meta.items():
        v = np.asarray(v)
        if v.dtype == object:
            raise NpvitError(f"checkpoint value {k!r} must be a number, string or array")
        arrays[f"meta/{k}"] = v

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_sections(path: str) -> dict[str, dict]:
    if not os.path.isfile(path):
        raise NpvitError(f"checkpoint not found: {path}")
    sections: dict[str, dict] = {s: {} for s in _SECTIONS}
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise NpvitError(f"{path} is not an npvit training checkpoint ({e})") from None
    with npz:
        for key in npz.files:
            section, _, name = key.partition("/")
            if section not in sections:
                raise NpvitError(f"{path} is not an npvit training checkpoint (key {key!r})")
            sections[section][name] = npz[key]
    return sections


def _python_values(meta: dict) -> dict:
    # 0-d arrays become Python scalars (str, int, float, bool); arrays stay arrays
    return {k: v.item() if v.ndim == 0 else v for k, v in meta.items()}


def checkpoint_meta(path) -> dict:
    """Only the ``meta`` values of a checkpoint: what a caller needs to rebuild the model and
    optimiser before ``load_checkpoint`` can fill them."""
    path = os.fspath(path)
    return _python_values(_read_sections(path)["meta"])


def load_checkpoint(path, model, optimizer=None, schedule=None) -> dict:
    """Restore what ``save_checkpoint`` wrote into the given objects (the model strictly).

    Returns the ``meta`` values (0-d arrays become Python scalars).
    """
    path = os.fspath(path)
    sections = _read_sections(path)
    try:
        model.load_state_dict(sections["model"], strict=True)
    except ValueError as e:
        raise NpvitError(f"{path}: {e}") from None
    for obj, section in ((optimizer, "optimizer"), (schedule, "schedule")):
        if obj is not None:
            if not sections[section]:
                raise NpvitError(f"{path} holds no {section} state")
            obj.load_state_dict(sections[section])
    return _python_values(sections["meta"])
