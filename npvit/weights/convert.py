"""Any supported checkpoint -> an npvit state dict (timm names, checked against the model), and
the ``.npz`` files npvit keeps them in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NpvitError
from ..outputs import write_atomically
from .keymap import to_npvit_names
from .keymap_detection import detector_names
from .reader import materialise, open_checkpoint
from .registry import check_state, detect_model


@dataclass
class Converted:
    model: str                      # npvit model name
    layout: str                     # the file's layout: 'cvnets', 'hf' or 'timm'
    state: dict[str, np.ndarray]    # npvit key names, float32 floats


def convert_checkpoint(path, model: str | None = None) -> Converted:
    """Read ``path``, rename its keys to npvit's, find (or take) the model, check it strictly.
    Names, shapes and dtypes are checked before any tensor is read, values (finite) after."""
    with open_checkpoint(path) as tensors:
        check_dtypes(tensors, path)
        try:
            layout, state = detector_names(tensors) or to_npvit_names(tensors)
        except NpvitError as e:
            raise NpvitError(f"{path}: {e}") from None
        model = model or detect_model(state, source=str(path))
        check_state(state, model, source=str(path))
        state = materialise(state, path)
    check_finite(state, path)
    # float32 is what the official files hold and what the models compute in by default
    state = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in state.items()}
    return Converted(model, layout, state)


def check_dtypes(tensors: dict, path) -> None:
    """Weights are real floating point (BatchNorm's step counter an integer): refuse complex,
    string, datetime, structured ... tensors by what they are."""
    for key, tensor in tensors.items():
        dtype = np.dtype(tensor.dtype)
        if key.endswith("num_batches_tracked") and dtype.kind in "iub":
            continue
        if dtype.kind != "f":
            raise NpvitError(f"{path}: unsupported dtype {dtype} in {key[:200]} "
                             f"(npvit reads floating-point weights)")


def check_finite(state: dict[str, np.ndarray], path) -> None:
    for key, value in state.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise NpvitError(f"{path}: non-finite values in {key} (NaN or Inf); the weights are "
                             "damaged or come from a diverged training run")


def save_npz(state: dict[str, np.ndarray], path) -> Path:
    """Write ``state`` to ``path`` atomically (npvit.outputs.write_atomically): a reader never
    sees half a file."""
    return write_atomically(path, lambda f: np.savez(f, **state))
