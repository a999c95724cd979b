"""Hostile checkpoint and image files, assembled byte by byte by the tests (no binary fixtures),
and a runner for subprocesses under a time limit and an address-space limit that reports the
child's own peak RSS.

Pickles are written opcode by opcode in the layout ``torch.save`` uses (protocol 2: a dict of
``torch._utils._rebuild_tensor_v2(persistent storage id, offset, size, stride, False,
OrderedDict())`` calls), so each hostile file differs from an honest one only in what it attacks;
`honest_tensor_file` is the positive control that the same builder gives a readable file.
"""
from __future__ import annotations

import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

# --- pickle opcodes ---------------------------------------------------------------------------
PROTO2 = b"\x80\x02"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, STOP = b"}", b"]", b")", b"(", b"."
TUPLE, TUPLE1, SETITEM, SETITEMS, APPEND, REDUCE, BUILD = b"t", b"\x85", b"s", b"u", b"a", b"R", b"b"
BINPERSID, NEWFALSE, NONE = b"Q", b"\x89", b"N"


def string(s: str) -> bytes:
    data = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def integer(n) -> bytes:
    if isinstance(n, float):
        return b"G" + struct.pack(">d", n)
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    size = (n.bit_length() + 8) // 8
    return b"\x8a" + bytes([size]) + n.to_bytes(size, "little", signed=True)


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tuple_of(values) -> bytes:
    return MARK + b"".join(integer(v) for v in values) + TUPLE


def tensor(storage_key: str, numel, offset, size, stride, storage="FloatStorage") -> bytes:
    """The opcodes of one ``_rebuild_tensor_v2`` call, as torch.save writes it."""
    pid = MARK + string("storage") + global_("torch", storage) + string(storage_key) + string("cpu") \
        + integer(numel) + TUPLE + BINPERSID
    return (global_("torch._utils", "_rebuild_tensor_v2") + MARK + pid + integer(offset)
            + tuple_of(size) + tuple_of(stride) + NEWFALSE
            + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)


def state_dict_pickle(tensors: dict[str, bytes]) -> bytes:
    """A dict {name: tensor opcodes}, like torch.save(state_dict)."""
    body = b"".join(string(name) + value for name, value in tensors.items())
    return PROTO2 + EMPTY_DICT + MARK + body + SETITEMS + STOP


def torch_zip(path: Path, pickle: bytes, storages: dict[str, bytes] | None = None,
              compression=zipfile.ZIP_STORED, pickle_compression=zipfile.ZIP_STORED) -> Path:
    """A torch.save-style archive: archive/data.pkl, archive/data/<key>, archive/byteorder."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle, compress_type=pickle_compression)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data, compress_type=compression)
    return path


def honest_tensor_file(path: Path) -> Path:
    """The positive control: a (2, 3) float tensor over its own storage of 6 floats."""
    values = np.arange(6, dtype="<f4")
    return torch_zip(path, state_dict_pickle({"w": tensor("0", 6, 0, (2, 3), (3, 1))}),
                     {"0": values.tobytes()})


def patch_zip(path: Path, member: str, flags: int | None = None, method: int | None = None) -> Path:
    """Set the general-purpose flags (bit 0 = encrypted) or the compression method of
    ``member`` in both its local header and its central-directory entry."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if _entry_name(data, start, signature) == name:
                if flags is not None:
                    struct.pack_into("<H", data, start + flag_at, flags)
                if method is not None:
                    struct.pack_into("<H", data, start + method_at, method)
            start += 4
    path.write_bytes(bytes(data))
    return path


def _entry_name(data: bytearray, start: int, signature: bytes) -> bytes:
    if signature == b"PK\x03\x04":
        length = struct.unpack_from("<H", data, start + 26)[0]
        return bytes(data[start + 30:start + 30 + length])
    length = struct.unpack_from("<H", data, start + 28)[0]
    return bytes(data[start + 46:start + 46 + length])


def npy_bytes(descr: str, shape: tuple, payload: bytes) -> bytes:
    """An .npy member with a hand-written header (which may claim anything) and ``payload``."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * ((-(10 + len(header) + 1)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


# --- running a child under limits ------------------------------------------------------------
def limited(address_space: int, close_stderr: bool = False):
    """preexec_fn: cap the child's address space (so a memory bomb fails fast instead of
    thrashing the machine), forbid core dumps, optionally close fd 2."""
    def set_limits():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if close_stderr:
            os.close(2)
    return set_limits


class Result:
    def __init__(self, returncode, stdout, stderr, peak_rss, seconds):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.peak_rss, self.seconds = peak_rss, seconds      # bytes, wall seconds

    def __repr__(self):
        return (f"Result(rc={self.returncode}, peak={self.peak_rss / 2**20:.0f} MiB, "
                f"{self.seconds:.1f} s, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})")


def run(argv, tmp_path: Path, timeout: float = 60, address_space: int = 3 * 2**30, env=None,
        close_stderr: bool = False, cwd=None) -> Result:
    """Run ``python argv`` and return its exit code, output, and its own peak RSS (from
    wait4's rusage of exactly this child). A child still running at ``timeout`` is killed and
    the test fails: a hang is a bug."""
    out_path, err_path = tmp_path / f".out-{time.monotonic_ns()}", tmp_path / f".err-{time.monotonic_ns()}"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                   **(env or {})}
    start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen([sys.executable, *map(str, argv)], stdout=out,
                                 stderr=None if close_stderr else err, env=environment,
                                 cwd=cwd or tmp_path, preexec_fn=limited(address_space, close_stderr))
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                os.kill(child.pid, signal.SIGKILL)
                os.wait4(child.pid, 0)
                raise AssertionError(f"{argv} did not finish within {timeout} s")
            time.sleep(0.02)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    result = Result(child.returncode, out_path.read_text(errors="replace"),
                    err_path.read_text(errors="replace"), usage.ru_maxrss * 1024, seconds)
    out_path.unlink()
    err_path.unlink()
    return result
