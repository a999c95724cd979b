"""How many CPU threads npvit uses: ``npvit.set_num_threads(n)`` (the ``--threads`` option).

npvit parallelises over *images*, not inside an operation: with n threads, inference on a batch
runs its images (in pieces of a few images, see ``MobileViTNet.inference_chunk_bytes``) in a
pool of n Python threads, and every BLAS call runs on ONE thread. This scales because NumPy releases the
GIL inside its ufunc loops and BLAS calls, which is where inference spends its time, and images
in eval mode do not interact. BLAS threads are pinned to one (with threadpoolctl) because two
levels of threads on the same cores oversubscribe them: OpenBLAS's idle threads spin, and on a
shared machine a spinning pool can slow a run tenfold instead of in proportion to the load.

``set_num_threads(1)`` is one piece at a time with single-threaded BLAS (the benchmark's
setting). Without a call, npvit leaves BLAS as the environment set it (OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS) and runs images one after another.

threadpoolctl is optional (the ``threads`` extra); without it the image pool still runs, and BLAS
keeps the thread count it read from OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when NumPy loaded, so
set those to 1 in the environment to avoid oversubscription.
"""
from __future__ import annotations

import collections
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

from .errors import NpvitError

_num_threads: int | None = None     # None: set_num_threads was never called
_pool: ThreadPoolExecutor | None = None
_blas_limit = None                  # the threadpoolctl limiter, kept alive while it applies


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def _pin_blas_to_one_thread() -> bool:
    """Limit every BLAS / OpenMP pool of the process to one thread; False without threadpoolctl."""
    global _blas_limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    _blas_limit = threadpool_limits(limits=1)
    return True


def set_num_threads(n: int | None) -> int:
    """Use ``n`` threads for inference (None or 0: every CPU this process may use). Returns n.

    Images of a batch run in a pool of n threads; BLAS is pinned to one thread per call, so n
    threads never do more work than n cores can take (module docstring)."""
    global _num_threads, _pool
    if n is None or n == 0:
        n = cpu_count()
    if not isinstance(n, int) or n < 0:
        raise NpvitError(f"the number of threads must be a positive integer, got {n!r}")
    if not _pin_blas_to_one_thread() and n > 1:
        warnings.warn("npvit.set_num_threads: threadpoolctl is not installed, so BLAS threads "
                      "cannot be pinned; set OPENBLAS_NUM_THREADS=1 (pip install threadpoolctl, or "
                      "the [threads] extra, to do it automatically)", stacklevel=2)
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    _num_threads = n
    if n > 1:
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="npvit")
    return n


def get_num_threads() -> int:
    """The threads inference uses for the images of a batch (1 until set_num_threads)."""
    return _num_threads or 1


def map_in_order(fn, items):
    """An iterator over fn(item) for item in items, in their order; on the thread pool when there
    is one and more than one item. At most 4 x threads items are in flight (submitted ahead of
    the one being consumed), so a long list of images is never decoded all at once; an exception
    is raised when its result is reached, as in a loop. Called from inside a pool thread it runs
    serially, so nested uses cannot wait on each other."""
    items = list(items)
    if _pool is None or len(items) < 2 or getattr(_in_pool, "active", False):
        return (fn(item) for item in items)
    return _windowed(_marked(fn), items, 4 * get_num_threads())


def _windowed(fn, items: list, window: int):
    pending = collections.deque(_pool.submit(fn, item) for item in items[:window])
    upcoming = iter(items[window:])
    while pending:
        result = pending.popleft().result()
        for item in upcoming:                 # keep the window full: submit one, then yield
            pending.append(_pool.submit(fn, item))
            break
        yield result


_in_pool = threading.local()


def _marked(fn):
    def run(item):
        _in_pool.active = True
        return fn(item)
    return run
