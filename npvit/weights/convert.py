"""Any supported checkpoint -> an npvit state dict (timm names, checked against the model), and
the ``.npz`` files npvit keeps them in."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .keymap import to_npvit_names
from .keymap_detection import detector_names
from .reader import read_checkpoint
from .registry import check_state, detect_model


@dataclass
class Converted:
    model: str                      # npvit model name
    layout: str                     # the file's layout: 'cvnets', 'hf' or 'timm'
    state: dict[str, np.ndarray]    # npvit key names, float32 floats


def convert_checkpoint(path, model: str | None = None) -> Converted:
    """Read ``path``, rename its keys to npvit's, find (or take) the model, check it strictly."""
    state = read_checkpoint(path)
    layout, state = detector_names(state) or to_npvit_names(state)
    model = model or detect_model(state, source=str(path))
    check_state(state, model, source=str(path))
    # float32 is what the official files hold and what the models compute in by default
    state = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in state.items()}
    return Converted(model, layout, state)


def save_npz(state: dict[str, np.ndarray], path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, renamed into
    place only once complete, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **state)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
