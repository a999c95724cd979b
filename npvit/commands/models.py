"""``npvit models``: the ten variants, their parameter counts, the ImageNet-1k top-1 reported
for the official checkpoints (256x256, from npvit/weights/manifest.json), and whether those
weights are in the cache.

Cache column: "converted" = <name>.npz is there (what predict/eval load); "downloaded" = only
the official checkpoint file is there (converted offline at first use); "-" = neither
(`npvit download NAME` fetches it). Nothing is built or downloaded to answer.
"""
from __future__ import annotations

import argparse

from ..data import default_pipeline
from ..inference import DEFAULT_MODEL
from ..models import list_models
from ..weights import cache_dir, local_weights, official


def cache_status(name: str) -> str:
    path = local_weights(name)
    if path is None:
        return "-"
    return "converted" if path.suffix == ".npz" else "downloaded"


def run(args) -> int:
    if args.task == "segmentation":
        return segmentation_table()
    if args.task == "detection":
        return detection_table()
    print(f"{'model':<16} {'version':<8} {'params':>11}  {'top-1':>7}  {'preprocess':<10}  cache")
    for name in list_models():
        entry = official(name)
        version = "v2" if name.startswith("mobilevitv2_") else "v1"
        marker = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<16} {version:<8} {entry.params:>11,}  {entry.top1:>6.2f}%  "
              f"{default_pipeline(name):<10}  {cache_status(name)}{marker}")
    print(f"cache: {cache_dir()}  (`npvit download NAME` fetches a model's official weights)")
    return 0


def segmentation_table() -> int:
    """The segmentation releases: head, dataset, output stride, parameters (without the
    train-only aux head, as the zoo counts them), reported mIoU, preprocessing, cache."""
    from ..models.segmentation import RELEASES
    print(f"{'model':<34} {'dataset':<7} {'OS':>2} {'params':>11}  {'mIoU':>6}  {'preprocess':<17}  cache")
    for name, release in RELEASES.items():
        entry = official(name)
        print(f"{name:<34} {release.dataset:<7} {release.output_stride:>2} {entry.params:>11,}  "
              f"{entry.miou:>5.2f}%  {release.preprocess:<17}  {cache_status(name)}")
    print(f"cache: {cache_dir()}  (`npvit download NAME` fetches a model's official weights; "
          f"configurations marked as inferred: npvit.models.segmentation.RELEASES[name].inferred)")
    return 0


def detection_table() -> int:
    """The SSDLite detectors: ml-cvnets version, parameters, reported COCO mAP, preprocessing,
    cache."""
    from ..models.ssdlite import RELEASES
    print(f"{'model':<30} {'code':<12} {'params':>11}  {'mAP':>6}  {'preprocess':<10}  cache")
    for name, release in RELEASES.items():
        entry = official(name)
        print(f"{name:<30} {release.code:<12} {entry.params:>11,}  {entry.map:>6.2f}  "
              f"{release.pipeline:<10}  {cache_status(name)}")
    print(f"cache: {cache_dir()}  (`npvit download NAME` fetches a model's official weights; "
          "mAP = COCO val2017 box mAP@[.5:.95] reported by ml-cvnets, inputs 320x320)")
    return 0


def add_parser(sub):
    p = sub.add_parser("models", help="the variants, parameter counts, reported top-1, cached weights",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("classification", "segmentation", "detection"), default="classification",
                   help="which models to list (default classification)")
    p.set_defaults(func=run)
