"""``npvit bench attention --units all``: the paper's Fig. 1 (bottom right) extended to the
efficient-attention zoo of ``npvit.functional.attention_zoo``.

Every unit runs its functional forward pass (float32, batch 1) on k tokens of width d (512),
with h = 8 heads where the unit has heads:

* MHA, Linformer (p = 256), separable — as ``npvit.bench.attention``;
* EfficientViT cascaded group attention on a (1, d, H, W) map with H * W = k (H = 2^floor(e/2),
  W = 2^ceil(e/2) for k = 2^e), key_dim 16, val_dim d / h = 64, 5x5 depthwise query convs,
  eval-mode BatchNorm, attention biases over the H x W grid — the unit itself, global over its
  input; "CGA-7x7" runs it the way EfficientViT does (timm's LocalWindowAttention): on the
  7x7 windows of the zero-padded map, biases over the 7x7 grid;
* EfficientFormer attention on k tokens of the same grid, key_dim 32, attn_ratio 4 (timm's
  defaults), biases over the grid;
* TinyViT: the (1, H, W, d) map zero-padded to multiples of 7 and cut into 7x7 windows,
  LayerNorm + attention with biases (head_dim d / h, attn_ratio 1, as TinyVitBlock), merged back;
* LookupViT: k lookup tokens and M = 49 compressed tokens (the module's own);
* MPCViT: multi-head attention with ReLU softmax ("MPC-relu") and scaling attention
  ("MPC-scaling"), no qkv bias.

Timing: one BLAS thread (the command sets the thread variables before NumPy loads AND limits
the pools at run time with threadpoolctl, checking that they report one thread), one untimed
warm-up pass, then ``repeats`` passes whose median is kept. Operation counts and the largest
buffer come from ``npvit.opcount`` on the first timed pass. The per-operation times at k = 256
come from the same counter's timeline (each reported operation timed from the report before
it), median over passes.
"""
from __future__ import annotations

import os
import statistics

import numpy as np

from .. import functional as F
from .. import nn
from ..opcount import count_ops
from . import attention as classic
from .machine import cpu_and_numpy
from ..outputs import save_figure

ZOO_UNITS = ("CGA", "CGA-7x7", "EfficientFormer", "TinyViT", "LookupViT", "MPC-relu", "MPC-scaling")
ALL_UNITS = classic.UNITS + ZOO_UNITS
QUADRATIC = ("MHA", "CGA", "EfficientFormer", "MPC-relu", "MPC-scaling")   # k x k by design
CGA_KEY_DIM, EF_KEY_DIM, EF_ATTN_RATIO, WINDOW, COMPRESSED = 16, 32, 4, 7, 49


def grid(k: int) -> tuple[int, int]:
    """The H x W token grid for k tokens: as square as powers of two allow (H <= W)."""
    h = 2 ** (int(np.log2(k)) // 2) if k & (k - 1) == 0 else int(np.sqrt(k))
    while k % h:
        h -= 1
    return h, k // h


def kxk_bytes(unit: str, k: int, heads: int) -> int:
    """Bytes of the k x k arrays a unit holds at once (float32 weights of every head, plus the
    gathered biases and their int64 index where the unit has them); 0 for the linear units."""
    if unit not in QUADRATIC:
        return 0
    weights = heads * k * k * 4
    if unit in ("CGA", "EfficientFormer"):
        return 2 * weights + k * k * 8
    return 2 * weights if unit == "MPC-relu" else weights


def _conv_bn(w):
    c = w.shape[0]
    return (w, np.ones(c, w.dtype), np.zeros(c, w.dtype), np.zeros(c, w.dtype), np.ones(c, w.dtype))


def make_unit(unit, k, dim, heads, proj_len, rng):
    """A no-argument callable running one forward pass of ``unit`` on k random tokens (weights
    from the npvit modules' initialisation, biases random so no term is trivially zero)."""
    if unit in classic.UNITS:
        return classic.make_unit(unit, k, dim, heads, proj_len, rng)
    x = rng.standard_normal((1, k, dim)).astype(np.float32)
    h, w = grid(k)
    if unit == "CGA":
        m = nn.CascadedGroupAttention(dim, CGA_KEY_DIM, heads, dim // heads // CGA_KEY_DIM,
                                      resolution=1, kernels=(5,) * heads).eval()
        convs = lambda seq: [(c.conv.weight.data, c.bn.weight.data, c.bn.bias.data, c.bn.running_mean,
                              c.bn.running_var) for c in seq]
        table = rng.standard_normal((heads, h * w)).astype(np.float32)
        index = F.relative_position_index(h, w)
        fmap = x.reshape(1, h, w, dim).transpose(0, 3, 1, 2).copy()
        args = (convs(m.qkvs), convs(m.dws), convs([m.proj[1]])[0], table, index, CGA_KEY_DIM,
                dim // heads)
        return lambda: F.cascaded_group_attention_forward(fmap, *args)
    if unit == "CGA-7x7":
        m = nn.CascadedGroupAttention(dim, CGA_KEY_DIM, heads, dim // heads // CGA_KEY_DIM,
                                      resolution=WINDOW, kernels=(5,) * heads).eval()
        m.attention_biases.data[:] = rng.standard_normal(m.attention_biases.shape)
        convs = lambda seq: [(c.conv.weight.data, c.bn.weight.data, c.bn.bias.data, c.bn.running_mean,
                              c.bn.running_var) for c in seq]
        args = (convs(m.qkvs), convs(m.dws), convs([m.proj[1]])[0], m.attention_biases.data,
                m.attention_bias_idxs, CGA_KEY_DIM, dim // heads)
        fmap = x.reshape(1, h, w, dim)

        def run():
            windows, _ = F.window_partition_forward(fmap, WINDOW)             # (n, 49, d)
            maps = np.ascontiguousarray(windows.reshape(-1, WINDOW, WINDOW, dim).transpose(0, 3, 1, 2))
            y, _ = F.cascaded_group_attention_forward(maps, *args)            # (n, d, 7, 7)
            tokens = np.ascontiguousarray(y.transpose(0, 2, 3, 1)).reshape(-1, WINDOW * WINDOW, dim)
            return F.window_merge_forward(tokens, (h, w), WINDOW)
        return run
    if unit == "EfficientFormer":
        m = nn.EfficientFormerAttention(dim, EF_KEY_DIM, heads, EF_ATTN_RATIO, resolution=1)
        table = rng.standard_normal((heads, h * w)).astype(np.float32)
        args = (m.qkv.weight.data, m.qkv.bias.data, m.proj.weight.data, m.proj.bias.data, table,
                F.relative_position_index(h, w), heads, EF_KEY_DIM, EF_KEY_DIM * EF_ATTN_RATIO)
        return lambda: F.biased_attention_forward(x, *args)
    if unit == "TinyViT":
        dh = dim // heads
        m = nn.TinyViTAttention(dim, dh, heads, 1, (WINDOW, WINDOW))
        table = rng.standard_normal((heads, WINDOW * WINDOW)).astype(np.float32)
        args = (m.norm.weight.data, m.norm.bias.data, m.qkv.weight.data, m.qkv.bias.data,
                m.proj.weight.data, m.proj.bias.data, table, m.attention_bias_idxs, heads, dh, dh)
        fmap = x.reshape(1, h, w, dim)

        def run():
            windows, _ = F.window_partition_forward(fmap, WINDOW)
            y, _ = F.tinyvit_attention_forward(windows, *args)
            return F.window_merge_forward(y, (h, w), WINDOW)
        return run
    if unit == "LookupViT":
        m = nn.LookupCrossAttention(dim, heads, COMPRESSED)
        z = np.broadcast_to(m.compressed_tokens.data, (1, COMPRESSED, dim))
        args = [a for layer in (m.q, m.kv, m.proj_compressed, m.value_compressed, m.proj_lookup)
                for a in (layer.weight.data, layer.bias.data)]
        return lambda: F.lookup_cross_attention_forward(x, z, *args, num_heads=heads)
    if unit in ("MPC-relu", "MPC-scaling"):
        kind = unit.split("-")[1]
        m = nn.MPCAttention(dim, heads, kind=kind)
        return lambda: F.mpc_attention_forward(x, m.qkv.weight.data, None, m.proj.weight.data,
                                               m.proj.bias.data, heads, kind)
    raise ValueError(f"unknown unit {unit!r}")


def run_zoo(ks, dim=512, heads=8, proj_len=256, repeats=3, quadratic_max_k=None, log=print,
            seed=0) -> classic.Result:
    """Every unit of ALL_UNITS at every k: one warm-up pass, the median of ``repeats``."""
    return classic.run_benchmark(ks, dim, heads, proj_len, repeats, quadratic_max_k, log, seed,
                                 units=ALL_UNITS, make=make_unit, kxk_bytes=kxk_bytes, warmup=1,
                                 statistic=statistics.median)


def operation_times(unit, k, dim=512, heads=8, proj_len=256, repeats=5, seed=0):
    """[(operation name, kind, median seconds summed over its calls, share of the pass)] of one
    forward pass at k, largest first, from the opcount timeline."""
    run = make_unit(unit, k, dim, heads, proj_len, np.random.default_rng(seed))
    run()                                                # warm-up
    passes = []
    for _ in range(repeats):
        with count_ops() as counter:
            run()
        totals: dict[tuple[str, str], float] = {}
        for op in counter.ops:                           # per-head repeats of one op add up
            totals[op.name, op.kind] = totals.get((op.name, op.kind), 0.0) + op.seconds
        passes.append(totals)
    names = list(passes[0])
    medians = {n: statistics.median(p[n] for p in passes) for n in names}
    total = sum(medians.values())
    rows = [(name, kind, s, s / total) for (name, kind), s in medians.items()]
    return sorted(rows, key=lambda r: -r[2])


def builds_kxk(counter, k: int) -> bool:
    """Whether some reported operation produced an array with two axes of length k (a unit
    "builds k x k arrays" if this holds at every measured k: a fixed width such as d_head = 64
    can only equal k by coincidence at one k)."""
    return any(op.shape.count(k) >= 2 for op in counter.ops)


def loglog_slope(ks, values) -> float | None:
    pts = [(k, v) for k, v in zip(ks, values) if v]
    if len(pts) < 2:
        return None
    x, y = np.log2(np.array(pts, dtype=np.float64)).T
    return float(np.polyfit(x, y, 1)[0])


def machine_info() -> dict:
    """The CPU and NumPy build (npvit.bench.machine), the thread pools threadpoolctl sees, the
    load average."""
    from threadpoolctl import threadpool_info
    return {**cpu_and_numpy(),
            "pools": [(p["internal_api"], p["num_threads"]) for p in threadpool_info()],
            "load_average": os.getloadavg()}


# --- reports -----------------------------------------------------------------------------------
def _cell(m, what):
    if m.counter is None:
        return "—"
    if what == "ms":
        return f"{m.seconds * 1e3:.2f}"
    if what == "gops":
        return f"{(m.counter.macs + m.counter.elementwise) / 1e9:.3f}"
    return f"{m.counter.largest.nbytes / 2**20:.1f}"


def markdown_tables(result) -> str:
    """Three tables (latency, counted G ops, largest buffer) with one column per unit."""
    parts = []
    for what, title in (("ms", "Latency (ms, median)"), ("gops", "Counted operations (G)"),
                        ("mib", "Largest buffer (MiB)")):
        lines = [f"**{title}**", "", "| k | " + " | ".join(ALL_UNITS) + " |",
                 "|" + "---:|" * (1 + len(ALL_UNITS))]
        for k in result.ks:
            cells = " | ".join(_cell(result.get(u, k), what) for u in ALL_UNITS)
            lines.append(f"| {k} | {cells} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def slope_table(result, large_k: int) -> str:
    fmt = lambda s: "n/a" if s is None else f"{s:.2f}"
    lines = ["| unit | latency slope, all k | latency slope, k ≥ " + str(large_k)
             + " | counted-ops slope | largest-buffer slope | builds k × k | batched matmuls |",
             "|---|---:|---:|---:|---:|:---:|---:|"]
    for u in ALL_UNITS:
        done = [result.get(u, k) for k in result.ks if result.get(u, k).counter is not None]
        ks = [m.k for m in done]
        ops = [m.counter.macs + m.counter.elementwise for m in done]
        big = [m.counter.largest.nbytes for m in done]
        kxk = bool(done) and all(builds_kxk(m.counter, m.k) for m in done)
        matmuls = done[0].counter.by_kind().get("matmul", 0) if done else 0
        lines.append(f"| {u} | {fmt(result.slope(u))} | {fmt(result.slope(u, large_k))} | "
                     f"{fmt(loglog_slope(ks, ops))} | {fmt(loglog_slope(ks, big))} | "
                     f"{'yes' if kxk else 'no'} | {matmuls} |")
    return "\n".join(lines)


def operation_time_table(rows_by_unit, k: int, top: int = 5) -> str:
    lines = [f"| unit | top {top} operations by time at k = {k} (median ms, share of the pass) |",
             "|---|---|"]
    for unit, rows in rows_by_unit.items():
        cells = "; ".join(f"`{name}` [{kind}] {s * 1e3:.2f} ms ({share:.0%})"
                          for name, kind, s, share in rows[:top])
        lines.append(f"| {unit} | {cells} |")
    return "\n".join(lines)


def plot(result, path, large_k: int) -> None:
    """Write :func:`figure` to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(result)
    save_figure(fig, path, dpi=90)     # atomically, in the format the ending names
    plt.close(fig)


def figure(result):
    """Fig. 1 (bottom right) extended: log-log latency (left) and largest buffer (right)
    against k for every unit, the slopes fitted over all k in the legend."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, u in enumerate(ALL_UNITS):
        done = [result.get(u, k) for k in result.ks if result.get(u, k).seconds is not None]
        if not done:
            continue
        style = dict(marker="osD^v<>ph"[i % 9], linestyle="-" if u in QUADRATIC else "--",
                     color=plt.cm.tab10(i % 10), markersize=4)
        s = result.slope(u)
        ax_t.loglog([m.k for m in done], [m.seconds * 1e3 for m in done], base=2,
                    label=u if s is None else f"{u} ({s:.2f})", **style)
        ax_m.loglog([m.k for m in done], [m.counter.largest.nbytes / 2**20 for m in done], base=2,
                    label=u, **style)
    ax_t.set(xlabel="tokens k", ylabel="latency (ms, 1 thread, float32, median)",
             title=f"Attention units, d={result.dim}, h={result.heads} (slope over all k)")
    ax_m.set(xlabel="tokens k", ylabel="largest intermediate array (MiB)",
             title="Memory: solid = builds k x k arrays")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
