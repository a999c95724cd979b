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
from npvit.nn import (BatchNorm2d, Conv2d, ConvNormAct, GroupNorm, LayerNorm, Linear, SiLU,
                      no_grad)
from npvit.nn.attention import LinformerAttention, MultiHeadAttention, SeparableSelfAttention
from npvit.bench.machine import cpu_and_numpy
from npvit.opcount import count_ops
from npvit.threads import cpu_count

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


def load_onnxruntime():
    """onnxruntime, or None when it (or onnx, which torch's exporter needs) is not installed."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def onnx_twin(torch, ref, size: int) -> bytes:
    """The timm model (npvit's weights) exported to ONNX with a dynamic batch axis."""
    import io
    import warnings
    buffer = io.BytesIO()
    ref.eval()
    with warnings.catch_warnings():          # the tracer's notes about timm's shape checks
        warnings.simplefilter("ignore")
        torch.onnx.export(ref, (torch.zeros(1, 3, size, size),), buffer, dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    return buffer.getvalue()


def ort_session(ort, model_bytes: bytes, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_inference(session, x):
    def run():
        return session.run(None, {"x": x})[0]
    return run


def with_threads(n: int, run, torch=None):
    """``run`` with npvit's (or, given torch, torch's) thread count set to n first."""
    def threaded():
        if torch is None:
            npvit.set_num_threads(n)
        else:
            torch.set_num_threads(n)
        return run()
    return threaded


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



# --- op classes against the machine's limits ---------------------------------------------------
def machine_limits(repeats: int = 5) -> dict:
    """This core's ceilings, best of ``repeats``: memory bandwidth as np.copyto (bytes read +
    written / time) of 256 MiB, far beyond the caches, and of 4 MiB, the size of a batch-1
    feature map at 256x256 (as the ops see it: from L2/L3); and the SGEMM rate of one 2048^3
    float32 matmul (BLAS is on one thread here)."""
    big = np.ones(64 * 2**20, dtype=np.float32)
    big_out = np.empty_like(big)
    small = np.ones(2**20, dtype=np.float32)
    small_out = np.empty_like(small)
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    dram_s, cache_s, gemm_s = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(big_out, big)
        dram_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(20):
            np.copyto(small_out, small)
        cache_s.append((time.perf_counter() - start) / 20)
        start = time.perf_counter()
        a @ a
        gemm_s.append(time.perf_counter() - start)
    return {"copy_dram_gb_per_s": 2 * big.nbytes / min(dram_s) / 1e9,
            "copy_gb_per_s": 2 * small.nbytes / min(cache_s) / 1e9,
            "sgemm_gflop_per_s": 2 * 2048**3 / min(gemm_s) / 1e9}


def _op_class(module) -> tuple[str, str] | None:
    """(op class, method the inference path calls) of the modules the profile times."""
    if isinstance(module, ConvNormAct):           # eval + no_grad: the BatchNorm-folded conv
        conv = module.conv
        depthwise = conv.groups > 1 and conv.weight.shape[1] == 1
        return ("depthwise conv" if depthwise else "dense conv (GEMM)"), "folded_conv_forward"
    if isinstance(module, Conv2d):
        depthwise = module.groups > 1 and module.weight.shape[1] == 1
        return ("depthwise conv" if depthwise else "dense conv (GEMM)"), "forward"
    if isinstance(module, Linear):
        return "linear (GEMM)", "forward"
    if isinstance(module, SiLU):
        return "SiLU", "forward"
    if isinstance(module, (BatchNorm2d, LayerNorm, GroupNorm)):
        return "norm", "forward"
    if isinstance(module, (MultiHeadAttention, LinformerAttention, SeparableSelfAttention)):
        return "attention (projections, products, softmax)", "forward"
    return None


def _cost(module, x, out) -> tuple[int, int]:
    """(multiply-adds, compulsory bytes: input + weight read once, output written once)."""
    weight = getattr(getattr(module, "conv", module), "weight", None)
    w = weight.data if weight is not None else None
    moved = x.nbytes + out.nbytes + (w.nbytes if w is not None else 0)
    if isinstance(module, (ConvNormAct, Conv2d, Linear)):
        return out.size * w[0].size, moved
    return 0, moved


def op_class_profile(model, x, repeats: int) -> dict:
    """Own time (median over ``repeats`` inference passes), calls, multiply-adds and compulsory
    bytes per op class of one pass (each timed module's own time, its timed children
    subtracted; "other" is the rest of the pass: patch unfold/fold, residual adds, pooling,
    Python); total_s is the sum of the classes' medians. Attention modules take their counts
    from ``npvit.opcount``, which their functions report to."""
    stats: dict[str, dict] = {}
    children = [0.0]                              # time of timed children, per open call

    def timed(module, op_class, method):
        inner = getattr(module, method)

        def run(inp, *rest):
            children.append(0.0)
            start = time.perf_counter()
            if op_class.startswith("attention"):
                with count_ops() as counter:
                    out = inner(inp, *rest)
                macs, moved = counter.macs, counter.bytes_moved
            else:
                out = inner(inp, *rest)
                macs = moved = None
            elapsed = time.perf_counter() - start
            own = elapsed - children.pop()
            children[-1] += elapsed
            if macs is None:
                macs, moved = _cost(module, inp, out)
            row = stats.setdefault(op_class, {"calls": 0, "seconds": 0.0, "macs": 0, "bytes": 0})
            row["calls"] += 1
            row["seconds"] += own
            row["macs"] += macs
            row["bytes"] += moved
            return out
        return run

    wrapped = []
    for module in model.modules():
        found = _op_class(module)
        if found:
            object.__setattr__(module, found[1], timed(module, *found))   # shadows the method
            wrapped.append((module, found[1]))
    run = npvit_inference(model, x)
    passes = []
    try:
        run()                                     # warm-up, not counted
        for _ in range(repeats):
            stats.clear()
            start = time.perf_counter()
            run()
            total = time.perf_counter() - start
            stats["other"] = {"calls": 0, "seconds": total - sum(r["seconds"] for r in stats.values()),
                              "macs": 0, "bytes": 0}
            passes.append((total, {k: dict(v) for k, v in stats.items()}))
    finally:
        for module, method in wrapped:
            del module.__dict__[method]
    # Medians over the passes, per class and of the whole pass (a busy machine slows some passes).
    classes = passes[0][1]
    for name, row in classes.items():
        row["seconds"] = float(np.median([p[name]["seconds"] for _, p in passes]))
    return {"total_s": sum(r["seconds"] for r in classes.values()), "classes": classes}


def op_class_rows(profile: dict, limits: dict) -> list[dict]:
    """Per op class: achieved GFLOP/s and GB/s, and how far the time is above the op's own
    limit: the larger of (its FLOPs at the SGEMM rate) and (its compulsory bytes at the copy
    bandwidth)."""
    rows = []
    for name, r in sorted(profile["classes"].items(), key=lambda kv: -kv[1]["seconds"]):
        s = r["seconds"]
        bound = max(2 * r["macs"] / (limits["sgemm_gflop_per_s"] * 1e9),
                    r["bytes"] / (limits["copy_gb_per_s"] * 1e9))
        rows.append({"class": name, "calls": r["calls"], "ms": s * 1e3,
                     "share": s / profile["total_s"],
                     "gflop_per_s": 2 * r["macs"] / s / 1e9 if r["macs"] and s > 0 else None,
                     "gb_per_s": r["bytes"] / s / 1e9 if r["bytes"] and s > 0 else None,
                     "bound_ms": bound * 1e3 if bound else None,
                     "over_bound": s / bound if bound and s > 0 else None})
    return rows


# --- machine --------------------------------------------------------------------------------------
def machine_info(frameworks) -> dict:
    info = cpu_and_numpy()
    try:
        from threadpoolctl import threadpool_info
        kernels = sorted({f"{p['internal_api']} {p.get('architecture')}" for p in threadpool_info()})
    except ImportError:
        kernels = []
    info.update(blas_kernels=kernels, python=platform.python_version(),
                threads={v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                                                       "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE")},
                load_average_at_start=os.getloadavg()[0],
                malloc_kept=npvit.heap.kept)             # set by `import npvit` (npvit/heap.py)
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
              "memory": [], "models": {}, "threads": [], "op_classes": {}}
    npvit.set_num_threads(1)                     # one image at a time, BLAS pinned to one thread
    result["limits"] = machine_limits()
    print(f"machine limits (one thread): {result['limits']}", flush=True)
    ort = load_onnxruntime() if frameworks else None
    cores = args.threads or cpu_count()
    rng = np.random.default_rng(0)
    for name in args.models:
        model = npvit_model(name)
        ref = timm_twin(frameworks[1], frameworks[0], model) if frameworks else None
        onnx_bytes = onnx_twin(frameworks[0], ref, args.size) if ort is not None else None
        session = ort_session(ort, onnx_bytes, 1) if ort is not None else None
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
            if session is not None:
                info["max_abs_logit_difference_onnxruntime"] = float(
                    np.abs(ours - ort_inference(session, probe)()).max())
        result["models"][name] = info
        print(f"{name}: {info}", flush=True)

        for batch in args.batches:
            x = rng.random((batch, 3, args.size, args.size), dtype=np.float32)
            runs = {"npvit": npvit_inference(model, x)}
            if ref is not None:
                runs["torch"] = torch_inference(frameworks[0], ref, x)
            if session is not None:
                runs["onnxruntime"] = ort_inference(session, x)
            row = summarise(name, batch, interleaved_times(runs, args.repeats),
                            info["macs_per_image"] * batch)
            result["inference"].append(row)
            print(format_row("inference", row), flush=True)

        # thread scaling: the largest batch on one thread and on every CPU, all interleaved
        batch = max(args.batches)
        x = rng.random((batch, 3, args.size, args.size), dtype=np.float32)
        runs = {}
        for n in sorted({1, cores}):
            runs[f"npvit {n}"] = with_threads(n, npvit_inference(model, x))
            if ref is not None:
                runs[f"torch {n}"] = with_threads(n, torch_inference(frameworks[0], ref, x),
                                                  frameworks[0])
            if ort is not None:
                runs[f"onnxruntime {n}"] = ort_inference(
                    session if n == 1 else ort_session(ort, onnx_bytes, n), x)
        times = interleaved_times(runs, args.repeats)
        npvit.set_num_threads(1)
        if ref is not None:
            frameworks[0].set_num_threads(1)
        for key, ts in times.items():
            framework, n = key.rsplit(" ", 1)
            result["threads"].append({"model": name, "batch": batch, "framework": framework,
                                      "threads": int(n), "s": float(np.median(ts)),
                                      "all_s": [float(t) for t in ts]})
            print(f"threads       {name:16s} batch {batch}: {key:14s} {np.median(ts) * 1e3:8.1f} ms",
                  flush=True)

        probe_profile = op_class_profile(model, probe, args.profile_repeats)
        result["op_classes"][name] = {"batch": 1, "total_s": probe_profile["total_s"],
                                      "rows": op_class_rows(probe_profile, result["limits"])}

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
    result["onnxruntime"] = ort.__version__ if ort is not None else None
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
    if "onnxruntime_s" in row:
        row["ort_ratio"] = row["npvit_s"] / row["onnxruntime_s"]
    return row


def format_row(what, row) -> str:
    text = f"{what:13s} {row['model']:16s} batch {row['batch']}: npvit {row['npvit_s'] * 1e3:8.1f} ms"
    if "torch_s" in row:
        text += f"   torch {row['torch_s'] * 1e3:8.1f} ms   npvit/torch {row['ratio']:.2f}"
    if "onnxruntime_s" in row:
        text += (f"   onnxruntime {row['onnxruntime_s'] * 1e3:8.1f} ms   "
                 f"npvit/ORT {row['ort_ratio']:.2f}")
    return text


# --- report ---------------------------------------------------------------------------------------
def _ms(v):
    return "—" if v is None else f"{v * 1e3:.1f}"


def _num(v, digits=1):
    return "—" if v is None else f"{v:.{digits}f}"


def _share(v, limit):
    return "—" if v is None else f"{v / limit:.0%}"


def _mib(v):
    return "—" if v is None else f"{v / 2**20:.0f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    torch_line = f", torch {m['torch']} / timm {m['timm']} (torch threads {m['torch_threads']})" \
        if "torch" in m else " (torch not installed: npvit only)"
    ort_line = f", ONNX Runtime {result['onnxruntime']}" if result.get("onnxruntime") else \
        " (onnxruntime not installed)"
    lines = [
        "# Speed: npvit against PyTorch eager, one CPU thread", "",
        f"Produced by `{result['command']}` on {result['date']}.", "",
        f"- Machine: {m['cpu']}; Python {m['python']}, NumPy {m['numpy']} with {m['numpy_blas']}"
        f"{torch_line}{ort_line}.",
        f"- CPU flags: {' '.join(m['cpu_flags'])}; NumPy SIMD baseline {' '.join(m['simd_baseline'])}, "
        f"dispatch targets available {' '.join(m['simd_dispatch_available'])}; BLAS kernels "
        f"{', '.join(m['blas_kernels']) or 'unknown'}.",
        f"- Threads pinned to 1: {', '.join(f'{k}={v}' for k, v in m['threads'].items())} in the "
        "environment before NumPy/torch load (OMP_WAIT_POLICY=PASSIVE unless set: idle OpenMP threads "
        "sleep rather than spin; OPENBLAS_CORETYPE as the machine set it), `torch.set_num_threads(1)` "
        "and `npvit.set_num_threads(1)` (threadpoolctl) except in the thread-scaling rows.",
        "- Memory: " + ("glibc's malloc keeps freed blocks for reuse (`npvit.heap`, done by `import "
                        "npvit`: mmap threshold 256 MiB, trim threshold 2 GiB); it holds for the whole "
                        "process, so torch and ONNX Runtime run with it too."
                        if m.get("malloc_kept") else "malloc as the system sets it (`npvit.heap` "
                        "did not apply: not glibc, or NPVIT_KEEP_FREED_MEMORY=0)."),
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
    ort = any("onnxruntime_s" in r for r in result["inference"])
    for title, rows in (("Inference", result["inference"]),
                        ("Training step (forward + backward, no optimiser)", result["training"])):
        with_ort = ort and rows is result["inference"]
        extra_head = " ONNX Runtime ms | npvit / ORT |" if with_ort else ""
        lines += ["", f"## {title}", "",
                  "| model | batch | npvit ms | torch ms | npvit / torch |" + extra_head
                  + " npvit GFLOP/s | torch GFLOP/s |",
                  "|---|---:|---:|---:|---:|" + ("---:|---:|" if with_ort else "") + "---:|---:|"]
        for r in rows:
            ratio = f"**{r['ratio']:.2f}**" if "ratio" in r else "—"
            torch_gflops = f"{r['torch_gflops']:.2f}" if "torch_gflops" in r else "—"
            extra = (f" {_ms(r.get('onnxruntime_s'))} | **{r['ort_ratio']:.2f}** |"
                     if with_ort else "")
            lines.append(f"| {r['model']} | {r['batch']} | {_ms(r['npvit_s'])} | {_ms(r.get('torch_s'))} | "
                         f"{ratio} |{extra} {r['npvit_gflops']:.2f} | {torch_gflops} |")
        if rows is result["inference"] and result["threads"]:
            lines += ["", "### Thread scaling", "",
                      "The largest batch on one thread and on n threads (`--threads`, default every "
                      "CPU), all runs "
                      "interleaved (npvit: `npvit.set_num_threads(n)`, images in a pool of n "
                      "threads, BLAS on one; torch: `torch.set_num_threads(n)`; ONNX Runtime: "
                      "`intra_op_num_threads = n`). Speed-up = one thread's time / n threads'.", "",
                      "| model | batch | framework | threads | ms | speed-up | npvit / this |",
                      "|---|---:|---|---:|---:|---:|---:|"]
            by_key = {(t["model"], t["framework"], t["threads"]): t["s"] for t in result["threads"]}
            for t in result["threads"]:
                one = by_key[(t["model"], t["framework"], 1)]
                ours = by_key[(t["model"], "npvit", t["threads"])]
                lines.append(f"| {t['model']} | {t['batch']} | {t['framework']} | {t['threads']} | "
                             f"{t['s'] * 1e3:.1f} | {one / t['s']:.2f} | {ours / t['s']:.2f} |")
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
    limits = result["limits"]
    lines += ["", "## Each op class against its own limit (batch 1, one thread)", "",
              f"Machine limits measured in the same process: memory bandwidth (np.copyto, bytes read + "
              f"written) {limits['copy_gb_per_s']:.1f} GB/s on 4 MiB arrays (the size of a batch-1 "
              f"feature map, served from the caches), {limits['copy_dram_gb_per_s']:.1f} GB/s on "
              f"256 MiB (DRAM); SGEMM (2048^3 float32) {limits['sgemm_gflop_per_s']:.1f} GFLOP/s. "
              "Per op class: own time (timed modules, their timed children subtracted; \"other\" is "
              "the rest of the pass: patch unfold/fold, residual adds, pooling, Python), achieved "
              "GFLOP/s (2 x multiply-adds / time) and GB/s of the compulsory traffic (every input and "
              "weight read once, the output written once), and the bound = max(FLOPs at the SGEMM "
              "rate, compulsory bytes at the 4 MiB copy bandwidth): time / bound is how far the op "
              "is from its own limit.", ""]
    for name, prof in result["op_classes"].items():
        lines += [f"**{name}** (one pass {prof['total_s'] * 1e3:.1f} ms)", "",
                  "| op class | calls | ms | share | GFLOP/s | % of SGEMM | GB/s | % of copy | "
                  "bound ms | time / bound |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in prof["rows"]:
            gf, gb, bound, over = r["gflop_per_s"], r["gb_per_s"], r["bound_ms"], r["over_bound"]
            lines.append(
                f"| {r['class']} | {r['calls']} | {r['ms']:.2f} | {r['share']:.0%} | {_num(gf)} | "
                f"{_share(gf, limits['sgemm_gflop_per_s'])} | {_num(gb)} | "
                f"{_share(gb, limits['copy_gb_per_s'])} | {_num(bound, 2)} | "
                f"{'—' if over is None else f'**{over:.1f}**'} |")
        lines.append("")
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
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="thread count of the thread-scaling rows beside 1 (default 0: every CPU)")
    p.add_argument("--profile-repeats", type=int, default=5,
                   help="batch-1 passes the op-class table averages (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="64x64, batches 1 and 2, one timed run each: a smoke test")
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--markdown", type=Path, help="write the tables here (notes below the "
                                                 "marker line of an existing file are kept)")


def argv_from(args) -> list[str]:
    """The command line that reproduces ``args`` (for the single-threaded child process)."""
    argv = ["--models", *args.models, "--size", str(args.size), "--batches", *map(str, args.batches),
            "--train-batch", str(args.train_batch), "--repeats", str(args.repeats),
            "--train-repeats", str(args.train_repeats), "--profile-top", str(args.profile_top),
            "--profile-repeats", str(args.profile_repeats), "--threads", str(args.threads)]
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
        # OMP_WAIT_POLICY=PASSIVE: OpenMP threads (torch's, at n > 1 in the thread rows) sleep
        # instead of spinning when idle; on a busy machine spinning threads slowed torch 5-15x
        # and everything interleaved after them.
        env = {**os.environ, **{v: "1" for v in THREAD_VARIABLES}}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return subprocess.call([sys.executable, __file__, *argv], env=env)
    parser = argparse.ArgumentParser(prog="npvit bench models", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads < 0:
        print(f"npvit: error: --threads must be 0 (every CPU) or a positive number, got "
              f"{args.threads}", file=sys.stderr)
        return 2
    if args.quick:
        args.size, args.batches, args.train_batch = 64, [1, 2], 2
        args.repeats = args.train_repeats = args.profile_repeats = 1
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
