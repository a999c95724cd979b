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
     model — a file for another variant is refused in one line listing what differs.
  2. the official weights in the cache (``npvit download NAME`` puts them there; a cached
     official ``.pt`` without its ``.npz`` is converted once, offline).
  3. ``download=True``: fetch them (the only case that touches the network).
  4. ``fallback_random=True``: an untrained network with random weights (seeded), and the
     description says "RANDOM weights". Otherwise an NpvitError saying how to get weights.
Nothing downloads unless asked: a command that silently pulled tens of megabytes (or hung
without network) on a first run would surprise more than it helps.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .data import PIPELINES, default_pipeline, imagenet_classes
from .errors import NpvitError
from .functional import softmax_forward
from .models import MobileViTNet, create_model, list_models
from .nn import no_grad
from .weights import cache_dir, convert_checkpoint, local_weights, official, pretrained_path
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
    if name is not None and name not in list_models(task="classification"):
        raise NpvitError(f"unknown model {name!r}; choose one of "
                         f"{', '.join(list_models(task='classification'))}")
    if weights is not None:
        converted = convert_checkpoint(weights, model=name)
        model = create_model(converted.model)
        model.load_state_dict(converted.state)
        source = f"weights {weights} ({LAYOUT_NAMES[converted.layout]} layout)"
    else:
        name = name or DEFAULT_MODEL
        path = local_weights(name)
        if path is None and download:
            path = pretrained_path(name)   # downloads and converts; offline: one-line NpvitError
        if path is not None:
            model = create_model(name)
            model.load_state_dict(convert_checkpoint(path, model=name).state)
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


def top_k(probabilities, k: int = 5) -> list[Prediction]:
    """The ``k`` most probable ImageNet classes of ONE image's probabilities (1000,), best
    first; equal probabilities are ordered by class index."""
    probabilities = np.asarray(probabilities)
    classes = imagenet_classes()
    if probabilities.shape != (len(classes),):
        raise NpvitError(f"expected one image's {len(classes)} class probabilities, "
                         f"got shape {probabilities.shape}")
    if k < 1:
        raise NpvitError(f"top-k needs k >= 1, got {k}")
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Prediction(rank, int(i), classes[i].wnid, classes[i].name, float(probabilities[i]))
            for rank, i in enumerate(order, start=1)]
