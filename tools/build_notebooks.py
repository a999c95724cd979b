"""Write the tutorials as executed notebooks: .ipynb files with every output and inline figure.

The tutorials are jupytext "percent" scripts (tutorials/NN_*.py). This converts each one to a
notebook with jupytext, runs it top to bottom in a fresh Jupyter kernel with nbclient, and
writes the executed notebook beside its script (tutorials/NN_*.ipynb, ignored by git), where
Jupyter finds ``tutorial_setup`` when you run the cells again. Needs the ``tutorials`` extra:

    pip install -e '.[tutorials]'
    python tools/build_notebooks.py              # every tutorial, full size
    python tools/build_notebooks.py --fast 03 07 # NPVIT_FAST=1 sizes, tutorials 3 and 7 only
    jupyter lab tutorials/

The kernel inherits this process's environment (NPVIT_FAST, NPVIT_TUTORIAL_OUT,
NPVIT_EXERCISES, ...), with the tutorials folder put first on PYTHONPATH and as working
directory. A notebook is written only when every cell ran; a failing cell ends the command with
one line naming the tutorial, the cell and the error (exit status 1).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"


def fail(message: str, status: int) -> int:
    print(f"build_notebooks: error: {message}", file=sys.stderr)
    return status


def select_tutorials(names: list[str]) -> list[Path]:
    """The scripts named by number ("03") or file name; all of them when ``names`` is empty."""
    every = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
    if not names:
        return every
    chosen = []
    for name in names:
        matches = [p for p in every if p.name == name or p.stem == name
                   or p.name[:2] == name.zfill(2) or p.resolve() == Path(name).resolve()]
        if len(matches) != 1:
            raise LookupError(f"no tutorial {name!r} (there are {every[0].name[:2]}..{every[-1].name[:2]})")
        chosen.append(matches[0])
    return chosen


def kernel_environment(fast: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(TUTORIALS_DIR), env.get("PYTHONPATH")] if p)
    if fast:
        env["NPVIT_FAST"] = "1"
    env.pop("MPLBACKEND", None)         # the kernel chooses matplotlib's inline backend itself
    return env


def build(script: Path, out_dir: Path, env: dict, timeout: float):
    """Execute ``script`` as a notebook and write out_dir/<stem>.ipynb atomically."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    notebook = jupytext.read(script)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                       "name": "python3"}
    with tempfile.TemporaryDirectory() as sockets:
        # the kernel talks over Unix sockets in a private folder ("ipc"): no network port
        local = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", config=local,
                                resources={"metadata": {"path": str(TUTORIALS_DIR)}})
        client.execute(env=env)
    target = out_dir / f"{script.stem}.ipynb"
    partial = target.with_name(f".{target.name}.partial")
    nbformat.write(notebook, partial)
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tutorials", nargs="*", help="numbers (03) or file names; default: all")
    parser.add_argument("--fast", action="store_true", help="NPVIT_FAST=1: small sizes, as in CI")
    parser.add_argument("--out", type=Path, default=TUTORIALS_DIR,
                        help="folder for the .ipynb files (default: beside the scripts)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per cell (1800)")
    args = parser.parse_args(argv)
    try:
        import jupytext  # noqa: F401
        import nbclient
        import tqdm
    except ImportError as missing:
        return fail(f"{missing.name} is not installed: pip install -e '.[tutorials]'", 2)
    try:
        scripts = select_tutorials(args.tutorials)
    except LookupError as error:
        return fail(str(error), 2)
    args.out.mkdir(parents=True, exist_ok=True)
    env = kernel_environment(args.fast)
    for script in tqdm.tqdm(scripts, desc="notebooks", unit="tutorial", disable=len(scripts) < 2):
        start = time.perf_counter()
        try:
            target = build(script, args.out, env, args.timeout)
        except nbclient.exceptions.CellExecutionError as error:
            last = [line for line in str(error).strip().splitlines() if line.strip()][-1]
            return fail(f"{script.name} failed: {last}", 1)
        except nbclient.exceptions.CellTimeoutError:
            return fail(f"{script.name}: a cell ran longer than {args.timeout:.0f} s", 1)
        tqdm.tqdm.write(f"{target} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
