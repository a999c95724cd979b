"""Classifying images with a MobileViT, no framework: the pieces `npvit predict`, `npvit eval`
and `npvit verify` share, usable from Python too.

    model, source = load_model("mobilevitv2_050")              # official weights from the cache
    model, source = load_model(weights="mobilevit_s.pt")        # a file; the variant is detected
    x = preprocess_batch([load_image("cat.jpg")], pipeline_for(model.name))
    probs = classify(model, x)                                  # float32 (1, 1000)
    for row in top_k(probs[0], 5):
        print(row.rank, row.label, f"{row.prob:.1%}")

Where the weights come from (`load_model`), in this order:
  1. ``weights=PATH``: that checkpoint, any format and key layout npvit reads (.pt/.pth in the
     ml-cvnets, Hugging Face or timm layout, .safetensors, .npz), checked strictly against the
     model — a file for another variant is refused in one line saying which it holds. A
     model file written by `npvit finetune` (npvit.weights.meta) also brings its number of
     classes and their names (``model.meta``; `class_names`), and `model_file_settings` its
     input size and preprocessing.
  2. the official weights in the cache (``npvit download NAME`` puts them there; a cached
     official ``.pt`` without its ``.npz`` is converted once, offline).
  3. ``download=True``: fetch them (the only case that touches the network).
  4. ``fallback_random=True``: an untrained network with random weights (seeded), and the
     description says "RANDOM weights". Otherwise an NpvitError saying how to get weights.
Nothing downloads unless asked: a command that silently pulled tens of megabytes (or hung
without network) on a first run would surprise more than it helps.
"""
from __future__ import annotations

import functools
import os
import tracemalloc
from typing import NamedTuple

import numpy as np

from . import opcount
from .data import DEFAULT_CROP_SIZE, MIN_SIDE, PIPELINES, default_pipeline, imagenet_classes
from .errors import NpvitError
from .functional import softmax_forward
from .functional.cache_blocks import BLOCK_BYTES
from .models import MobileViTNet, create_model, list_models
from .nn import no_grad
from .weights import (cache_dir, convert_cached, convert_checkpoint, load_model_file,
                      local_weights, official, pretrained_path, read_model_meta)
from .weights.keymap import LAYOUT_NAMES

# The smallest MobileViTv2 (1.37 M parameters, 70.18% top-1): quick on a laptop CPU, and its
# ml-cvnets v0.2 preprocessing (PIL bicubic, RGB) needs nothing beyond Pillow.
DEFAULT_MODEL = "mobilevitv2_050"

# --preprocess: "cvnets" = the pipeline the model family's official checkpoints were evaluated
# with (cvnets-v1 for v1, cvnets-v2 for v2), or any pipeline by its name in npvit.data.
PREPROCESS_CHOICES = ("cvnets", *PIPELINES)

RANDOM_WEIGHTS = "RANDOM weights (untrained)"


class Prediction(NamedTuple):
    rank: int     # 1 = most probable
    index: int    # output index 0..999
    wnid: str     # WordNet id, e.g. "n03763968"
    label: str    # short readable name (the first WordNet lemma), e.g. "military uniform"
    prob: float   # softmax probability


def pipeline_for(model_name: str, preprocess: str | None = "cvnets") -> str:
    """The npvit.data pipeline name for ``--preprocess`` (None or "cvnets": the family default)."""
    if preprocess in (None, "cvnets"):
        return default_pipeline(model_name)
    if preprocess not in PIPELINES:
        raise NpvitError(f"unknown preprocessing {preprocess!r}; choose one of "
                         f"{', '.join(PREPROCESS_CHOICES)}")
    return preprocess


def model_file_settings(weights, preprocess: str | None = None, size: int | None = None
                        ) -> tuple[dict | None, str | None, int, int | None]:
    """(meta, preprocess, size, resize size) for a command given ``--weights``: what the user
    did not give comes from the model file's meta when it has one (its pipeline, its input
    size and resize size), else the defaults (None = the family's pipeline; 256)."""
    meta = read_model_meta(weights) if weights is not None else None
    resize = None
    if meta is not None:
        if meta["preprocess"] not in PIPELINES:
            raise NpvitError(f"{weights}: its preprocessing {meta['preprocess']!r} is not one "
                             f"of this npvit's ({', '.join(PIPELINES)})")
        if preprocess is None:
            preprocess = meta["preprocess"]
        if size is None:
            size, resize = meta["input_size"], meta.get("resize_size")
    return meta, preprocess, DEFAULT_CROP_SIZE if size is None else size, resize


def missing_weights_message(name: str) -> str:
    """One line: no official weights for ``name`` here, and the ways to get some."""
    return (f"no official weights for {name} in {cache_dir()}: run `npvit download {name}` "
            f"(or add --download), or pass --weights PATH to a checkpoint you fetched "
            f"({official(name).url})")


def load_model(name: str | None = None, weights=None, fallback_random: bool = False,
               download: bool = False, seed: int = 0) -> tuple[MobileViTNet, str]:
    """(model in eval mode, one line saying where its weights came from); see the module
    docstring for the order. ``name`` may be None when ``weights`` is given: the variant is then
    detected from the checkpoint's keys and shapes. ``seed`` fixes the random weights."""
    if name is not None and name not in list_models("all"):
        raise NpvitError(f"unknown model {name!r}; choose one of {', '.join(list_models('all'))}")
    if weights is not None:
        loaded = load_model_file(weights, model=name)   # a file of another variant: one line
        model = create_model(loaded.model, num_classes=loaded.num_classes)
        model.load_state_dict(loaded.state)
        model.meta = loaded.meta
        what = (f"{loaded.num_classes} classes" if loaded.meta
                else f"{LAYOUT_NAMES[loaded.layout]} layout")
        source = f"weights {weights} ({what})"
    else:
        name = name or DEFAULT_MODEL
        path = local_weights(name)
        if path is None and download:
            path = pretrained_path(name)   # downloads and converts; offline: one-line NpvitError
        if path is not None:
            model = create_model(name)
            model.load_state_dict(convert_cached(path, name).state)
            source = f"official weights ({path})"
        elif fallback_random:
            model, source = create_model(name, seed=seed), RANDOM_WEIGHTS
        else:
            raise NpvitError(missing_weights_message(name))
    return model.eval(), source


def predict_logits(model: MobileViTNet, batch) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> logits (N, num_classes), one inference pass (no caches kept).
    NaN/Inf, a wrong shape or sides below 32 px raise NpvitError (a ValueError)."""
    if model.training:
        raise NpvitError("the model is in training mode (BatchNorm would use the batch's "
                         "statistics); call model.eval() first")
    with no_grad():
        return model(batch)


def classify(model: MobileViTNet, batch) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> float32 class probabilities (N, num_classes), rows sum to 1."""
    # softmax in float64: float32 logits far apart would otherwise round small probabilities
    # to exactly 0 a little sooner; the result is returned in float32 like the model's output.
    probabilities, _ = softmax_forward(predict_logits(model, batch).astype(np.float64))
    return probabilities.astype(np.float32)


def top_k(probabilities, k: int = 5, class_names: list[str] | None = None) -> list[Prediction]:
    """The ``k`` most probable classes of ONE image's probabilities, best first (all of them
    when there are fewer than k); equal probabilities are ordered by class index.
    class_names None: the 1000 ImageNet classes (wnid and name); else the names of the
    model's outputs (wnid "")."""
    probabilities = np.asarray(probabilities)
    if class_names is None:
        imagenet = imagenet_classes()
        wnids, names = [c.wnid for c in imagenet], [c.name for c in imagenet]
    else:
        wnids, names = [""] * len(class_names), list(class_names)
    if probabilities.shape != (len(names),):
        raise NpvitError(f"expected one image's {len(names)} class probabilities, "
                         f"got shape {probabilities.shape}")
    if k < 1:
        raise NpvitError(f"top-k needs k >= 1, got {k}")
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Prediction(rank, int(i), wnids[i], names[i], float(probabilities[i]))
            for rank, i in enumerate(order, start=1)]


def class_names(model: MobileViTNet) -> tuple[list[str] | None, str | None]:
    """(names of the model's outputs, a one-line note or None). From the model file's meta
    when it has one; None (= ImageNet, for `top_k`) for 1000 outputs without one; otherwise
    "class 0" ... "class K-1", with a note saying the file names no classes."""
    if model.meta is not None:
        return list(model.meta["classes"]), None
    k = model.head.fc.weight.shape[0]
    if k == 1000:
        return None, None
    return [f"class {i}" for i in range(k)], (
        f"the weights name none of their {k} classes, so they are labelled class 0 ... "
        f"class {k - 1} (npvit finetune writes the names into model.npz)")


# --- will an input size fit in memory? ------------------------------------------------------------
# The working set of one pass grows as size^2 (feature maps) and, for MobileViT v1, as size^4
# (each (P*h, N, N) attention map has N ~ (size/16)^2 patches at output stride 8): predict
# --size 2048 on v1 would ask for 16 GiB per attention map. `check_size` measures the pass at two
# small sizes and refuses, up front and in one line, a size whose estimate exceeds the memory
# this process may still use.
_CALIBRATION_SIZES = (64, 128)


@functools.lru_cache(maxsize=None)
def _calibrate(name: str, training: bool) -> tuple[float, float, float, int, float]:
    """(a, b, map_item, map_items, maps_total) for model ``name``, one image: the measured peak
    of new allocations is a + b * size^2 plus the attention maps (v1; none for v2, whose context
    scores grow as size^2 and are part of b). At size S one map of the largest layer takes
    map_item * (S / 64)^4 bytes per (image, pixel position), and that layer has map_items of
    them; all of them together take maps_total * (S / 64)^4. Measured with tracemalloc (NumPy
    reports its buffers to it) at sizes 64 and 128."""
    model = create_model(name)
    model.train(training)
    peaks, attention = [], []
    if training:   # the first backward allocates every parameter's .grad; keep that out of b
        y = model(np.zeros((1, 3, MIN_SIDE, MIN_SIDE), np.float32))
        model.backward(np.ones_like(y))
    for size in _CALIBRATION_SIZES:
        x = np.full((1, 3, size, size), 0.5, np.float32)
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        with opcount.count_ops() as counter:
            if training:
                model.backward(np.ones_like(model(x)))
            else:
                with no_grad():
                    model(x)
        peak = tracemalloc.get_traced_memory()[1] - start
        if not tracing:
            tracemalloc.stop()
        # v1 MHA reports each cache block of its (items, h, N, N) scores; at these sizes one
        # block holds every item of a layer
        maps = [op for op in counter.ops if op.name == "softmax over keys"]
        largest = max(maps, key=lambda op: op.nbytes, default=None)
        scale = (size / _CALIBRATION_SIZES[0]) ** 4
        item, items = (largest.nbytes / largest.shape[0], largest.shape[0]) if largest else (0, 1)
        total = sum(op.nbytes for op in maps)
        attention.append((item / scale, items, total / scale))
        peaks.append(peak - (total if training else (largest.nbytes if largest else 0)))
    (s0, s1), (p0, p1) = _CALIBRATION_SIZES, peaks
    b = max(p1 - p0, 0) / (s1 ** 2 - s0 ** 2)
    a = max(p0 - b * s0 ** 2, 0)
    return a, b, *attention[0]


def working_set_bytes(name: str, size: int, batch: int = 1, training: bool = False,
                      capture: bool = False) -> float:
    """Estimated peak memory (bytes, float32) of one pass of model ``name`` on ``batch`` images of
    ``size`` x ``size``: inference (under no_grad, one image at a time, so ``batch`` does not
    matter; ``capture``: every layer's attention map kept, as viz.capture does) or a training
    step (forward + backward, every layer's cache alive). Within about 10% of the peak RSS
    measured for v1 and v2 models at sizes 256-1024."""
    a, b, item, items, total = _calibrate(name, training)
    growth = (size / _CALIBRATION_SIZES[0]) ** 4
    item *= growth
    # the softmax runs over cache-sized blocks of the items (functional/cache_blocks.py): the
    # scores of one block are alive at a time, unless the maps are kept
    block = item * min(items, max(1, BLOCK_BYTES // max(item, 1)))
    if training:
        # every layer's map is cached for backward, and backward makes a few blocks' worth
        per_image = b * size ** 2 + total * growth + 3 * block
        return a + batch * per_image
    return a + b * size ** 2 + (total * growth if capture else block)


def available_memory_bytes() -> int | None:
    """What this process may still allocate: the system's available memory (Linux
    /proc/meminfo MemAvailable), lowered to what an address-space limit (ulimit -v) leaves;
    None where neither is known."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(max(soft - used, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def largest_size(name: str, budget: float, batch: int = 1, training: bool = False,
                 capture: bool = False, step: int = 32) -> int:
    """The largest multiple of ``step`` whose working set fits ``budget`` bytes (MIN_SIDE when
    only that does); 0 when not even MIN_SIDE fits."""
    def fits(size):
        return working_set_bytes(name, size, batch, training, capture) <= budget

    if not fits(MIN_SIDE):
        return 0
    low, high = 1, 2          # in units of step; fits(low * step) holds, fits(high * step) not yet known
    while fits(high * step):
        low, high = high, high * 2
    while high - low > 1:     # working_set_bytes grows with size: bisect between low and high
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid * step) else (low, mid)
    return max(low * step, MIN_SIDE)


# Room left for everything else (decoded images, Python, the figure): use at most this share.
MEMORY_SHARE = 0.8


def check_size(name: str, size: int, batch: int = 1, training: bool = False,
               capture: bool = False, option: str = "--size") -> None:
    """Refuse, in one NpvitError line, an input ``size`` below MIN_SIDE or whose working set
    (working_set_bytes) would not fit in MEMORY_SHARE of the memory this process may still use,
    naming the largest size that does. Used by predict, eval and scoremap (inference; scoremap
    with capture=True) and finetune (training=True with its batch size)."""
    if size < MIN_SIDE:
        raise NpvitError(f"{option} must be at least {MIN_SIDE}, got {size}")
    available = available_memory_bytes()
    if available is None:
        return
    budget = MEMORY_SHARE * available
    need = working_set_bytes(name, size, batch, training, capture)
    if need <= budget:
        return
    fits = largest_size(name, budget, batch, training, capture)
    what = f"a training step on {batch} image(s)" if training else "inference"
    advice = (f"the largest {option} that fits is {fits}" if fits
              else "not even the smallest size fits; free some memory")
    raise NpvitError(f"{option} {size} is too large for {name}: {what} would need about "
                     f"{need / 2**30:.1f} GiB, and {available / 2**30:.1f} GiB are available; "
                     f"{advice}")
