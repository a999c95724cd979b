"""Run Python in a subprocess where torch, torchvision and timm cannot be imported.

npvit must work on a machine without PyTorch, but the test machine has it installed. So the
subprocess gets a ``sitecustomize.py`` (via PYTHONPATH) that puts an import hook in front of
every other finder: importing torch, torchvision or timm (or any submodule) raises ImportError,
just as it would where they are not installed. Each blocked attempt is also appended to a log
file, so a test can tell "npvit never tried" apart from "npvit tried, caught the ImportError and
carried on"; ``blocked_imports`` reads it back.

Usage from any test:

    from no_torch import run_without_torch
    out = run_without_torch(["-m", "npvit", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BLOCKED = ("torch", "torchvision", "timm")

_SITECUSTOMIZE = '''\
"""Written by tests/no_torch.py: make torch, torchvision and timm unimportable."""
import os
import sys

_BLOCKED = {blocked!r}
_LOG = {log!r}


class _BlockTorch:
    """A meta path finder consulted before the real ones."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            with open(_LOG, "a") as f:
                f.write(name + "\\n")
            raise ImportError(f"No module named {{name!r}} (blocked by tests/no_torch.py)",
                              name=name)
        return None


sys.meta_path.insert(0, _BlockTorch())
'''


def no_torch_env(directory: Path, base_env: dict | None = None) -> dict:
    """Write the blocking ``sitecustomize.py`` into ``directory`` and return an environment
    (a copy of ``base_env`` or ``os.environ``) whose PYTHONPATH puts it first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "blocked_imports.log"
    log.write_text("")
    (directory / "sitecustomize.py").write_text(
        _SITECUSTOMIZE.format(blocked=BLOCKED, log=str(log)))
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(directory), env.get("PYTHONPATH")] if p)
    env["PYTHONNOUSERSITE"] = "1"   # no user site that could bring its own sitecustomize
    return env


def blocked_imports(directory: Path) -> list[str]:
    """The module names the subprocess tried to import and was refused, in order."""
    log = Path(directory) / "blocked_imports.log"
    return log.read_text().split() if log.exists() else []


def run_without_torch(args: list[str], directory: Path, timeout: float = 120,
                      **kwargs) -> subprocess.CompletedProcess:
    """``python <args>`` with torch/timm blocked; text output captured. ``directory`` holds
    the hook (use pytest's ``tmp_path``); extra keyword arguments go to ``subprocess.run``
    (e.g. ``cwd``, ``input``)."""
    env = no_torch_env(directory, kwargs.pop("env", None))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
