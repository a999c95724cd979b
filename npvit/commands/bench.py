"""``npvit bench <what>``: benchmarks, one sub-subcommand each.

``npvit bench attention`` reproduces the MobileViTv2 paper's Fig. 1 (bottom right) on this CPU:
latency of MHA, Linformer (p = 256) and separable self-attention for d = 512, h = 8 on ONE
thread, k = 256 ... 16384 doubling, with fitted log-log slopes and the operation counts
(Fig. 1, left). The BLAS library reads its thread count only when NumPy is first imported, so
unless OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and VECLIB_MAXIMUM_THREADS are
already 1 the command re-runs itself in a child process with them set to 1.

``npvit bench models`` compares npvit with PyTorch eager (timm) on one thread: inference at
several batch sizes, a training step, peak memory, GFLOP/s and a profile. Its code is
benchmarks/models.py of the source checkout (it imports torch and timm when they are installed,
which code inside the npvit package never does); this command loads that file, takes its
options, and it re-runs itself single-threaded the same way.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..errors import NpvitError
from ..outputs import check_figure_output, check_output, write_atomically

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


MODELS_BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "models.py"


def _models_benchmark():
    """benchmarks/models.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location("npvit_models_benchmark", MODELS_BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_models(args) -> int:
    if not MODELS_BENCHMARK.exists():
        raise NpvitError(f"npvit bench models needs a source checkout: {MODELS_BENCHMARK} not found")
    bench = _models_benchmark()
    return bench.main(bench.argv_from(args))


def _single_threaded() -> bool:
    return all(os.environ.get(v) == "1" for v in THREAD_VARIABLES)


def _attention_argv(args) -> list[str]:
    """The command line that reproduces ``args`` (for the single-threaded child)."""
    argv = ["bench", "attention", "--dim", str(args.dim), "--heads", str(args.heads),
            "--proj-len", str(args.proj_len), "--min-k", str(args.min_k), "--max-k", str(args.max_k),
            "--repeats", str(args.repeats), "--large-k", str(args.large_k), "--plot", str(args.plot)]
    if args.mha_max_k is not None:
        argv += ["--mha-max-k", str(args.mha_max_k)]
    if args.markdown:
        argv += ["--markdown", str(args.markdown)]
    if args.quick:
        argv.append("--quick")
    if args.units != "paper":
        argv += ["--units", args.units]
    return argv


def _check_attention_options(args) -> None:
    """Every option that would fail the benchmark, refused before it starts (and before the
    single-threaded re-run), in one line."""
    for option, value in (("--dim", args.dim), ("--heads", args.heads), ("--proj-len", args.proj_len),
                          ("--repeats", args.repeats), ("--large-k", args.large_k)):
        if value < 1:
            raise NpvitError(f"{option} must be at least 1, got {value}")
    if args.mha_max_k is not None and args.mha_max_k < 1:
        raise NpvitError(f"--mha-max-k must be at least 1, got {args.mha_max_k}")
    if not args.quick and (args.min_k < 1 or args.max_k < args.min_k):
        raise NpvitError(f"need 1 <= --min-k <= --max-k, got {args.min_k} and {args.max_k}")
    if args.dim % args.heads:
        raise NpvitError(f"--dim {args.dim} is not divisible by --heads {args.heads}")
    check_figure_output(args.plot, what="--plot")
    if args.markdown:
        check_output(args.markdown, what="--markdown")


def run_attention(args) -> int:
    _check_attention_options(args)
    if not _single_threaded():
        print("re-running with " + ", ".join(f"{v}=1" for v in THREAD_VARIABLES)
              + " (BLAS reads them when NumPy loads)", flush=True)
        env = {**os.environ, **{v: "1" for v in THREAD_VARIABLES}}
        return subprocess.call([sys.executable, "-m", "npvit", *_attention_argv(args)], env=env)

    if args.units == "all":
        return run_attention_zoo(args)
    from ..bench import attention as bench

    if args.quick:
        args.min_k, args.max_k, args.repeats = 64, 256, 1
    ks = []
    k = args.min_k
    while k <= args.max_k:
        ks.append(k)
        k *= 2
    print(f"attention latency, one thread, float32, batch 1: d={args.dim}, h={args.heads}, "
          f"Linformer p={args.proj_len}, k = {ks[0]} ... {ks[-1]}")
    result = bench.run_benchmark(ks, args.dim, args.heads, args.proj_len, args.repeats, args.mha_max_k)
    table = bench.markdown_table(result)
    slopes = bench.slope_lines(result, args.large_k)
    skipped = [f"{m.unit} at k={m.k}: {m.note}" for m in result.rows if m.seconds is None]
    operations = bench.operations_report(result, ks[0])
    print("\n" + table + "\n")
    print("\n".join(slopes + skipped))
    print("\noperations of one forward pass (G ops = multiply-adds + element-wise operations):\n")
    print(operations)
    bench.plot(result, args.plot, args.large_k)
    print(f"\nplot: {args.plot}")
    if args.markdown:
        write_atomically(args.markdown, lambda f: f.write(
            f"# Attention latency (MobileViTv2 paper, Fig. 1)\n\n"
            f"Produced by `npvit {' '.join(_attention_argv(args))}`: one thread, float32, batch 1, "
            f"d={args.dim}, h={args.heads}, Linformer p={args.proj_len}; the fastest of "
            f"{args.repeats} forward passes. Operation counts come from `npvit.opcount` on the "
            f"pass that ran.\n\n![latency](attention_latency.png)\n\n{table}\n\n"
            + "".join(f"- {line.strip()}\n" for line in slopes + skipped)
            + f"\n## Operations of one forward pass\n\n```\n{operations}\n```\n"), mode="w")
        print(f"table: {args.markdown}")
    return 0


def _doubling(lo: int, hi: int) -> list[int]:
    ks, k = [], lo
    while k <= hi:
        ks.append(k)
        k *= 2
    return ks


def run_attention_zoo(args) -> int:
    """``--units all``: the three units of the paper and the efficient-attention zoo, one BLAS
    thread for real (threadpoolctl), warm-up, medians, a per-operation time table at k = 256."""
    import time

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise NpvitError("npvit bench attention --units all needs threadpoolctl to pin the BLAS "
                         "threads: pip install threadpoolctl (or the [bench] extra)") from None

    from ..bench import attention_zoo as zoo

    if args.quick:
        args.min_k, args.max_k, args.repeats = 64, 256, 1
    if args.min_k < 1 or args.max_k < args.min_k:
        raise NpvitError(f"need 1 <= --min-k <= --max-k, got {args.min_k} and {args.max_k}")
    if args.dim % args.heads or (args.dim // args.heads) % zoo.CGA_KEY_DIM:
        raise NpvitError(f"--dim {args.dim} / --heads {args.heads} must be a multiple of "
                         f"{zoo.CGA_KEY_DIM} (cascaded group attention's key_dim)")
    ks = _doubling(args.min_k, args.max_k)
    profile_k = 256 if 256 in ks else ks[0]
    with threadpool_limits(limits=1):
        machine = zoo.machine_info()
        if any(n != 1 for _, n in machine["pools"]):
            raise NpvitError(f"could not limit the thread pools to one thread: {machine['pools']}")
        print(f"attention zoo, one thread, float32, batch 1: d={args.dim}, h={args.heads}, "
              f"Linformer p={args.proj_len}, TinyViT window {zoo.WINDOW}x{zoo.WINDOW}, "
              f"LookupViT M={zoo.COMPRESSED}, k = {ks[0]} ... {ks[-1]}", flush=True)
        start = time.time()
        result = zoo.run_zoo(ks, args.dim, args.heads, args.proj_len, args.repeats, args.mha_max_k)
        times = {u: zoo.operation_times(u, profile_k, args.dim, args.heads, args.proj_len)
                 for u in zoo.ALL_UNITS}
        minutes = (time.time() - start) / 60
        load_end = os.getloadavg()
    tables = zoo.markdown_tables(result)
    slopes = zoo.slope_table(result, args.large_k)
    skipped = [f"{m.unit} at k={m.k}: {m.note}" for m in result.rows if m.seconds is None]
    ops = zoo.operation_time_table(times, profile_k)
    print("\n" + tables + "\n\n" + slopes + "\n\n" + ops)
    if skipped:
        print("\n".join(skipped))
    zoo.plot(result, args.plot, args.large_k)
    print(f"\nplot: {args.plot}")
    if args.markdown:
        m = machine
        la = m["load_average"]
        text = (
            "# The efficient-attention zoo beside the paper's Fig. 1\n\n"
            f"Produced by `npvit {' '.join(_attention_argv(args))}` in {minutes:.1f} min.\n\n"
            f"![latency and memory]({Path(args.plot).name})\n\n"
            "## Settings\n\n"
            f"- float32, batch 1, forward pass only, d={args.dim}; h={args.heads} for every unit with "
            f"heads; Linformer p={args.proj_len}; cascaded group attention key_dim {zoo.CGA_KEY_DIM}, "
            f"val_dim {args.dim // args.heads}, 5x5 query convs, on an H x W map with H*W = k; "
            f"EfficientFormer key_dim {zoo.EF_KEY_DIM}, attn_ratio {zoo.EF_ATTN_RATIO}; TinyViT "
            f"windows {zoo.WINDOW}x{zoo.WINDOW} (map zero-padded to multiples of 7), head_dim "
            f"{args.dim // args.heads}; LookupViT M={zoo.COMPRESSED} compressed tokens; MPCViT "
            "without qkv bias. Details in `npvit/bench/attention_zoo.py`.\n"
            f"- One BLAS thread: thread variables set before NumPy loads and threadpoolctl limits "
            f"(pools seen: {m['pools']}); one warm-up pass, median of {args.repeats} timed passes.\n"
            f"- Units with k x k arrays stop at k = {args.mha_max_k or 'what fits in memory'}.\n"
            f"- Machine: {m['cpu']}; flags {' '.join(m['cpu_flags'])}; NumPy {m['numpy']} with "
            f"{m['numpy_blas']}; NumPy SIMD baseline {' '.join(m['simd_baseline'])}, dispatch targets "
            f"available {' '.join(m['simd_dispatch_available'])}.\n"
            f"- Load average (1, 5, 15 min) at start {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}; at end "
            f"{load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f}.\n\n"
            "## Fitted log-log slopes\n\n"
            "Slope of log latency, of log counted operations and of log largest buffer against "
            "log k (1 = linear, 2 = quadratic); \"builds k × k\": some operation output ends in a "
            "(k, k) block; \"batched matmuls\": products of two activations (not weight "
            f"projections) in one pass.\n\n{slopes}\n\n"
            + "".join(f"- {line}\n" for line in skipped)
            + f"\n## Latency, counted operations, largest buffer\n\n{tables}\n\n"
            f"## Where the time goes at k = {profile_k} (Fig. 1, left)\n\n"
            "Each operation's wall time from the `npvit.opcount` timeline (the time since the "
            "previous reported operation), summed over a unit's heads, median of 5 passes.\n\n"
            f"{ops}\n")
        write_atomically(args.markdown, lambda f: f.write(text), mode="w")
        print(f"table: {args.markdown}")
    return 0


def add_parser(sub):
    p = sub.add_parser("bench", help="benchmarks (npvit bench attention | models)")
    what = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    what.required = True

    a = what.add_parser("attention", help="latency and operations of MHA, Linformer and separable "
                                          "attention against the number of tokens (paper Fig. 1)")
    a.add_argument("--dim", type=int, default=512, help="token width d (default 512)")
    a.add_argument("--heads", type=int, default=8, help="heads of MHA and Linformer (default 8)")
    a.add_argument("--proj-len", type=int, default=256, help="Linformer's p (default 256)")
    a.add_argument("--min-k", type=int, default=256)
    a.add_argument("--max-k", type=int, default=16384)
    a.add_argument("--mha-max-k", type=int, default=None,
                   help="largest k for MHA (default: as large as fits in memory)")
    a.add_argument("--repeats", type=int, default=3, help="passes per point; the fastest counts")
    a.add_argument("--large-k", type=int, default=2048, help="fit the headline slope on k >= this")
    a.add_argument("--quick", action="store_true", help="k = 64 ... 256, one pass each (a smoke test)")
    a.add_argument("--plot", default="attention_latency.png", help="where to save the log-log PNG")
    a.add_argument("--markdown", help="also write the table and slopes as Markdown here")
    a.add_argument("--units", choices=("paper", "all"), default="paper",
                   help="paper: MHA, Linformer, separable (default); all: also the efficient-"
                        "attention zoo (EfficientViT, EfficientFormer, TinyViT, LookupViT, MPCViT), "
                        "medians after a warm-up, per-operation times; --mha-max-k then caps every "
                        "unit with k x k arrays")
    a.set_defaults(func=run_attention)

    m = what.add_parser("models", help="npvit against PyTorch eager (timm) on one thread: inference, "
                                       "training step, memory, GFLOP/s (benchmarks/models.py)")
    if MODELS_BENCHMARK.exists():
        _models_benchmark().add_arguments(m)
    m.set_defaults(func=run_models)
