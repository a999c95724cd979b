"""Read a checkpoint file into ``{name: ndarray}`` without PyTorch, and without running any code
from the file.

Three formats, recognised by their content (not their file name):

- **PyTorch zip** (what ``torch.save`` writes since torch 1.6, so every ml-cvnets checkpoint):
  a zip archive ``<prefix>/data.pkl`` + ``<prefix>/data/<key>`` (+ ``byteorder``, ``version``
  ...). ``data.pkl`` is a pickle of the state dict in which every tensor is a call
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and every storage a
  *persistent id* ``("storage", torch.FloatStorage, key, location, numel)`` naming the raw
  little- (or big-) endian bytes in ``data/<key>``. Several tensors may view one storage.
  The pickle is read by :class:`_StateDictUnpickler`, which hands out only npvit's own small
  functions for the handful of globals a state dict needs, and refuses every other global —
  that is what keeps ``os.system`` & co. out (pickle can call nothing it did not look up).
- **safetensors**: parsed and validated by the ``safetensors`` package (``deserialize``); we
  only turn its raw bytes into arrays, because its ``safetensors.numpy`` helpers cannot
  represent bfloat16 (NumPy has no such dtype).
- **.npz** as written by ``npvit convert`` or ``npvit finetune`` (``np.load`` with pickles
  disabled; the ``npvit_meta`` entry of a fine-tuned model is left to ``read_model_meta``).

Half-precision tensors (float16, bfloat16) are widened to float32, exactly. Wrappers such as
``{"model": {...}}`` / ``{"state_dict": {...}}`` and the ``module.`` prefix of
DataParallel-wrapped models are removed, so the result is always a flat state dict.
"""
from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import NpvitError

# torch storage class -> NumPy dtype of its raw bytes (byte order applied later).
# bfloat16 is read as its 16 raw bits; _widen_bfloat16 turns them into float32.
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}
# safetensors dtype tag -> the same codes (safetensors data is always little-endian)
_SAFETENSORS_DTYPES = {
    "F64": "f8", "F32": "f4", "F16": "f2", "BF16": "bf16", "I64": "i8", "I32": "i4",
    "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
# Keys under which training scripts nest the weights, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


def read_checkpoint(path) -> dict[str, np.ndarray]:
    """The flat state dict stored in ``path`` (.pt/.pth zip, .safetensors or .npz)."""
    path = Path(path)
    if not path.is_file():
        raise NpvitError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise NpvitError(f"checkpoint {path} is empty (0 bytes)")
    if head.startswith(b"PK"):
        state = _read_zip(path)
    elif head.startswith(b"\x80"):
        # A bare pickle: torch.save before torch 1.6 (or with _use_new_zipfile_serialization=False)
        raise NpvitError(
            f"{path} is in the legacy (pre-1.6, non-zip) torch.save format, which npvit does not "
            "read; re-save it with torch>=1.6 (torch.save(torch.load(f), g)) or as .safetensors")
    elif head[8:9] == b"{":
        # safetensors: 8-byte little-endian header length, then the JSON header
        state = _read_safetensors(path)
    else:
        raise NpvitError(f"{path} is not a checkpoint npvit can read (expected a PyTorch .pt/.pth "
                         "zip archive, a .safetensors file or an .npz file)")
    return _flat_state_dict(state, path)


# --- PyTorch zip ------------------------------------------------------------------------------
def _read_zip(path: Path):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise NpvitError(f"{path} starts like a zip archive but cannot be opened ({e}); "
                         "the file is probably truncated or damaged — download it again") from None
    with archive:
        names = archive.namelist()
        pickles = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
        if not pickles:
            if names and all(n.endswith(".npy") for n in names):
                return _read_npz(path)
            raise NpvitError(f"{path} is a zip archive without data.pkl, so not a PyTorch "
                             f"checkpoint (it holds: {', '.join(names[:5]) or 'nothing'})")
        prefix = pickles[0][: -len("data.pkl")]      # "archive/", "mobilevit_xxs/", ...
        try:
            # files written before torch recorded the byte order are little-endian
            has_record = prefix + "byteorder" in names
            byteorder = archive.read(prefix + "byteorder").decode() if has_record else "little"
            unpickler = _StateDictUnpickler(archive, prefix, byteorder, path)
            return unpickler.load()
        except NpvitError:
            raise
        except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, KeyError, ValueError,
                TypeError, IndexError, AttributeError, MemoryError) as e:
            raise NpvitError(f"{path}: damaged PyTorch checkpoint ({type(e).__name__}: {e})") from None


class _StorageType:
    """Stands in for a ``torch.<X>Storage`` class inside the pickle. ``find_class`` makes a
    fresh one per lookup, so nothing a pickle does to it (BUILD sets attributes on whatever
    object it is given) outlives the file being read."""
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """One storage's elements as a flat array of raw values (bfloat16: raw uint16 bits)."""

    def __init__(self, values: np.ndarray, is_bfloat16: bool):
        self.values, self.is_bfloat16 = values, is_bfloat16


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None) -> np.ndarray:
    """npvit's stand-in for ``torch._utils._rebuild_tensor_v2``: the (size, stride) view of the
    storage that starts ``storage_offset`` elements in, copied into its own contiguous array."""
    if not isinstance(storage, _Storage):
        raise NpvitError("tensor without a storage in the pickle")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise NpvitError(f"invalid tensor view: offset {offset}, size {size}, stride {stride}")
    flat = storage.values
    if 0 not in size:
        # the view must stay inside the storage: as_strided would read past its end otherwise
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= flat.size:
            raise NpvitError(f"tensor view (offset {offset}, size {size}, stride {stride}) "
                             f"reaches past its storage of {flat.size} elements")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=[st * item for st in stride])
    else:
        view = np.zeros(size, flat.dtype)
    array = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")   # own copy, native order
    if storage.is_bfloat16:
        return _widen_bfloat16(array)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is just its data here."""
    return data


# The only globals a state-dict pickle may name: npvit's own harmless stand-ins for them.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED_STORAGE_TYPES = {("torch.storage", "UntypedStorage"),
                          *(("torch", name) for name in _TORCH_STORAGE_DTYPES)}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` admitting only ``_ALLOWED_GLOBALS`` and the storage types; the
    storages' bytes come from the zip.

    Pickle can only call what ``find_class`` returns (GLOBAL, STACK_GLOBAL, INST, OBJ and the
    extension registry all go through it), so refusing there means no code from the file runs.
    """

    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: Path):
        super().__init__(archive.open(prefix + "data.pkl"))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.byteorder = {"little": "<", "big": ">"}[byteorder]
        self.storages: dict[str, _Storage] = {}   # key -> storage, shared by all its views

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if (module, name) in _ALLOWED_STORAGE_TYPES:
            return _StorageType(name)
        raise NpvitError(
                f"refused to load global {module}.{name} from {self.path}: npvit reads only "
                "state dicts (tensors in dicts) and never runs code from a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise NpvitError(f"{self.path}: unexpected persistent id {pid!r} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            self.storages[key] = self._read_storage(str(key), storage_type, int(numel))
        return self.storages[key]

    def _read_storage(self, key: str, storage_type: _StorageType, numel: int) -> _Storage:
        code = _TORCH_STORAGE_DTYPES.get(storage_type.name)
        if code is None:
            raise NpvitError(f"{self.path}: unknown storage type {storage_type.name!r}")
        is_bfloat16 = code == "bf16"
        dtype = np.dtype("u2" if is_bfloat16 else code).newbyteorder(self.byteorder)
        try:
            raw = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise NpvitError(f"{self.path}: storage data/{key} is missing from the archive") from None
        if len(raw) != numel * dtype.itemsize:
            raise NpvitError(f"{self.path}: storage data/{key} has {len(raw)} bytes, expected "
                             f"{numel} x {dtype.itemsize} for {storage_type.name}")
        return _Storage(np.frombuffer(raw, dtype), is_bfloat16)


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits up to get the exact value."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# --- safetensors and npz ---------------------------------------------------------------------
def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        import safetensors
    except ImportError:
        raise NpvitError(f"reading {path} needs the safetensors package: "
                         "pip install safetensors") from None
    try:
        entries = safetensors.deserialize(path.read_bytes())
    except Exception as e:   # the package raises its own SafetensorError for bad files
        raise NpvitError(f"{path}: damaged safetensors file ({e})") from None
    state = {}
    for name, entry in entries:
        code = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if code is None:
            raise NpvitError(f"{path}: tensor {name} has dtype {entry['dtype']}, which npvit "
                             f"does not read (supported: {', '.join(_SAFETENSORS_DTYPES)})")
        raw = np.frombuffer(entry["data"], "<u2" if code == "bf16" else "<" + code)
        values = raw.reshape(entry["shape"]).astype(raw.dtype.newbyteorder("="))
        state[name] = (_widen_bfloat16(values) if code == "bf16"
                       else values.astype(np.float32) if code == "f2" else values)
    return state


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # npvit_meta (weights/meta.py) describes the model; it is not a weight
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files if name != "npvit_meta"}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise NpvitError(f"{path}: cannot read this .npz ({e})") from None


# --- unwrapping -------------------------------------------------------------------------------
def _flat_state_dict(obj, path: Path) -> dict[str, np.ndarray]:
    """Find the {name: array} mapping inside wrappers, and drop a common ``module.`` prefix."""
    while True:
        if not isinstance(obj, dict):
            raise NpvitError(f"{path} holds a {type(obj).__name__}, not a state dict")
        if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise NpvitError(f"{path} holds no state dict of tensors (top-level keys: "
                             f"{', '.join(map(str, list(obj)[:8])) or 'none'})")
        obj = inner
    state = {str(k): v for k, v in obj.items()}
    while all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
