"""Model files that say what they are: a plain ``.npz`` (``np.savez``, no pickle) holding the
state dict's arrays plus one reserved entry, ``npvit_meta``, a 0-d unicode array whose text is
JSON such as

    {"format": 1, "task": "classification", "model": "mobilevitv2_050", "num_classes": 4,
     "classes": ["cross", "disc", "square", "triangle"], "input_size": 64,
     "preprocess": "cvnets-v2"}

so `npvit predict`, `eval`, `scoremap` and ``create_model(pretrained=PATH)`` can use a
fine-tuned model with no extra flags: which variant to build, how many outputs it has, what
they are called, and how its images were prepared ("preprocess" is an npvit.data pipeline
name, "input_size" the side of the square network input it was trained at).

``read_checkpoint`` never returns ``npvit_meta`` as a weight; ``read_model_meta`` reads it (and
only it: the weights are not loaded). Files without it (official checkpoints, ``npvit convert``
output, a plain ``np.savez(**state_dict)``) give None. ``load_model_file`` reads both, for the
model builders (``create_model(pretrained=PATH)``, ``npvit.inference.load_model``).

Optional key: "resize_size", the short side images are resized to before the centre crop
(default input_size + 32, the ml-cvnets convention that npvit.data.preprocess follows).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NpvitError
from ..outputs import write_atomically
from .convert import convert_checkpoint
from .reader import check_regular_file

META_KEY = "npvit_meta"
FORMAT = 1
TASKS = ("classification",)
# a generous bound on the JSON text, so a hostile file cannot make us parse megabytes
MAX_META_CHARS = 1 << 20


def model_meta(model: str, classes, input_size: int, preprocess: str,
               task: str = "classification", resize_size: int | None = None) -> dict:
    """The meta dict for a classifier over ``classes`` (checked as `write_model_npz` does)."""
    meta = {"format": FORMAT, "task": task, "model": model, "num_classes": len(classes),
            "classes": [str(c) for c in classes], "input_size": int(input_size),
            "preprocess": preprocess}
    if resize_size is not None:
        meta["resize_size"] = int(resize_size)
    return check_meta(meta)


def check_meta(meta, source: str = "model meta") -> dict:
    """``meta`` if it is a well-formed format-1 meta dict, else one NpvitError saying what is
    wrong. Checks structure only; whether the model and pipeline exist is the loader's job."""
    def bad(problem):
        return NpvitError(f"{source}: {problem}")

    if not isinstance(meta, dict):
        raise bad(f"{META_KEY} must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise bad(f"{META_KEY} has format {meta.get('format')!r}; this npvit reads format "
                  f"{FORMAT} (a newer npvit may have written it)")
    if meta.get("task") not in TASKS:
        raise bad(f"task {meta.get('task')!r} is not one of {', '.join(TASKS)}")
    for key, kind in (("model", str), ("num_classes", int), ("classes", list),
                      ("input_size", int), ("preprocess", str)):
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f"{META_KEY} needs {key!r} as a JSON {kind.__name__}, got {value!r:.60}")
    classes = meta["classes"]
    if meta["num_classes"] < 1 or len(classes) != meta["num_classes"]:
        raise bad(f"num_classes is {meta['num_classes']} but {len(classes)} class names are given")
    if not all(isinstance(c, str) and c for c in classes):
        raise bad("every class name must be a non-empty string")
    # names are printed one per line and used as folder names: no control characters
    odd = next((c for c in classes if not c.isprintable() or len(c) > 200), None)
    if odd is not None:
        raise bad(f"class name {odd[:40]!r} has control characters or is over 200 characters")
    if len(set(classes)) != len(classes):
        raise bad("the class names are not unique")
    if meta["input_size"] < 1:
        raise bad(f"input_size must be positive, got {meta['input_size']}")
    resize = meta.get("resize_size")
    if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool)
                               or resize < meta["input_size"]):
        raise bad(f"resize_size must be an integer >= input_size, got {resize!r:.60}")
    return meta


def write_model_npz(path, state_dict: dict, meta: dict) -> Path:
    """Write ``state_dict`` and ``meta`` to ``path`` atomically (npvit.outputs.write_atomically:
    a temporary file in the same folder, renamed into place once complete)."""
    path = Path(path)
    check_meta(meta)
    if META_KEY in state_dict:
        raise NpvitError(f"the state dict has a tensor named {META_KEY!r}, a reserved name")
    head = state_dict.get("head.fc.bias")
    if head is not None and np.shape(head)[0] != meta["num_classes"]:
        raise NpvitError(f"the classifier has {np.shape(head)[0]} outputs but the meta names "
                         f"{meta['num_classes']} classes")
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    odd = [k for k, v in arrays.items() if v.dtype.kind not in "biuf"]
    if odd:   # np.savez would pickle an object array, which readers (rightly) refuse
        raise NpvitError(f"{odd[0]} is not a numeric array ({arrays[odd[0]].dtype})")
    arrays[META_KEY] = np.array(json.dumps(meta))
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def read_model_meta(path) -> dict | None:
    """The checked meta dict of an npvit model file, or None for any file without one."""
    path = Path(path)
    check_regular_file(path, "checkpoint")   # missing, a directory, FIFO or device: by name
    with open(path, "rb") as f:
        if f.read(2) != b"PK":        # not a zip, so not an .npz
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(META_KEY + ".npy")
            except KeyError:
                return None
            # checked before reading: the stored size is what decompression would produce
            if info.file_size > 4 * MAX_META_CHARS + 1024:
                raise NpvitError(f"{path}: {META_KEY} is {info.file_size:,} bytes, more than "
                                 f"a model's description can need")
            with archive.open(info) as f:
                entry = np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise NpvitError(f"{path}: cannot read its {META_KEY} ({e})") from None
    if entry.shape != () or entry.dtype.kind != "U":
        raise NpvitError(f"{path}: {META_KEY} must be a 0-d unicode array (JSON text), got "
                         f"{entry.dtype} of shape {entry.shape}")
    try:
        meta = json.loads(str(entry))
    except ValueError as e:
        raise NpvitError(f"{path}: {META_KEY} is not valid JSON ({e})") from None
    return check_meta(meta, source=str(path))


@dataclass
class ModelFile:
    """A checkpoint read for building a model: what `load_model_file` returns."""
    model: str                      # npvit model name
    layout: str                     # the file's key layout: 'cvnets', 'hf' or 'timm'
    state: dict[str, np.ndarray]    # npvit names, checked against ``model``
    meta: dict | None               # the file's npvit_meta, None when it has none

    @property
    def num_classes(self) -> int:
        bias = self.state.get("head.fc.bias")
        if bias is None:                              # a segmentation model's classifier
            bias = self.state["head.classifier.bias"]
        return int(bias.shape[0])


def load_model_file(path, model: str | None = None) -> ModelFile:
    """Read any checkpoint npvit reads, with its meta when it has one. ``model`` None: the
    variant named by the meta, else detected from the keys and shapes. A file of another
    variant than ``model`` is one line saying which it holds."""
    from ..models import list_models
    meta = read_model_meta(path)
    if meta is not None:
        if meta["model"] not in list_models():
            raise NpvitError(f"{path}: its {META_KEY} names the model {meta['model']!r}, which "
                             f"this npvit does not know")
        if model is not None and model != meta["model"]:
            raise NpvitError(f"{path} is a {meta['model']} model ({meta['num_classes']} classes), "
                             f"not {model}")
        model = meta["model"]
    try:
        converted = convert_checkpoint(path, model=model)
    except NpvitError:
        if model is None or meta is not None:
            raise
        holds = _detected(path)
        if holds is not None and holds != model:
            raise NpvitError(f"{path} holds {holds} weights, not {model}") from None
        raise
    if meta is not None:
        rows = int(converted.state["head.fc.bias"].shape[0])
        if rows != meta["num_classes"]:
            raise NpvitError(f"{path}: its classifier has {rows} outputs but its {META_KEY} "
                             f"names {meta['num_classes']} classes")
    return ModelFile(converted.model, converted.layout, converted.state, meta)


def _detected(path) -> str | None:
    """The variant a checkpoint looks like, or None if it looks like none."""
    try:
        return convert_checkpoint(path).model
    except NpvitError:
        return None
