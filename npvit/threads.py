"""How many CPU threads npvit uses: ``npvit.set_num_threads(n)`` (the ``--threads`` option).

npvit parallelises over *images*, not inside an operation: with n threads, inference on a batch
runs its images (in pieces of a few images, see ``MobileViTNet.inference_chunk_bytes``) in a
pool of n Python threads, and every BLAS call runs on ONE thread. This scales because NumPy
releases the GIL inside its ufunc loops and BLAS calls, which is where inference spends its
time, and images in eval mode do not interact. BLAS threads are pinned to one (with threadpoolctl) because a
multi-threaded BLAS call waits for its slowest thread: on a 2-core machine with one other busy
process, OpenBLAS on 2 threads made a batch-1 forward of mobilevitv2_050 8x slower than on one
(546 vs 65 ms) and `npvit finetune` epochs 3-20x slower, where one BLAS thread slows in
proportion to the CPU share it gets. (OpenBLAS's wait policy is no cure: with
OPENBLAS_THREAD_TIMEOUT=4 its idle threads sleep sooner, and beside the busy process epochs took
7.6-43 s in one run and 4.0-4.3 s in another, against 2.8-4.5 s on one BLAS thread;
OMP_WAIT_POLICY concerns OpenMP builds, and NumPy's OpenBLAS uses pthreads.)

``set_num_threads(1)`` is one piece at a time with single-threaded BLAS (the benchmark's
setting). npvit's commands call ``set_num_threads(--threads)``, every CPU by default. Without a
call (the library used from Python), npvit leaves BLAS as the environment set it
(OPENBLAS_NUM_THREADS / OMP_NUM_THREADS) and runs images one after another.

threadpoolctl is optional (the ``threads`` extra); without it the image pool still runs, and BLAS
keeps the thread count it read from OPENBLAS_NUM_THREADS / OMP_NUM_THREADS when NumPy loaded, so
set those to 1 in the environment to avoid oversubscription (the commands then default to one
thread, see ``can_pin_blas``).
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

from .errors import NpvitError

_num_threads: int | None = None     # None: set_num_threads was never called
_pool: ThreadPoolExecutor | None = None
_blas_limit = None                  # the threadpoolctl limiter, kept alive while it applies

# With a pool, Python's thread switch interval (default 5 ms: how long a thread that wants the
# GIL waits before it asks the holder to let go) is lowered to this: the pool's threads hand
# the GIL back and forth between NumPy calls, some of which keep it, and a 5 ms wait idled a
# core. Batch-8 inference on 2 threads, quiet 2-core machine: 1.53-1.54x -> 1.60-1.61x one
# thread's speed (0.2 ms: 1.60-1.63x); with no core free, 0.98-1.03x either way. The interval
# the process had is restored at n = 1.
POOL_SWITCH_INTERVAL = 0.001
_switch_interval: float | None = None   # the process's own interval while the pool's applies


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def can_pin_blas() -> bool:
    """Whether BLAS threads can be pinned here (threadpoolctl is installed)."""
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


def _pin_blas_to_one_thread() -> bool:
    """Limit every BLAS / OpenMP pool of the process to one thread; False without threadpoolctl."""
    global _blas_limit
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    limit = threadpool_limits(limits=1)    # applies now, to every BLAS / OpenMP library loaded
    if _blas_limit is None:                # the first limiter remembers the limits to restore
        _blas_limit = limit
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
    _set_switch_interval(pool=n > 1)
    return n


def _set_switch_interval(pool: bool) -> None:
    global _switch_interval
    if pool and _switch_interval is None:
        _switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(_switch_interval, POOL_SWITCH_INTERVAL))
    elif not pool and _switch_interval is not None:
        sys.setswitchinterval(_switch_interval)
        _switch_interval = None


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
