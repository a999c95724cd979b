"""What every tutorial shares: fast mode, where figures go, and the optional PyTorch reference.

Environment variables (all optional):
    NPVIT_FAST=1            smaller sizes and fewer steps (the CI test sets it); every cell still runs
    NPVIT_TUTORIAL_OUT=dir  where figures are written (default: tutorials/out, which git ignores)

Run as scripts, the tutorials draw with matplotlib's Agg backend (no window) and only write
files; opened as notebooks (``jupytext --to notebook``), the figures also appear inline.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

IN_NOTEBOOK = "ipykernel" in sys.modules
if not IN_NOTEBOOK:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

FAST = os.environ.get("NPVIT_FAST", "") not in ("", "0")
OUT = Path(os.environ.get("NPVIT_TUTORIAL_OUT") or Path(__file__).resolve().parent / "out")


def figure_path(name: str) -> Path:
    """OUT/name, with OUT created: for code that writes a figure file itself."""
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT / name


def save_figure(fig, name: str) -> Path:
    """Write ``fig`` to OUT/name and report where; close it unless a notebook shows it."""
    path = figure_path(name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure written to {path}")
    if not IN_NOTEBOOK:
        plt.close(fig)
    return path


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
