"""What every tutorial shares: fast mode, figures, relative errors, exercises, optional PyTorch.

Environment variables (all optional):
    NPVIT_FAST=1            smaller sizes and fewer steps (the tests set it); every cell still runs
    NPVIT_TUTORIAL_OUT=dir  where figures are written (default: tutorials/out, which git ignores)
    NPVIT_EXERCISES=solutions
                            check every exercise on its solution instead of the reader's
                            function (CI sets it; see "Exercises" below)

Figures: ``show(fig, "01_im2col")`` writes OUT/01_im2col.png (the name starts with the
tutorial's number) and, when the code runs in a Jupyter kernel, also displays that PNG inline
under the cell. Run as a script, the tutorials draw with matplotlib's Agg backend and only
write files. ``show`` returns None, so a cell that ends with it prints nothing more.

Relative error: ``relative_error(x, y)`` is cs231n's elementwise
``max |x - y| / max(1e-8, |x| + |y|)``: about 1e-7 or less in float64 means two gradients agree.

Timings: ``median_ms(fn)`` is the median wall-clock time of ``fn()`` in milliseconds, after a
warm-up call, with the BLAS and OpenMP pools pinned to one thread by threadpoolctl
(``clock=time.process_time``: the process's CPU time instead, robust on a busy machine);
``cpu_name()`` says which CPU it ran on. Every time a tutorial states is measured in that run.

Exercises (cs231n-style): a tutorial defines a blank function for the reader, whose body is
``raise NotImplementedError``, and a checker that calls a candidate function and asserts it
agrees with npvit and with finite differences. The checker cell ends with
``exercises.check(blank_function, checker)``, where ``exercises = Exercises("01")`` names the
tutorial. The solutions live out of the way in tutorials/solutions/NN_*.py, one function of the
same name per exercise, plus ``WRONG_ANSWERS``: for each exercise a deliberately wrong answer
(a mistake a learner is likely to make).

* By default the checker runs on the reader's function: a blank prints one line and the
  tutorial continues; an answer the checker rejects (AssertionError) prints one line with the
  checker's message and the tutorial continues; a right one prints that it passed. Any other
  error in the reader's code shows its traceback, which says where it broke.
* With NPVIT_EXERCISES=solutions the checker must pass on the solution, and must fail (raise)
  on the tutorial's blank and on the wrong answer; otherwise ``check`` raises and the run
  fails. So a run in CI proves every checker can tell a right answer from a wrong one.

Open the tutorials as executed notebooks with ``python tools/build_notebooks.py`` (README).
"""
from __future__ import annotations

import importlib.util
import io
import os
import platform
import re
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

IN_NOTEBOOK = "ipykernel" in sys.modules
if not IN_NOTEBOOK:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

FAST = os.environ.get("NPVIT_FAST", "") not in ("", "0")
OUT = Path(os.environ.get("NPVIT_TUTORIAL_OUT") or Path(__file__).resolve().parent / "out")
SOLUTIONS_DIR = Path(__file__).resolve().parent / "solutions"
CHECK_SOLUTIONS = os.environ.get("NPVIT_EXERCISES", "") == "solutions"


def figure_path(name: str) -> Path:
    """OUT/name, with OUT created: for code that writes a figure file itself."""
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT / name


def show(fig, name: str) -> None:
    """Write ``fig`` to OUT/<name>.png and, in a Jupyter kernel, display it inline; close it.

    ``name`` starts with the tutorial's two-digit number ("01_im2col"); ".png" is optional.
    """
    stem = name.removesuffix(".png")
    if not re.fullmatch(r"\d\d_[\w.-]+", stem):
        raise ValueError(f"figure name {name!r} must start with the tutorial number, e.g. 01_im2col")
    path = figure_path(stem + ".png")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    path.write_bytes(buffer.getvalue())
    plt.close(fig)                  # in a notebook, the inline backend would otherwise show it twice
    if IN_NOTEBOOK:
        from IPython.display import Image, display
        display(Image(data=buffer.getvalue(), format="png"))
    print(f"figure written to {path}")


def relative_error(x, y) -> float:
    """cs231n's relative error: max over elements of |x - y| / max(1e-8, |x| + |y|)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def median_ms(fn, repeats: int = 5, warmup: int = 1, clock=time.perf_counter) -> float:
    """Median time of ``fn()`` in ms over ``repeats`` calls after ``warmup`` calls, one thread.

    ``clock=time.process_time`` measures the CPU time of this process instead of wall-clock
    time: with one thread it is the work itself, without the time a busy machine spends
    running other programs.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = clock()
            fn()
            times.append(clock() - start)
    return 1e3 * float(np.median(times))


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), for the label of a timing."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class Exercises:
    """The exercises of one tutorial; solutions in tutorials/solutions/<number>_*.py."""

    def __init__(self, number: str):
        matches = sorted(SOLUTIONS_DIR.glob(f"{number}_*.py"))
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one solutions file {SOLUTIONS_DIR}/{number}_*.py, "
                                    f"found {len(matches)}")
        self.solutions_path = matches[0]
        self._solutions = None

    def solutions(self):
        """The solutions module, imported on first use (reading it is optional)."""
        if self._solutions is None:
            spec = importlib.util.spec_from_file_location(
                f"npvit_tutorial_solutions_{self.solutions_path.stem}", self.solutions_path)
            self._solutions = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self._solutions)
        return self._solutions

    def check(self, function, checker) -> None:
        """Run ``checker(candidate)``, which raises AssertionError for a wrong candidate."""
        name = function.__name__
        if CHECK_SOLUTIONS:
            solutions = self.solutions()
            checker(getattr(solutions, name))      # must pass: an error here fails the run
            for what, candidate in (("the blank", function),
                                    ("the wrong answer", solutions.WRONG_ANSWERS[name])):
                try:
                    checker(candidate)
                except Exception:               # rejected, whatever the way it failed
                    continue
                raise AssertionError(f"exercise {name}: the checker accepted {what}")
            print(f"exercise {name}: the solution passes; the blank and the wrong answer fail")
            return
        try:
            checker(function)
        except NotImplementedError:
            print(f"exercise {name}: not attempted yet - fill in {name} above and run this cell "
                  f"again (solution: tutorials/solutions/{self.solutions_path.name})")
        except AssertionError as error:
            message = (str(error).strip().splitlines() or ["the checker's assertion failed"])[0]
            print(f"exercise {name}: not right yet: {message}")
        else:
            print(f"exercise {name}: correct")


def optional_torch():
    """The torch module, or None where PyTorch is not installed (the comparison cells then
    print one line and move on; everything else in the tutorials needs only NumPy)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def skip_without_torch(what: str) -> None:
    print(f"skipped: {what} needs PyTorch, which is not installed (pip install -e '.[test]')")
