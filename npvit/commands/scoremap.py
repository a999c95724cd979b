"""``npvit scoremap IMAGE --model NAME``: draw where MobileViT looks, from one forward pass.

MobileViTv2 models: the context score maps of the MobileViTv2 paper's Fig. 5, input | OS 8 |
OS 16 | OS 32 (the last layer of each block; ``--layer all``: every layer). MobileViT v1 models:
per output stride, the attention that the query patch under ``--query Y X`` (pixels of the
network input, default its centre) pays to every patch, one panel per head, and the attention
each patch receives on average.

Weights: ``--weights PATH`` (any checkpoint npvit reads), else the official weights if they are
in the cache (``npvit download NAME``), else random weights, said on stderr and in the title.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import functional as F
from ..data import (DEFAULT_CROP_SIZE, PIPELINES, default_pipeline, get_pipeline,
                    imagenet_classes, load_image, preprocess)
from ..errors import NpvitError
from ..inference import RANDOM_WEIGHTS, check_size, load_model, missing_weights_message
from ..outputs import check_figure_output, save_figure
from .options import check_seed


def run(args) -> int:
    from ..viz import figures, head_attention_maps, run_with_capture, score_maps

    # Weights as `npvit predict` finds them (--weights, else the cache), else random ones.
    check_seed(args.seed)
    check_size(args.model, args.size, capture=True)
    output = check_figure_output(args.output or f"{Path(args.image).stem}_{args.model}.png")
    model, source = load_model(args.model, args.weights, fallback_random=True, seed=args.seed)
    if model.version == 2 and args.query is not None:
        raise NpvitError(f"--query picks the query patch of MobileViT v1's attention maps; "
                         f"{model.name} is MobileViTv2, whose separable attention has no "
                         f"per-query weights (use a mobilevit_* model, or drop --query)")
    if args.query is not None and not all(0 <= v < args.size for v in args.query):
        raise NpvitError(f"--query {args.query[0]:g} {args.query[1]:g} is outside the "
                         f"{args.size}x{args.size} network input (pixels 0 to {args.size - 1})")
    pipeline = args.pipeline or default_pipeline(model.name)
    x = preprocess(load_image(args.image), pipeline, crop_size=args.size)[None]   # (1, 3, S, S)
    if source == RANDOM_WEIGHTS:
        print(f"npvit scoremap: {missing_weights_message(model.name)}; drawing an untrained "
              f"network with RANDOM weights", file=sys.stderr)
        weights_label = "RANDOM weights, untrained"
    else:
        weights_label = f"weights {Path(args.weights).name}" if args.weights else "official weights"
    logits, records = run_with_capture(model, x)

    title = f"{model.name} ({weights_label}) on {Path(args.image).name}"
    if not weights_label.startswith("RANDOM"):
        probabilities, _ = F.softmax_forward(logits[0].astype("float64"))
        top = int(probabilities.argmax())
        title += f": {imagenet_classes()[top].name} ({probabilities[top]:.0%})"
    image_rgb = figures.display_image(x, get_pipeline(pipeline).channel_order)
    per_layer = args.layer == "all"
    if model.version == 2:
        fig = figures.score_map_figure(image_rgb, score_maps(records, x.shape[2:], per_layer),
                                       f"Context score maps: {title}", args.overlay)
    else:
        point = tuple(args.query) if args.query is not None else None
        fig = figures.attention_figure(
            image_rgb, head_attention_maps(records, x.shape[2:], point, per_layer),
            f"Attention maps: {title}", args.overlay)

    save_figure(fig, output, dpi=figures.DPI)     # atomically: a kill never leaves half a PNG
    panels = sum(ax.axison for ax in fig.axes)
    print(f"wrote {output} ({panels} panels)")
    return 0


def add_parser(sub):
    p = sub.add_parser("scoremap", help="draw context score maps (v2) or attention maps (v1) of an image",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="an image file")
    p.add_argument("--model", required=True, metavar="NAME", help="e.g. mobilevitv2_050 or mobilevit_xxs")
    p.add_argument("--weights", metavar="PATH", help="checkpoint (.pt/.pth, .safetensors, .npz)")
    p.add_argument("-o", "--output", metavar="PNG", help="default: <image>_<model>.png")
    p.add_argument("--overlay", action="store_true", help="draw the maps over the input")
    p.add_argument("--layer", choices=["last", "all"], default="last",
                   help="the last layer of each block (default) or every layer")
    p.add_argument("--query", nargs=2, type=float, metavar=("Y", "X"),
                   help="v1 only: the query pixel (default: the centre of the input)")
    p.add_argument("--size", type=int, default=DEFAULT_CROP_SIZE,
                   help=f"network input side (centre crop, default {DEFAULT_CROP_SIZE})")
    p.add_argument("--pipeline", choices=list(PIPELINES),
                   help="preprocessing (default: the one the model's checkpoints used)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, when used")
    p.set_defaults(func=run)
