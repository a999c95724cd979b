"""``npvit scoremap IMAGE --model NAME``: draw where MobileViT looks, from one forward pass.

MobileViTv2 models: the context score maps of the MobileViTv2 paper's Fig. 5, input | OS 8 |
OS 16 | OS 32 (the last layer of each block; ``--layer all``: every layer). MobileViT v1 models:
per output stride, the attention that the query patch under ``--query Y X`` (pixels of the
network input, default its centre) pays to every patch, one panel per head, and the attention
each patch receives on average.

Weights: ``--weights PATH`` (any checkpoint npvit reads), else the official weights if they are
in the cache (``npvit download NAME``), else random weights, said on stderr and in the title.
A model file written by `npvit finetune` brings its model, input size, preprocessing and class
names (the title names the predicted class), so ``--weights run/model.npz`` is enough.

``--box X0 Y0 X1 Y1`` (pixels of the image file) or ``--boxes FILE`` (the <split>.json that
`npvit synthetic` writes; the image is looked up by its path) also prints how much of the
attention falls inside the object's box (npvit.viz.mass): per block, the mean over its
layers, and overall the mean over every layer with more than one patch, beside the box's
share of the input area (what attention spread evenly would give).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import functional as F
from ..data import (DEFAULT_CROP_SIZE, PIPELINES, default_pipeline, get_pipeline,
                    imagenet_classes, load_image, preprocess, preprocessed_box)
from ..data.synthetic import read_boxes
from ..errors import NpvitError
from ..inference import (DEFAULT_MODEL, RANDOM_WEIGHTS, check_size, class_names, load_model,
                         missing_weights_message, model_file_settings)
from ..outputs import check_figure_output, save_figure
from ..threads import set_num_threads
from .options import check_seed


def run(args) -> int:
    from ..viz import figures, head_attention_maps, run_with_capture, score_maps

    _, args.pipeline, args.size, resize = model_file_settings(args.weights, args.pipeline,
                                                              args.size)
    if args.weights is None and args.model is None:
        args.model = DEFAULT_MODEL
    box = _image_box(args)      # before any work: a bad box or boxes file is one line
    # Weights as `npvit predict` finds them (--weights, else the cache), else random ones.
    check_seed(args.seed)
    set_num_threads(1)   # one image: no pool to fill; BLAS on one thread (npvit/threads.py)
    if args.model is not None:
        check_size(args.model, args.size, capture=True)
    if args.output:
        check_figure_output(args.output)     # before the work: a bad -o is one line
    model, source = load_model(args.model, args.weights, fallback_random=True, seed=args.seed)
    check_size(model.name, args.size, capture=True)   # the variant may come from --weights
    if model.version == 2 and args.query is not None:
        raise NpvitError(f"--query picks the query patch of MobileViT v1's attention maps; "
                         f"{model.name} is MobileViTv2, whose separable attention has no "
                         f"per-query weights (use a mobilevit_* model, or drop --query)")
    if args.query is not None and not all(0 <= v < args.size for v in args.query):
        raise NpvitError(f"--query {args.query[0]:g} {args.query[1]:g} is outside the "
                         f"{args.size}x{args.size} network input (pixels 0 to {args.size - 1})")
    pipeline = args.pipeline or default_pipeline(model.name)
    image = load_image(args.image)
    x = preprocess(image, pipeline, crop_size=args.size, resize_size=resize)[None]  # (1, 3, S, S)
    if source == RANDOM_WEIGHTS:
        print(f"npvit scoremap: {missing_weights_message(model.name)}; drawing an untrained "
              f"network with RANDOM weights", file=sys.stderr)
        weights_label = "RANDOM weights, untrained"
    else:
        weights_label = f"weights {Path(args.weights).name}" if args.weights else "official weights"
    logits, records = run_with_capture(model, x)

    title = f"{model.name} ({weights_label}) on {Path(args.image).name}"
    names, note = class_names(model)
    if note:
        print(f"npvit scoremap: {note}", file=sys.stderr)
    if not weights_label.startswith("RANDOM"):
        probabilities, _ = F.softmax_forward(logits[0].astype("float64"))
        top = int(probabilities.argmax())
        label = imagenet_classes()[top].name if names is None else names[top]
        title += f": {label} ({probabilities[top]:.0%})"
    if box is not None:
        box = preprocessed_box(box, image.size, args.size, resize)     # network-input pixels
        _print_box_mass(records, x.shape[2:], box)
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

    if box is not None:
        figures.outline_box(fig, box)
    output = Path(args.output or f"{Path(args.image).stem}_{model.name}.png")
    save_figure(fig, output, dpi=figures.DPI)     # atomically: a kill never leaves half a PNG
    panels = sum(ax.axison for ax in fig.axes)
    print(f"wrote {output} ({panels} panels)")
    return 0


def _image_box(args):
    """IMAGE's box [x0, y0, x1, y1] in its own pixels from --box or --boxes, or None."""
    if args.box is not None:
        x0, y0, x1, y1 = args.box
        if not (0 <= x0 < x1 and 0 <= y0 < y1):     # also false for NaN
            raise NpvitError(f"--box needs 0 <= X0 < X1 and 0 <= Y0 < Y1, got "
                             f"{' '.join(f'{v:g}' for v in args.box)}")
        return args.box
    if args.boxes is None:
        return None
    boxes, folder = read_boxes(args.boxes), Path(args.boxes).resolve().parent
    try:
        key = Path(args.image).resolve().relative_to(folder).as_posix()
    except ValueError:
        key = None
    if key not in boxes:
        raise NpvitError(f"{args.image} is not among the images of {args.boxes} (their paths "
                         f"are relative to {folder}, e.g. {next(iter(boxes), 'none')})")
    return boxes[key]


def _print_box_mass(records, input_size, box) -> None:
    from ..viz import box_area_share, box_masses, mean_share

    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise NpvitError(f"the box lies outside the {input_size[1]}x{input_size[0]} centre crop "
                         f"the network sees")
    masses = box_masses(records, input_size, box)
    area = box_area_share(box, input_size)
    print(f"attention inside the box {x0:g} {y0:g} {x1:g} {y1:g} (network-input pixels; "
          f"{area:.1%} of the input's area):")
    for stride in sorted({m.stride for m in masses}):
        block = [m for m in masses if m.stride == stride]
        share = sum(m.share for m in block) / len(block)
        grid = "1 patch: always 1, left out" if block[0].patches == 1 else f"{block[0].patches} patches"
        print(f"  OS {stride:>2}  {share:6.1%}  (mean of {len(block)} layers; {grid})")
    overall = mean_share(masses)
    print(f"  mean    {overall:6.1%}  ({overall / area:.2f}x the box's area share)")


def add_parser(sub):
    p = sub.add_parser("scoremap", help="draw context score maps (v2) or attention maps (v1) of an image",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="an image file")
    p.add_argument("--model", metavar="NAME",
                   help=f"e.g. mobilevitv2_050 or mobilevit_xxs (default {DEFAULT_MODEL}; with "
                        f"--weights: the file's)")
    p.add_argument("--weights", metavar="PATH", help="checkpoint (.pt/.pth, .safetensors, .npz)")
    p.add_argument("-o", "--output", metavar="PNG", help="default: <image>_<model>.png")
    p.add_argument("--overlay", action="store_true", help="draw the maps over the input")
    p.add_argument("--layer", choices=["last", "all"], default="last",
                   help="the last layer of each block (default) or every layer")
    p.add_argument("--query", nargs=2, type=float, metavar=("Y", "X"),
                   help="v1 only: the query pixel (default: the centre of the input)")
    p.add_argument("--size", type=int,
                   help=f"network input side (centre crop; default: the model file's, else "
                        f"{DEFAULT_CROP_SIZE})")
    p.add_argument("--pipeline", choices=list(PIPELINES),
                   help="preprocessing (default: the model file's, else the one the model's "
                        "official checkpoints used)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                       help="the object's box in pixels of IMAGE: print the share of attention "
                            "inside it")
    where.add_argument("--boxes", metavar="JSON",
                       help="the boxes file of `npvit synthetic` (OUT/val.json): IMAGE's box")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, when used")
    p.set_defaults(func=run)
