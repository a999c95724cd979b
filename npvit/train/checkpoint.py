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
import zipfile
import zlib

import numpy as np

from ..errors import NpvitError
from ..outputs import write_atomically

_SECTIONS = ("model", "optimizer", "schedule", "meta")


def checkpoint_arrays(model, optimizer=None, schedule=None, **meta) -> dict[str, np.ndarray]:
    """The flat arrays of a checkpoint (``model/...``, ``optimizer/...``, ``schedule/...``,
    ``meta/...``), as ``save_checkpoint`` writes them."""
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
    return arrays


def save_checkpoint(path, model, optimizer=None, schedule=None, **meta) -> None:
    """Write model (+ optimizer, schedule and ``meta`` values) to ``path`` atomically."""
    arrays = checkpoint_arrays(model, optimizer, schedule, **meta)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _read_sections(path: str) -> dict[str, dict]:
    if not os.path.exists(path):
        raise NpvitError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise NpvitError(f"checkpoint {path} is not a regular file")
    sections: dict[str, dict] = {s: {} for s in _SECTIONS}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                section, _, name = key.partition("/")
                if section not in sections:
                    raise NpvitError(f"{path} is not an npvit training checkpoint "
                                     f"(key {key[:80]!r})")
                sections[section][name] = npz[key]
    except NpvitError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # truncated, CRC-damaged or not an npz at all
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise NpvitError(f"{path} is not a readable npvit training checkpoint "
                         f"({reason})") from None
    if not sections["model"] or not sections["meta"]:
        raise NpvitError(f"{path} is not an npvit training checkpoint (no "
                         f"{'model' if not sections['model'] else 'meta'} entries)")
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
            try:
                obj.load_state_dict(sections[section])
            except (KeyError, ValueError, IndexError) as e:
                raise NpvitError(f"{path}: its {section} state does not fit ({e})") from None
    return _python_values(sections["meta"])
