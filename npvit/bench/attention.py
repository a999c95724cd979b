"""The MobileViTv2 paper's Fig. 1 on this CPU: how multi-head attention (MHA), Linformer and
separable self-attention scale with the number of tokens k.

For each unit and each k this runs the unit's functional forward pass (float32, batch 1) a few
times and keeps the fastest time, counts its operations on the first run with
``npvit.opcount`` (multiply-adds, element-wise operations, largest intermediate array), and
fits the slope of log(latency) against log(k): about 1 for an O(k) unit, about 2 for O(k^2).

Separable attention runs on the MobileViTv2 layout with P = 1, x (1, d, 1, k), so every unit
sees the same k tokens of width d and no transpose is timed. Single-threaded timing is the
caller's job (``npvit bench attention`` sets the BLAS thread variables before NumPy loads).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from .. import nn
from ..opcount import OpCounter, count_ops
from ..outputs import save_figure

UNITS = ("MHA", "Linformer", "separable")


@dataclass
class Measurement:
    unit: str
    k: int
    seconds: float | None          # None: skipped (see note)
    counter: OpCounter | None = None
    note: str = ""


@dataclass
class Result:
    dim: int
    heads: int
    proj_len: int
    ks: list[int]
    rows: list[Measurement] = field(default_factory=list)

    def get(self, unit, k) -> Measurement:
        return next(m for m in self.rows if m.unit == unit and m.k == k)

    def slope(self, unit, min_k: int = 0) -> float | None:
        """Least-squares slope of log2(latency) vs log2(k) over the measured k >= min_k."""
        pts = [(m.k, m.seconds) for m in self.rows
               if m.unit == unit and m.seconds is not None and m.k >= min_k]
        if len(pts) < 2:
            return None
        k, t = np.log2(np.array(pts, dtype=np.float64)).T
        return float(np.polyfit(k, t, 1)[0])


def make_unit(unit: str, k: int, dim: int, heads: int, proj_len: int, rng: np.random.Generator):
    """A no-argument callable that runs one forward pass of ``unit`` on k random tokens.

    The weights come from the npvit modules (PyTorch-style initialisation); the callable uses
    the functional op directly, so nothing (such as a module's last attention map) keeps the
    previous pass's arrays alive while the next one runs.
    """
    if unit == "separable":
        m = nn.SeparableSelfAttention(dim)
        x = rng.standard_normal((1, dim, 1, k)).astype(np.float32)
        args = (m.qkv_proj.weight.data, m.qkv_proj.bias.data, m.out_proj.weight.data, m.out_proj.bias.data)
        return lambda: F.separable_attention_forward(x, *args)
    x = rng.standard_normal((1, k, dim)).astype(np.float32)
    if unit == "MHA":
        m = nn.MultiHeadAttention(dim, heads)
        args = (m.qkv.weight.data, m.qkv.bias.data, m.proj.weight.data, m.proj.bias.data)
        return lambda: F.multi_head_attention_forward(x, *args, num_heads=heads)
    if unit == "Linformer":
        m = nn.LinformerAttention(dim, heads, seq_len=k, proj_len=proj_len)
        args = (m.qkv.weight.data, m.qkv.bias.data, m.key_proj.data, m.value_proj.data,
                m.proj.weight.data, m.proj.bias.data)
        return lambda: F.linformer_attention_forward(x, *args, num_heads=heads)
    raise ValueError(f"unknown unit {unit!r}")


def mha_memory_estimate(k: int, heads: int) -> int:
    """Bytes MHA needs at its peak, float32, batch 1: one (h, k, k) array — the scores, which
    the softmax overwrites in place with the attention weights (every other array is O(k d))."""
    return heads * k * k * 4


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_benchmark(ks, dim=512, heads=8, proj_len=256, repeats=3, mha_max_k=None,
                  log=print, seed=0, units=UNITS, make=make_unit, kxk_bytes=None,
                  warmup=0, statistic=min) -> Result:
    """Time and count every unit at every k. The units with k x k arrays (``kxk_bytes(unit, k,
    heads)`` says how many bytes they hold; by default only MHA, one (h, k, k) float32 array)
    are skipped above ``mha_max_k`` and wherever those arrays would not fit in 80% of the
    available memory. The first timed pass is also counted; ``warmup`` untimed passes run
    before it, and ``statistic`` (min or a median) summarises the ``repeats`` timed passes."""
    if kxk_bytes is None:
        kxk_bytes = lambda unit, k, h: mha_memory_estimate(k, h) if unit == "MHA" else 0
    nn.manual_seed(seed)
    rng = np.random.default_rng(seed)
    result = Result(dim, heads, proj_len, list(ks))
    memory = available_memory()
    for k in ks:
        for unit in units:
            need = kxk_bytes(unit, k, heads)
            if need:
                if mha_max_k is not None and k > mha_max_k:
                    result.rows.append(Measurement(unit, k, None,
                                                   note=f"skipped: above --mha-max-k {mha_max_k}"))
                    continue
                if memory is not None and need > 0.8 * memory:
                    result.rows.append(Measurement(unit, k, None, note=(
                        f"skipped: needs ~{need / 2**30:.1f} GiB, {memory / 2**30:.1f} GiB available")))
                    continue
            run = make(unit, k, dim, heads, proj_len, rng)
            for _ in range(warmup):
                run()
            times = []
            with count_ops() as counter:                   # the first timed pass is also counted
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            for _ in range(repeats - 1):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            del run
            seconds = float(statistic(times))
            result.rows.append(Measurement(unit, k, seconds, counter))
            log(f"  k={k:6d} {unit:16s} {seconds * 1e3:10.2f} ms")
    return result


# --- reports -----------------------------------------------------------------------------------
def _ms(m: Measurement) -> str:
    return "—" if m.seconds is None else f"{m.seconds * 1e3:.2f}"


def _gops(m: Measurement) -> str:
    return "—" if m.counter is None else f"{(m.counter.macs + m.counter.elementwise) / 1e9:.3f}"


def _mib(m: Measurement) -> str:
    return "—" if m.counter is None else f"{m.counter.largest.nbytes / 2**20:.1f}"


def markdown_table(result: Result) -> str:
    head = ("| k | " + " | ".join(f"{u} ms" for u in UNITS) + " | "
            + " | ".join(f"{u} G ops" for u in UNITS) + " | "
            + " | ".join(f"{u} largest MiB" for u in UNITS) + " |")
    lines = [head, "|" + "---:|" * (1 + 3 * len(UNITS))]
    for k in result.ks:
        ms = [result.get(u, k) for u in UNITS]
        lines.append(f"| {k} | " + " | ".join(map(_ms, ms)) + " | " + " | ".join(map(_gops, ms))
                     + " | " + " | ".join(map(_mib, ms)) + " |")
    return "\n".join(lines)


def slope_lines(result: Result, large_k: int) -> list[str]:
    lines = []
    for u in UNITS:
        s_all, s_large = result.slope(u), result.slope(u, large_k)
        fmt = lambda s: "n/a" if s is None else f"{s:.2f}"
        lines.append(f"{u:10s} slope of log latency vs log k: {fmt(s_large)} for k >= {large_k}, "
                     f"{fmt(s_all)} over all k")
    return lines


def operations_report(result: Result, k: int) -> str:
    """Every operation of each unit at one k, with its counts (the paper's Fig. 1, left)."""
    parts = []
    for u in UNITS:
        m = result.get(u, k)
        if m.counter is not None:
            setting = {"MHA": f", h={result.heads}", "separable": "",
                       "Linformer": f", h={result.heads}, p={result.proj_len}"}[u]
            parts.append(f"{u} (k={k}, d={result.dim}{setting})\n"
                         + m.counter.table())
    return "\n\n".join(parts)


def figure(result: Result, large_k: int):
    """Log-log latency (left) and counted operations (right) against k, slopes in the legend;
    returns the matplotlib figure (the caller saves or shows it)."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_ops) = plt.subplots(1, 2, figsize=(11, 4.2))
    for u, marker in zip(UNITS, "osD"):
        ms = [result.get(u, k) for k in result.ks]
        done = [m for m in ms if m.seconds is not None]
        if not done:
            continue
        s = result.slope(u, large_k)
        label = u if s is None else f"{u} (slope {s:.2f} for k ≥ {large_k})"
        ax_t.loglog([m.k for m in done], [m.seconds * 1e3 for m in done], marker=marker, label=label,
                    base=2)
        ax_ops.loglog([m.k for m in done], [m.counter.macs + m.counter.elementwise for m in done],
                      marker=marker, label=u, base=2)
    ax_t.set(xlabel="tokens k", ylabel="latency (ms, one thread, float32)",
             title=f"Attention latency, d={result.dim}, h={result.heads}, Linformer p={result.proj_len}")
    ax_ops.set(xlabel="tokens k", ylabel="multiply-adds + element-wise ops (counted)",
               title="Operations of one forward pass")
    for ax in (ax_t, ax_ops):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(result: Result, path, large_k: int) -> None:
    """Write ``figure(result, large_k)`` to ``path`` without opening a window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(result, large_k)
    save_figure(fig, path, dpi=120)     # atomically, in the format the ending names
    plt.close(fig)
