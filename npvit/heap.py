"""Keep freed memory for reuse, so NumPy's large temporaries stop costing page faults.

Every NumPy operation returns a fresh array, and a forward pass allocates and frees hundreds of
them, several MB each. glibc's malloc serves a block above its mmap threshold (128 KiB at
start, raised as blocks are freed, to at most 32 MiB) straight from the kernel, and gives freed
memory at the top of its heap back to the kernel once there is more than its trim threshold.
Either way the next pass asks the kernel for the same memory again, and the kernel maps and
zeroes it page by page: one minor page fault per 4 KiB touched. Measured here (one thread, 256
px, the same process with and without this; `resource.getrusage().ru_minflt`):

* mobilevitv2_050 batch-1 inference: 3777 faults (14.8 MiB) per forward in one process,
  25.5 -> 18.4 ms; whether a forward faults depends on what was allocated before it, so
  without this tuning the same model runs 0-40 % slower from one process to the next;
* training step at batch 8: 17,000-18,000 faults per step -> about 100; mobilevit_xxs 549 ->
  460 ms, mobilevitv2_050 606 -> 524 ms.

``keep_freed_memory()`` sets both thresholds (setting them turns glibc's own adjustment off):
blocks up to 256 MiB come from the heap, and the heap is trimmed only above 2 GiB free. Freed
blocks then stay in the process for the next allocation, as PyTorch's and ONNX Runtime's own
allocators keep theirs. The process never holds more than its own peak, which is what
``npvit.inference.check_size`` budgets; an array over 256 MiB (a huge decoded image) is still
returned to the kernel when freed. ``import npvit`` calls it; set NPVIT_KEEP_FREED_MEMORY=0 to
leave malloc as it is. On anything but Linux with glibc it changes nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # glibc's <malloc.h> parameter numbers
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 2**31 - 1                         # mallopt takes a C int: about 2 GiB

kept = False    # whether a call took effect (it stays in effect: nothing undoes it)


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; True if it took effect."""
    global kept
    if os.environ.get("NPVIT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)          # the symbols already loaded: the C library's
        mallopt = libc.mallopt
        libc.gnu_get_libc_version         # glibc only (musl has mallopt but ignores it)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    kept = kept or applied
    return applied
