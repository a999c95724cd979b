"""npvit against PyTorch eager (timm) on one CPU thread: inference, a training step, memory.

Run it as ``npvit bench models [--quick]``: that command starts this script with
OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and VECLIB_MAXIMUM_THREADS set to 1
(BLAS libraries read them once, when NumPy or torch is first imported, so they must be set
before either loads); here ``torch.set_num_threads(1)`` pins torch's intra-op pool too.
The script lives outside the ``npvit`` package because it imports torch and timm, which npvit's
runtime never does; without them it measures npvit alone.

What is measured, per model (the same weights in both frameworks: npvit's random init is
loaded into the timm model, and the logits are compared as a sanity check):
* inference: eval mode, npvit under ``no_grad()`` (its fast path: BatchNorm folded into the
  convs, in-place activations) and torch under ``inference_mode()``; every batch size;
* a training step: train mode, forward + backward of the logits (no optimiser), gradients
  reset before each step in both frameworks;
* times: the two frameworks take turns in ONE process (npvit, torch, torch, npvit, ...) after a
  warm-up, so machine noise hits both alike; the table shows medians;
* GFLOP/s = 2 x multiply-adds / median time. Multiply-adds are counted on npvit's forward as it
  runs (every Conv2d and Linear: output size x dot-product length, plus what the attention
  functions report to ``npvit.opcount``); with torch present, torch's FlopCounterMode count of
  the timm model is shown beside it (it agrees on convolutions and linear layers and does not
  see the fused attention kernel);
* peak memory of inference at the largest batch: the high-water mark of the resident set size
  (VmHWM, reset through /proc/self/clear_refs) above the RSS just before the forward, in a
  fresh subprocess per framework, so both are measured the same way; for npvit also the
  tracemalloc peak (NumPy reports its arrays to tracemalloc, torch does not);
* a cProfile of npvit's inference (largest batch, first model): where the time goes.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import os
import platform
import pstats
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import npvit
from npvit.commands.bench import THREAD_VARIABLES
from npvit.nn import Conv2d, Linear, no_grad
from npvit.opcount import count_ops

NOTES_MARKER = ("<!-- Hand-written notes below this line are kept when the benchmark rewrites "
                "the file. -->")


def load_torch():
    """(torch, timm), or None when they are not installed (then only npvit is measured)."""
    try:
        import timm
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch, timm


# --- the two frameworks' runners ----------------------------------------------------------------
def npvit_model(name: str):
    return npvit.create_model(name)


def timm_twin(timm, torch, model):
    """The timm model of the same variant carrying npvit's weights."""
    ref = timm.create_model(model.name, pretrained=False)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return ref


def npvit_inference(model, x):
    model.eval()

    def run():
        with no_grad():
            return model(x)
    return run


def torch_inference(torch, ref, x):
    ref.eval()
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return ref(xt)
    return run


def npvit_train_step(model, x):
    model.train()

    def run():
        model.zero_grad()
        logits = model(x)
        model.backward(np.full_like(logits, 1.0 / logits.size))
    return run


def torch_train_step(torch, ref, x):
    ref.train()
    xt = torch.from_numpy(x)

    def run():
        ref.zero_grad(set_to_none=True)
        logits = ref(xt)
        logits.backward(torch.full_like(logits, 1.0 / logits.numel()))
    return run


def interleaved_times(runs: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each callable over ``repeats`` rounds, taking turns (order reversed every
    other round) after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {key: [] for key in runs}
    order = list(runs)
    for r in range(repeats):
        for key in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - start)
    return times


# --- counting -------------------------------------------------------------------------------------
def count_macs(model, x) -> dict[str, int]:
    """Multiply-adds of one forward pass of ``model`` on ``x``, read off the code that runs:
    {"convs_and_linears": ..., "attention_products": ... (v1's q k^T and A v), "total": ...}.

    Every Conv2d and Linear module adds (output elements) x (length of each dot product:
    C_in / groups * kh * kw, or in_features); the attention functions call their projections
    directly and report them, and their q k^T and A v products, to ``npvit.opcount``. Runs the
    plain eval path (gradients on), where every conv goes through its Conv2d module.
    """
    layers = [m for m in model.modules() if isinstance(m, (Conv2d, Linear))]
    macs = [0]

    def counting(layer):
        plain_forward = type(layer).forward
        per_output = layer.weight.data[0].size          # C_in/groups*kh*kw, or in_features

        def forward(inp):
            out = plain_forward(layer, inp)
            macs[0] += out.size * per_output
            return out
        return forward

    model.eval()
    for layer in layers:
        object.__setattr__(layer, "forward", counting(layer))   # shadows the class method
    try:
        with count_ops() as attention_ops:
            model(x)
    finally:
        for layer in layers:
            del layer.__dict__["forward"]
    for m in model.modules():                            # drop the caches this pass kept
        object.__setattr__(m, "_cache", None)
    products = sum(op.macs for op in attention_ops.ops if op.kind == "matmul")
    convs_and_linears = macs[0] + attention_ops.macs - products
    return {"convs_and_linears": convs_and_linears, "attention_products": products,
            "total": convs_and_linears + products}


def torch_macs(torch, ref, x) -> int:
    """torch's own count (FlopCounterMode / 2). It counts convolutions and linear layers; the
    fused scaled_dot_product_attention kernel timm calls on CPU is not counted."""
    from torch.utils.flop_counter import FlopCounterMode
    ref.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ref(torch.from_numpy(x))
    return counter.get_total_flops() // 2


# --- memory ---------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(framework: str, name: str, batch: int, size: int) -> dict:
    """Runs in a fresh process: peak RSS growth of one inference forward, in bytes."""
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    model = npvit_model(name)
    if framework == "npvit":
        run = npvit_inference(model, x)
    else:
        torch, timm = load_torch()
        run = torch_inference(torch, timm_twin(timm, torch, model), x)
        del model
    Path("/proc/self/clear_refs").write_text("5")       # reset the high-water mark to the RSS
    before = _status_kib("VmRSS")
    run()
    return {"peak_rss_bytes": (_status_kib("VmHWM") - before) * 1024}


def peak_memory_in_subprocess(framework: str, name: str, batch: int, size: int) -> int | None:
    out = subprocess.run([sys.executable, __file__, "--memory-child", framework, name, str(batch),
                          str(size)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"memory of {framework} {name} not measured: {out.stderr.strip()[-300:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def tracemalloc_peak(model, x) -> int:
    run = npvit_inference(model, x)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return peak


# --- profile --------------------------------------------------------------------------------------
def profile_rows(run, top: int) -> list[dict]:
    """The ``top`` functions by own time (tottime) during one call of ``run``."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(s[2] for s in stats.values())
    rows = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else filename
        rows.append({"function": f"{func} ({where})", "calls": ncalls, "own_s": tottime,
                     "cumulative_s": cumtime, "share": tottime / total if total else 0.0})
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:top]


# --- machine --------------------------------------------------------------------------------------
def machine_info(frameworks) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]
        if names:
            cpu = f"{names[0]} ({len(names)} logical CPUs)"
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    info = {"cpu": cpu, "python": platform.python_version(), "numpy": np.__version__,
            "numpy_blas": f"{blas.get('name')} {blas.get('version')}",
            "threads": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                      "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")},
            "load_average_at_start": os.getloadavg()[0]}
    if frameworks is not None:
        torch, timm = frameworks
        info.update(torch=torch.__version__, timm=timm.__version__,
                    torch_threads=torch.get_num_threads())
    return info


# --- the benchmark --------------------------------------------------------------------------------
def measure(args) -> dict:
    frameworks = load_torch()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": args.command, "machine": machine_info(frameworks),
              "image_size": args.size, "repeats": args.repeats, "inference": [], "training": [],
              "memory": [], "models": {}}
    rng = np.random.default_rng(0)
    for name in args.models:
        model = npvit_model(name)
        ref = timm_twin(frameworks[1], frameworks[0], model) if frameworks else None
        probe = rng.random((1, 3, args.size, args.size), dtype=np.float32)
        macs = count_macs(model, probe)
        info = {"parameters": model.num_parameters(), "macs_per_image": macs["total"],
                "attention_product_macs_per_image": macs["attention_products"],
                "conv_linear_macs_per_image": macs["convs_and_linears"]}
        if ref is not None:
            torch = frameworks[0]
            info["torch_macs_per_image"] = torch_macs(torch, ref, probe)
            with no_grad():
                ours = npvit_inference(model, probe)()
            info["max_abs_logit_difference"] = float(np.abs(ours - torch_inference(torch, ref, probe)()
                                                            .numpy()).max())
        result["models"][name] = info
        print(f"{name}: {info}", flush=True)

        for batch in args.batches:
            x = rng.random((batch, 3, args.size, args.size), dtype=np.float32)
            runs = {"npvit": npvit_inference(model, x)}
            if ref is not None:
                runs["torch"] = torch_inference(frameworks[0], ref, x)
            row = summarise(name, batch, interleaved_times(runs, args.repeats),
                            info["macs_per_image"] * batch)
            result["inference"].append(row)
            print(format_row("inference", row), flush=True)

        x = rng.random((args.train_batch, 3, args.size, args.size), dtype=np.float32)
        runs = {"npvit": npvit_train_step(model, x)}
        if ref is not None:
            runs["torch"] = torch_train_step(frameworks[0], ref, x)
        # a training step is forward + backward: about 3x the forward's multiply-adds
        row = summarise(name, args.train_batch, interleaved_times(runs, args.train_repeats),
                        3 * info["macs_per_image"] * args.train_batch)
        result["training"].append(row)
        print(format_row("training step", row), flush=True)
        model.zero_grad()

        batch = max(args.batches)
        x = rng.random((batch, 3, args.size, args.size), dtype=np.float32)
        memory = {"model": name, "batch": batch,
                  "npvit_tracemalloc_bytes": tracemalloc_peak(model, x),
                  "npvit_peak_rss_bytes": peak_memory_in_subprocess("npvit", name, batch, args.size)}
        if ref is not None:
            memory["torch_peak_rss_bytes"] = peak_memory_in_subprocess("torch", name, batch, args.size)
            if memory["npvit_peak_rss_bytes"] and memory["torch_peak_rss_bytes"]:
                memory["ratio"] = memory["npvit_peak_rss_bytes"] / memory["torch_peak_rss_bytes"]
        result["memory"].append(memory)
        print(f"memory {memory}", flush=True)

    name, batch = args.models[0], max(args.batches)
    model = npvit_model(name)
    x = rng.random((batch, 3, args.size, args.size), dtype=np.float32)
    run = npvit_inference(model, x)
    run()
    result["profile"] = {"model": name, "batch": batch, "rows": profile_rows(run, args.profile_top)}
    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    return result


def summarise(name, batch, times, flops_macs) -> dict:
    row = {"model": name, "batch": batch}
    for key, ts in times.items():
        median = float(np.median(ts))
        row[f"{key}_s"] = median
        row[f"{key}_gflops"] = 2 * flops_macs / median / 1e9
        row[f"{key}_all_s"] = [float(t) for t in ts]
    if "torch_s" in row:
        row["ratio"] = row["npvit_s"] / row["torch_s"]
    return row


def format_row(what, row) -> str:
    text = f"{what:13s} {row['model']:16s} batch {row['batch']}: npvit {row['npvit_s'] * 1e3:8.1f} ms"
    if "torch_s" in row:
        text += f"   torch {row['torch_s'] * 1e3:8.1f} ms   npvit/torch {row['ratio']:.2f}"
    return text


# --- report ---------------------------------------------------------------------------------------
def _ms(v):
    return "—" if v is None else f"{v * 1e3:.1f}"


def _mib(v):
    return "—" if v is None else f"{v / 2**20:.0f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    torch_line = f", torch {m['torch']} / timm {m['timm']} (torch threads {m['torch_threads']})" \
        if "torch" in m else " (torch not installed: npvit only)"
    lines = [
        "# Speed: npvit against PyTorch eager, one CPU thread", "",
        f"Produced by `{result['command']}` on {result['date']}.", "",
        f"- Machine: {m['cpu']}; Python {m['python']}, NumPy {m['numpy']} with {m['numpy_blas']}"
        f"{torch_line}.",
        f"- Threads pinned to 1: {', '.join(f'{k}={v}' for k, v in m['threads'].items())} set before "
        "NumPy/torch load, and `torch.set_num_threads(1)`.",
        f"- Load average (1 min) at start {m['load_average_at_start']:.2f}, at end "
        f"{m['load_average_at_end']:.2f} (other processes share the machine).",
        f"- Input {result['image_size']}x{result['image_size']}, float32, random weights (the same "
        "in both frameworks). Medians of "
        f"{result['repeats']} interleaved runs (npvit and torch take turns in one process).",
        "- npvit inference runs in eval mode under `npvit.nn.no_grad()` (BatchNorm folded into the "
        "convs); torch under `torch.inference_mode()`. GFLOP/s = 2 x multiply-adds / time.", "",
        "## Models", "",
        "Multiply-adds per image as npvit counts them while running, split into convolutions and "
        "linear layers, and v1's attention products (q k^T, A v); torch's FlopCounterMode count "
        "(/2) of the timm model covers convolutions and linear layers only (the fused attention "
        "kernel is not counted), so it should equal the first column.", "",
        "| model | parameters | convs + linears | attention products | total | torch FlopCounter / 2 |"
        " max abs logit difference |",
        "|---|---:|---:|---:|---:|---:|---:|"]
    for name, info in result["models"].items():
        has_torch = "torch_macs_per_image" in info
        torch_macs = f"{info['torch_macs_per_image']:,}" if has_torch else "—"
        difference = f"{info['max_abs_logit_difference']:.1e}" if has_torch else "—"
        lines.append(f"| {name} | {info['parameters']:,} | {info['conv_linear_macs_per_image']:,} | "
                     f"{info['attention_product_macs_per_image']:,} | {info['macs_per_image']:,} | "
                     f"{torch_macs} | {difference} |")
    for title, rows in (("Inference", result["inference"]),
                        ("Training step (forward + backward, no optimiser)", result["training"])):
        lines += ["", f"## {title}", "",
                  "| model | batch | npvit ms | torch ms | npvit / torch | npvit GFLOP/s | torch GFLOP/s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            ratio = f"**{r['ratio']:.2f}**" if "ratio" in r else "—"
            torch_gflops = f"{r['torch_gflops']:.2f}" if "torch_gflops" in r else "—"
            lines.append(f"| {r['model']} | {r['batch']} | {_ms(r['npvit_s'])} | {_ms(r.get('torch_s'))} | "
                         f"{ratio} | {r['npvit_gflops']:.2f} | {torch_gflops} |")
    lines += ["", "Training GFLOP/s count a step as 3x the forward's multiply-adds.", "",
              "## Peak memory of inference", "",
              "Growth of the resident set size (high-water mark minus the RSS just before the forward) "
              "in a fresh subprocess per framework; npvit's tracemalloc peak for comparison.", "",
              "| model | batch | npvit RSS MiB | torch RSS MiB | npvit / torch | npvit tracemalloc MiB |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in result["memory"]:
        ratio = f"**{r['ratio']:.2f}**" if "ratio" in r else "—"
        lines.append(f"| {r['model']} | {r['batch']} | {_mib(r['npvit_peak_rss_bytes'])} | "
                     f"{_mib(r.get('torch_peak_rss_bytes'))} | {ratio} | {_mib(r['npvit_tracemalloc_bytes'])} |")
    p = result["profile"]
    lines += ["", f"## Where npvit's inference time goes ({p['model']}, batch {p['batch']}, cProfile)", "",
              "| function | calls | own ms | share |", "|---|---:|---:|---:|"]
    for r in p["rows"]:
        lines.append(f"| `{r['function']}` | {r['calls']} | {r['own_s'] * 1e3:.1f} | {r['share']:.0%} |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, text: str) -> None:
    """Write the generated report, keeping any hand-written notes below NOTES_MARKER."""
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text(text + "\n" + NOTES_MARKER + notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options, shared by ``npvit bench models`` and running this file directly."""
    p.add_argument("--models", nargs="+", default=["mobilevit_xxs", "mobilevitv2_050"],
                   choices=npvit.list_models(), metavar="MODEL",
                   help="default: mobilevit_xxs mobilevitv2_050")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="inference batch sizes")
    p.add_argument("--train-batch", type=int, default=8, help="batch of the training step")
    p.add_argument("--repeats", type=int, default=15, help="timed inference runs per framework")
    p.add_argument("--train-repeats", type=int, default=7, help="timed training steps per framework")
    p.add_argument("--profile-top", type=int, default=12, help="functions in the profile table")
    p.add_argument("--quick", action="store_true",
                   help="64x64, batches 1 and 2, one timed run each: a smoke test")
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--markdown", type=Path, help="write the tables here (notes below the "
                                                 "marker line of an existing file are kept)")


def argv_from(args) -> list[str]:
    """The command line that reproduces ``args`` (for the single-threaded child process)."""
    argv = ["--models", *args.models, "--size", str(args.size), "--batches", *map(str, args.batches),
            "--train-batch", str(args.train_batch), "--repeats", str(args.repeats),
            "--train-repeats", str(args.train_repeats), "--profile-top", str(args.profile_top)]
    if args.quick:
        argv.append("--quick")
    for option in ("json", "markdown"):
        if getattr(args, option):
            argv += [f"--{option}", str(getattr(args, option))]
    return argv


def main(argv: list[str]) -> int:
    if argv[:1] == ["--memory-child"]:
        framework, name, batch, size = argv[1:5]
        print(json.dumps(memory_child(framework, name, int(batch), int(size))))
        return 0
    if not all(os.environ.get(v) == "1" for v in THREAD_VARIABLES):
        print("re-running with " + ", ".join(f"{v}=1" for v in THREAD_VARIABLES)
              + " (BLAS reads them when NumPy loads)", flush=True)
        env = {**os.environ, **{v: "1" for v in THREAD_VARIABLES}}
        return subprocess.call([sys.executable, __file__, *argv], env=env)
    parser = argparse.ArgumentParser(prog="npvit bench models", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.train_batch = 64, [1, 2], 2
        args.repeats = args.train_repeats = 1
    args.command = "npvit bench models " + " ".join(argv)
    result = measure(args)
    text = markdown(result)
    print("\n" + text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"json: {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        write_markdown(args.markdown, text)
        print(f"markdown: {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
