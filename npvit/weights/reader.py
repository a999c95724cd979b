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
- **.npz** as written by ``npvit convert`` or ``npvit finetune``: each member's ``.npy`` header
  is read and checked against the member's size before its data is (pickles are never allowed;
  the ``npvit_meta`` entry of a fine-tuned model is left to ``read_model_meta``).

Hostile files (what a checkpoint from the internet may be) are refused in one NpvitError line
before they can cost time or memory out of proportion to their size:

- zip members are checked from the central directory before one is read: not encrypted, a
  compression method zipfile knows, at most MAX_INFLATION times their compressed size in all
  (torch.save never compresses; a 1 KB bzip2 member could otherwise inflate to 1 GiB), and a
  storage's size must equal what the pickle declares for it;
- ``data.pkl`` is at most MAX_PICKLE_BYTES and is SCANNED before it is unpickled
  (`_scan_pickle`): only the opcodes a state dict needs, at most MAX_PICKLE_OPS of them, nothing
  nested deeper than MAX_NESTING (a 300 000-deep tuple used as a dict key overflows the C stack
  when Python hashes it, which kills the process without a message);
- tensors stay views of their (unread) storages until the caller has seen their names and
  shapes (`open_checkpoint`), so a file that cannot fit the model is refused before any storage
  is read; a view larger than its storage (stride 0) is refused, and so are views adding up to
  more than MAX_VIEW_RATIO times the storages they view; only the storages of the state dict
  that is returned are ever read;
- the stand-ins the unpickler hands out are fresh objects that refuse BUILD, so nothing a file
  does outlives reading it; wrappers (``{"model": ...}``) are followed without cycles.

Half-precision tensors (float16, bfloat16) are widened to float32, exactly. Wrappers such as
``{"model": {...}}`` / ``{"state_dict": {...}}`` and the ``module.`` prefix of
DataParallel-wrapped models are removed, so the result is always a flat state dict.
"""
from __future__ import annotations

import contextlib
import lzma
import math
import os
import pickle
import pickletools
import stat
import zipfile
import zlib
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
# storages torch has but npvit does not read, by the dtype they hold (for the message)
_UNSUPPORTED_STORAGES = {"ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
                         "QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32"}
# safetensors dtype tag -> the same codes (safetensors data is always little-endian)
_SAFETENSORS_DTYPES = {
    "F64": "f8", "F32": "f4", "F16": "f2", "BF16": "bf16", "I64": "i8", "I32": "i4",
    "I16": "i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
# Keys under which training scripts nest the weights, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")

# Bounds on what a file may make npvit do. The largest variant's state dict (mobilevitv2_200,
# torch.save) pickles to 49 KB in 10 842 opcodes, nested a few levels deep; with its AdamW
# state beside it, 97 KB in 29 211 opcodes: the bounds leave 30x room and more.
MAX_PICKLE_BYTES = 32 * 2**20
MAX_PICKLE_OPS = 1_000_000
MAX_NESTING = 64
MAX_INFLATION, INFLATION_ALLOWANCE = 8, 2**20   # compressed members: <= 8x + 1 MiB in all
MAX_VIEW_RATIO, VIEW_ALLOWANCE = 2, 2**20       # views: <= 2x their storages + 1 MiB


def read_checkpoint(path) -> dict[str, np.ndarray]:
    """The flat state dict stored in ``path`` (.pt/.pth zip, .safetensors or .npz)."""
    with open_checkpoint(path) as tensors:
        return materialise(tensors, path)


@contextlib.contextmanager
def open_checkpoint(path):
    """``with open_checkpoint(path) as tensors:`` the flat state dict of ``path`` as
    ``{name: tensor}``, where a tensor is an ndarray or a `StoredTensor` (shape, dtype, not yet
    read); `materialise` turns it into arrays while the file is open. Look at names and shapes
    first to refuse a file that does not fit, before its data costs memory."""
    path = Path(path)
    check_regular_file(path, "checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise NpvitError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not head:
        raise NpvitError(f"checkpoint {path} is empty (0 bytes)")
    if head.startswith(b"PK"):
        with _open_zip(path) as archive:
            yield _flat_state_dict(_read_zip(archive, path), path)
        return
    if head.startswith(b"\x80"):
        # A bare pickle: torch.save before torch 1.6 (or with _use_new_zipfile_serialization=False)
        raise NpvitError(
            f"{path} is in the legacy (pre-1.6, non-zip) torch.save format, which npvit does not "
            "read; re-save it with torch>=1.6 (torch.save(torch.load(f), g)) or as .safetensors")
    if head[8:9] == b"{":
        # safetensors: 8-byte little-endian header length, then the JSON header
        yield _flat_state_dict(_read_safetensors(path), path)
        return
    raise NpvitError(f"{path} is not a checkpoint npvit can read (expected a PyTorch .pt/.pth "
                     "zip archive, a .safetensors file or an .npz file)")


def check_regular_file(path: Path, what: str) -> None:
    """Refuse, by what it is, a path that is missing or not a regular file (opening a FIFO
    would block forever, a device would be read without end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NpvitError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise NpvitError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket")
        raise NpvitError(f"{what} {path} is {kind}, not a regular file")


class StoredTensor:
    """A tensor of a checkpoint that has not been read yet: its shape, the dtype `load` returns
    (half types widened to float32), how to read it, and ``views``: (storage, bytes viewed) of
    the PyTorch storages it is read from, for the memory bound of `materialise`."""
    __slots__ = ("shape", "dtype", "_load", "views")

    def __init__(self, shape, dtype, load, views=()):
        self.shape, self.dtype, self._load, self.views = tuple(shape), np.dtype(dtype), load, list(views)

    def __setstate__(self, state):
        raise NpvitError("the pickle tries to modify a tensor (BUILD); refused")

    def load(self) -> np.ndarray:
        return self._load()


def materialise(tensors: dict, path) -> dict[str, np.ndarray]:
    """{name: StoredTensor or ndarray} -> {name: ndarray}, inside ``open_checkpoint``; views
    that add up to more than MAX_VIEW_RATIO times their storages are refused first."""
    views = [view for t in tensors.values() if isinstance(t, StoredTensor) for view in t.views]
    stored = sum(s.nbytes for s in {id(s): s for s, _ in views}.values())
    viewed = sum(n for _, n in views)
    if viewed > MAX_VIEW_RATIO * stored + VIEW_ALLOWANCE:
        raise NpvitError(f"{path}: its tensors view {viewed:,} bytes of storages holding "
                         f"{stored:,}; refused (views of one storage that overlap this much are "
                         "no state dict's)")
    try:
        return {k: t.load() if isinstance(t, StoredTensor) else t for k, t in tensors.items()}
    except NpvitError:
        raise
    except (*_DAMAGED, MemoryError) as e:
        raise NpvitError(f"{path}: damaged checkpoint ({_short(e)})") from None


def _short(e: BaseException, limit: int = 200) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + "..."


# --- zip archives (PyTorch and .npz) -----------------------------------------------------------
@contextlib.contextmanager
def _open_zip(path: Path):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, OverflowError) as e:
        raise NpvitError(f"{path} starts like a zip archive but cannot be opened ({_short(e)}); "
                         "the file is probably truncated or damaged — download it again") from None
    with archive:
        _check_members(archive, path)
        yield archive


def _check_members(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse encrypted members, compression methods zipfile cannot read, and compressed
    members that would inflate to more than MAX_INFLATION x their size (+ INFLATION_ALLOWANCE)."""
    compressed = inflated = 0
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise NpvitError(f"{path}: member {info.filename} is encrypted; npvit reads no "
                             "password-protected archives")
        if info.compress_type not in _COMPRESSION_NAMES:
            raise NpvitError(f"{path}: member {info.filename} uses zip compression method "
                             f"{info.compress_type}, which npvit cannot read (torch.save "
                             "stores members uncompressed)")
        if info.compress_type != zipfile.ZIP_STORED:
            compressed += info.compress_size
            inflated += info.file_size
    if inflated > MAX_INFLATION * compressed + INFLATION_ALLOWANCE:
        raise NpvitError(f"{path}: its compressed members would inflate from {compressed:,} to "
                         f"{inflated:,} bytes; refused as a possible zip bomb (torch.save stores "
                         "members uncompressed)")


# what zipfile raises for a damaged member: bad CRC, corrupt deflate/bzip2/lzma data, ...
_DAMAGED = (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
            zlib.error, lzma.LZMAError)
_COMPRESSION_NAMES = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
                      zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """The member's bytes; a damaged member (bad CRC, corrupt deflate/bzip2/lzma) is one line."""
    try:
        data = archive.read(info)
    except _DAMAGED as e:
        raise NpvitError(f"{path}: member {info.filename} is damaged ({_short(e)})") from None
    if len(data) != info.file_size:
        raise NpvitError(f"{path}: member {info.filename} is damaged ({len(data)} bytes, "
                         f"the archive says {info.file_size})")
    return data


def _read_zip(archive: zipfile.ZipFile, path: Path):
    names = archive.namelist()
    pickles = sorted((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), key=len)
    if not pickles:
        if names and all(n.endswith(".npy") for n in names):
            return _read_npz(archive, path)
        raise NpvitError(f"{path} is a zip archive without data.pkl, so not a PyTorch "
                         f"checkpoint (it holds: {', '.join(names[:5])[:300] or 'nothing'})")
    prefix = pickles[0][: -len("data.pkl")]      # "archive/", "mobilevit_xxs/", ...
    info = archive.getinfo(prefix + "data.pkl")
    if info.file_size > MAX_PICKLE_BYTES:
        raise NpvitError(f"{path}: data.pkl is {info.file_size:,} bytes; a state dict's is far "
                         f"smaller (npvit reads at most {MAX_PICKLE_BYTES:,})")
    data = _read_member(archive, info, path)
    # files written before torch recorded the byte order are little-endian
    byteorder = "little"
    if prefix + "byteorder" in names:
        record = archive.getinfo(prefix + "byteorder")
        byteorder = _read_member(archive, record, path)[:16].decode("ascii", "replace")
    if byteorder not in ("little", "big"):
        raise NpvitError(f"{path}: unknown byte order record {byteorder!r}")
    _scan_pickle(data, path)
    unpickler = _StateDictUnpickler(data, archive, prefix, byteorder, path)
    try:
        return unpickler.load()
    except NpvitError as e:      # raised by a stand-in: say which file
        raise e if str(path) in str(e) else NpvitError(f"{path}: {e}") from None
    except (EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, IndexError,
            AttributeError, OverflowError, RecursionError, MemoryError) as e:
        raise NpvitError(f"{path}: damaged PyTorch checkpoint ({_short(e)})") from None


# --- the pickle: scanned first, then unpickled with stand-ins ---------------------------------
# Opcodes a state dict (dicts, lists, tuples, strings, numbers, tensors) can need. Refused:
# INST, OBJ, NEWOBJ_EX and EXT* (other ways to reach classes), the out-of-band buffers.
_ALLOWED_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG
    LONG1 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8
    UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3
    EMPTY_LIST LIST APPEND APPENDS EMPTY_DICT DICT SETITEM SETITEMS EMPTY_SET ADDITEMS FROZENSET
    GLOBAL STACK_GLOBAL REDUCE BUILD NEWOBJ PERSID BINPERSID GET BINGET LONG_BINGET PUT BINPUT
    LONG_BINPUT MEMOIZE""".split())
_GROUPING = {"TUPLE", "LIST", "DICT", "FROZENSET"}       # build one object from everything above MARK
_FILLING = {"APPENDS", "SETITEMS", "ADDITEMS"}          # add everything above MARK to the object below
_PAIRS = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


def _scan_pickle(data: bytes, path: Path) -> None:
    """Walk the opcodes of ``data`` without building anything, tracking how deeply each object
    on the pickle's stack nests others, and refuse what no state dict needs: other opcodes,
    more than MAX_PICKLE_OPS of them, or nesting deeper than MAX_NESTING. An object's depth is
    a one-element list shared by the stack and the memo, so filling a container later (APPEND,
    SETITEM, BUILD) deepens it wherever it is referenced. Tuples and frozensets, the objects
    Python hashes recursively, are immutable, so their depth here is exact."""
    stack: list[list[int]] = []
    marks: list[int] = []
    memo: dict = {}

    def pop_to_mark() -> list:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def push_over(items) -> None:
        depth = 1 + max((d[0] for d in items), default=0)
        if depth > MAX_NESTING:
            raise NpvitError(f"{path}: data.pkl nests objects more than {MAX_NESTING} deep; "
                             "a state dict never does (refused before unpickling)")
        stack.append([depth])

    def fill(target, items) -> None:
        depth = 1 + max((d[0] for d in items), default=0)
        if depth > MAX_NESTING:
            raise NpvitError(f"{path}: data.pkl nests objects more than {MAX_NESTING} deep; "
                             "a state dict never does (refused before unpickling)")
        target[0] = max(target[0], depth)

    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            name = op.name
            if count >= MAX_PICKLE_OPS:
                raise NpvitError(f"{path}: data.pkl has more than {MAX_PICKLE_OPS:,} pickle "
                                 "operations; a state dict has far fewer")
            if name not in _ALLOWED_OPCODES:
                raise NpvitError(f"{path}: data.pkl uses the pickle operation {name}, which a "
                                 "state dict never needs; refused")
            if name == "MARK":
                marks.append(len(stack))
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif name == "POP_MARK":
                pop_to_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in _PAIRS:
                items = stack[-_PAIRS[name]:]
                del stack[-_PAIRS[name]:]
                push_over(items)
            elif name in _GROUPING:
                push_over(pop_to_mark())
            elif name in _FILLING:
                items = pop_to_mark()
                fill(stack[-1], items)
            elif name == "APPEND":
                fill(stack[-2], [stack.pop()])
            elif name in ("SETITEM", "BUILD"):
                items = stack[-2:] if name == "SETITEM" else stack[-1:]
                del stack[-len(items):]
                fill(stack[-1], items)
            elif name in ("REDUCE", "NEWOBJ"):
                items = stack[-2:]
                del stack[-2:]
                push_over(items)
            elif name == "BINPERSID":
                push_over([stack.pop()])
            elif name == "STACK_GLOBAL":
                del stack[-2:]
                stack.append([0])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
                stack.append([1])
            elif name not in ("PROTO", "FRAME", "STOP"):
                stack.append([0])          # a scalar, a string, a global or a persistent id
    except NpvitError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise NpvitError(f"{path}: damaged data.pkl ({_short(e)})") from None


class _StandIn:
    """What ``find_class`` returns for an allowed global: a fresh object per lookup that calls
    npvit's own function, and refuses BUILD (which would otherwise set attributes such as
    ``__qualname__`` or ``__defaults__`` on a shared function for the rest of the process)."""
    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __setstate__(self, state):
        raise NpvitError("the pickle tries to modify a global (BUILD); refused")


class _StorageType:
    """Stands in for a ``torch.<X>Storage`` class inside the pickle: a fresh one per lookup,
    refusing BUILD, so nothing a pickle does to it outlives the file being read."""
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __setstate__(self, state):
        raise NpvitError("the pickle tries to modify a storage type (BUILD); refused")


class _Storage:
    """One storage of the archive: ``data/<key>``, ``numel`` elements of ``dtype`` (bfloat16:
    raw uint16 bits), read on first use and then shared by all its views."""

    def __init__(self, archive, info, dtype: np.dtype, numel: int, is_bfloat16: bool, path):
        self.archive, self.info, self.dtype, self.numel = archive, info, dtype, numel
        self.is_bfloat16, self.path, self._values = is_bfloat16, path, None
        self.itemsize, self.nbytes = dtype.itemsize, dtype.itemsize * numel

    def __setstate__(self, state):
        raise NpvitError("BUILD on a storage")

    def values(self) -> np.ndarray:
        if self._values is None:
            raw = _read_member(self.archive, self.info, self.path)
            self._values = np.frombuffer(raw, self.dtype)
        return self._values


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False,
                    backward_hooks=None, metadata=None) -> StoredTensor:
    """npvit's stand-in for ``torch._utils._rebuild_tensor_v2``: the (size, stride) view of the
    storage that starts ``storage_offset`` elements in, checked now and copied into its own
    contiguous array when loaded."""
    if not isinstance(storage, _Storage):
        raise NpvitError("tensor without a storage in the pickle")
    if not (isinstance(size, tuple) and isinstance(stride, tuple)
            and all(type(v) is int for v in (storage_offset, *size, *stride))):
        raise NpvitError(f"invalid tensor view: offset, size and stride must be integers, got "
                         f"{_clip(storage_offset)}, {_clip(size)}, {_clip(stride)}")
    offset = storage_offset
    if len(size) != len(stride) or len(size) > 8 or offset < 0 or any(s < 0 for s in size + stride):
        raise NpvitError(f"invalid tensor view: offset {_clip(offset)}, size {_clip(size)}, "
                         f"stride {_clip(stride)}")
    numel = math.prod(size)
    if numel:
        # the view must stay inside the storage: as_strided would read past its end otherwise
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= storage.numel:
            raise NpvitError(f"tensor view (offset {offset}, size {size}, stride {stride}) "
                             f"reaches past its storage of {storage.numel} elements")
        if numel > storage.numel:
            raise NpvitError(f"tensor view of size {size} (stride {stride}) repeats elements of "
                             f"its storage of {storage.numel}; a state dict's tensors never do")
    widened = np.float32 if storage.is_bfloat16 or storage.dtype.kind == "f" and storage.itemsize == 2 \
        else storage.dtype.newbyteorder("=")

    def load():
        flat = storage.values()
        if numel:
            view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                                   strides=[st * flat.itemsize for st in stride])
        else:
            view = np.zeros(size, flat.dtype)
        array = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")   # own copy
        if storage.is_bfloat16:
            return _widen_bfloat16(array)
        return array.astype(np.float32) if array.dtype == np.float16 else array

    return StoredTensor(size, widened, load, [(storage, numel * storage.itemsize)])


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """``torch._utils._rebuild_parameter``: a Parameter is just its data here."""
    return data


# The only globals a state-dict pickle may name: npvit's own harmless stand-ins for them.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED_STORAGE_TYPES = {("torch.storage", "UntypedStorage"),
                          *(("torch", name) for name in (*_TORCH_STORAGE_DTYPES, *_UNSUPPORTED_STORAGES))}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` admitting only ``_ALLOWED_GLOBALS`` and the storage types; the
    storages' bytes come from the zip, read only when a tensor that is returned needs them.

    Pickle can only call what ``find_class`` returns (GLOBAL, STACK_GLOBAL, INST, OBJ and the
    extension registry all go through it), so refusing there means no code from the file runs.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, path):
        import io
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.byteorder = {"little": "<", "big": ">"}[byteorder]
        self.storages: dict[str, _Storage] = {}   # key -> storage, shared by all its views

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _StandIn(_ALLOWED_GLOBALS[(module, name)])
        if (module, name) in _ALLOWED_STORAGE_TYPES:
            return _StorageType(name)
        raise NpvitError(
                f"refused to load global {str(module)[:80]}.{str(name)[:80]} from {self.path}: npvit "
                "reads only state dicts (tensors in dicts) and never runs code from a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int):
            raise NpvitError(f"{self.path}: unexpected persistent id {_clip(pid)} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            self.storages[key] = self._storage(key, storage_type, numel)
        return self.storages[key]

    def _storage(self, key: str, storage_type: _StorageType, numel: int) -> _Storage:
        if storage_type.name in _UNSUPPORTED_STORAGES:
            raise NpvitError(f"{self.path}: unsupported dtype {_UNSUPPORTED_STORAGES[storage_type.name]}"
                             f" (storage data/{_clip(key)}); npvit reads real-valued weights")
        code = _TORCH_STORAGE_DTYPES[storage_type.name]
        is_bfloat16 = code == "bf16"
        dtype = np.dtype("u2" if is_bfloat16 else code).newbyteorder(self.byteorder)
        try:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
        except KeyError:
            raise NpvitError(f"{self.path}: storage data/{_clip(key)} is missing from the "
                             "archive") from None
        if numel < 0 or info.file_size != numel * dtype.itemsize:
            raise NpvitError(f"{self.path}: storage data/{_clip(key)} has {info.file_size} bytes, "
                             f"expected {_clip(numel)} x {dtype.itemsize} for {storage_type.name}")
        return _Storage(self.archive, info, dtype, numel, is_bfloat16, self.path)


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits up to get the exact value."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _clip(value, limit: int = 80) -> str:
    """repr(value) cut to ``limit`` characters, for messages about values from a file."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


# --- safetensors and npz ---------------------------------------------------------------------
def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        import safetensors
    except ImportError:
        raise NpvitError(f"reading {path} needs the safetensors package: "
                         "pip install safetensors") from None
    try:
        entries = safetensors.deserialize(path.read_bytes())
    except OSError as e:
        raise NpvitError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:   # the package raises its own SafetensorError for bad files
        raise NpvitError(f"{path}: damaged safetensors file ({_short(e)})") from None
    state = {}
    for name, entry in entries:
        code = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if code is None:
            raise NpvitError(f"{path}: tensor {_clip(name)} has dtype {entry['dtype']}, which npvit "
                             f"does not read (supported: {', '.join(_SAFETENSORS_DTYPES)})")
        raw = np.frombuffer(entry["data"], "<u2" if code == "bf16" else "<" + code)
        values = raw.reshape(entry["shape"]).astype(raw.dtype.newbyteorder("="))
        state[name] = (_widen_bfloat16(values) if code == "bf16"
                       else values.astype(np.float32) if code == "f2" else values)
    return state


def _read_npz(archive: zipfile.ZipFile, path: Path) -> dict[str, StoredTensor]:
    """{name: StoredTensor} of an .npz: every member's .npy header is read and checked now
    (a header claiming more data than the member holds is refused), its data when loaded."""
    tensors = {}
    for info in archive.infolist():
        name = info.filename[: -len(".npy")]
        if name == "npvit_meta":  # describes the model (weights/meta.py); it is not a weight
            continue
        shape, dtype, header_bytes = _npy_header(archive, info, path)
        if header_bytes + math.prod(shape) * dtype.itemsize != info.file_size:
            raise NpvitError(f"{path}: {_clip(name)} declares {_clip(shape)} x {dtype} but its "
                             f"member holds {info.file_size:,} bytes; the file is damaged")
        tensors[name] = StoredTensor(shape, dtype,
                                     _npy_loader(archive, info, shape, dtype, header_bytes, path))
    return tensors


def _npy_header(archive, info, path):
    """(shape, dtype, header length) of one .npy member, from its first bytes only."""
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read(f, max_header_size=10_000)
            header_bytes = f.tell()
    except (*_DAMAGED, SyntaxError, TypeError) as e:
        raise NpvitError(f"{path}: {_clip(info.filename)} is not a readable .npy ({_short(e)})") from None
    if dtype.hasobject:
        raise NpvitError(f"{path}: {_clip(info.filename)} holds Python objects (a pickle); refused")
    if fortran and len(shape) > 1:
        raise NpvitError(f"{path}: {_clip(info.filename)} is in Fortran order, which npvit's own "
                         ".npz files never are")
    return shape, dtype, header_bytes


def _npy_loader(archive, info, shape, dtype, header_bytes, path):
    def load():
        raw = _read_member(archive, info, path)
        return np.frombuffer(raw, dtype, offset=header_bytes).reshape(shape).copy()
    return load


# --- unwrapping -------------------------------------------------------------------------------
def _is_tensor(value) -> bool:
    return isinstance(value, (np.ndarray, StoredTensor))


def _flat_state_dict(obj, path: Path) -> dict:
    """Find the {name: tensor} mapping inside wrappers, and drop a common ``module.`` prefix.
    Each dict is entered at most once, so a wrapper that contains itself is refused, not
    followed forever."""
    seen = set()
    while True:
        if not isinstance(obj, dict):
            raise NpvitError(f"{path} holds a {type(obj).__name__}, not a state dict")
        if id(obj) in seen:
            raise NpvitError(f"{path} holds a wrapper that contains itself, not a state dict")
        seen.add(id(obj))
        if obj and all(_is_tensor(v) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(_clip(k, 40) for k in list(obj)[:8])
            raise NpvitError(f"{path} holds no state dict of tensors (top-level keys: "
                             f"{keys or 'none'})")
        obj = inner
    if not all(isinstance(k, str) for k in obj):
        bad = next(k for k in obj if not isinstance(k, str))
        raise NpvitError(f"{path}: a state dict's keys are names, but one is {_clip(bad)}")
    state = dict(obj)
    while all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
