"""What a timing was measured on: the CPU and the NumPy build, as the benchmarks record them.
The same code can be limited by exp on one CPU and by memory passes on another, so every speed
claim names the CPU model, its SIMD flags and the SIMD targets NumPy dispatches to there."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

# the instruction-set extensions that decide NumPy's and the BLAS's speed
_FLAG_PREFIXES = ("avx", "fma", "sse4", "f16c", "amx")


def cpu_and_numpy() -> dict:
    """CPU model and SIMD flags (/proc/cpuinfo where there is one), NumPy's version, BLAS, and
    its build-time (baseline) and run-time (dispatch, available on this CPU) SIMD targets."""
    cpu, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        if names:
            cpu = f"{names[0]} ({len(names)} logical CPUs)"
        found = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        flags = [f for f in found if f.startswith(_FLAG_PREFIXES)]
    from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return {"cpu": cpu, "cpu_flags": flags, "numpy": np.__version__,
            "numpy_blas": f"{blas.get('name')} {blas.get('version')}",
            "simd_baseline": list(__cpu_baseline__),
            "simd_dispatch_available": [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]}
