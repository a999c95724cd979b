"""Every tutorial runs top to bottom as a script (fast mode) and writes its figures.

The tutorials' own numeric checks are assertions, so a wrong derivation or a regression in npvit
makes the script exit non-zero here. Fast mode (NPVIT_FAST=1) shrinks sizes and step counts
but runs every cell. NPVIT_HOME points at an empty folder, so tutorials 7 and 8 take the
random-weights path whatever the machine has cached.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from no_torch import run_without_torch

TUTORIALS_DIR = Path(__file__).resolve().parents[1] / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))


def tutorial_env(tmp_path: Path, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.update(NPVIT_FAST="1", NPVIT_TUTORIAL_OUT=str(tmp_path / "out"),
               NPVIT_HOME=str(tmp_path / "cache"), MPLBACKEND="Agg",
               NPVIT_EXERCISES="solutions")
    return env


def test_the_tutorials_are_numbered_in_order():
    """01, 02, ... with no gap and no number twice: the course is read in this order (at least
    the original eight lessons)."""
    numbers = [p.name[:2] for p in TUTORIALS]
    assert len(numbers) >= 8 and numbers == [f"{i:02d}" for i in range(1, len(numbers) + 1)]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_jupytext_percent_script(path):
    text = path.read_text()
    assert "# %% [markdown]" in text and "\n# %%\n" in text
    assert "formats: py:percent" in text


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_and_writes_figures(path, tmp_path):
    run = subprocess.run([sys.executable, str(path)], env=tutorial_env(tmp_path), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{path.name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    figures = sorted((tmp_path / "out").glob(f"{path.name[:2]}_*.png"))
    assert figures, f"{path.name} wrote no figure"
    assert all(f.stat().st_size > 1000 for f in figures)


def test_tutorial_without_torch_skips_only_the_comparison_cells(tmp_path):
    """Without PyTorch, the comparison cell prints one line and everything else still runs.
    As a reader runs it (no NPVIT_EXERCISES), each blank exercise prints one line too."""
    path = TUTORIALS_DIR / "01_convolution.py"
    env = tutorial_env(tmp_path)
    del env["NPVIT_EXERCISES"]
    run = run_without_torch([str(path)], tmp_path / "hook", env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    skipped = [line for line in run.stdout.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and "PyTorch" in skipped[0]
    assert (tmp_path / "out" / "01_im2col.png").is_file()
    blanks = [line for line in run.stdout.splitlines() if "not attempted yet" in line]
    assert len(blanks) == path.read_text().count("\nexercises.check(") >= 2
