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
    print(f"{'model':<16} {'version':<8} {'params':>11}  {'top-1':>7}  {'preprocess':<10}  cache")
    for name in list_models():
        entry = official(name)
        version = "v2" if name.startswith("mobilevitv2_") else "v1"
        marker = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<16} {version:<8} {entry.params:>11,}  {entry.top1:>6.2f}%  "
              f"{default_pipeline(name):<10}  {cache_status(name)}{marker}")
    print(f"cache: {cache_dir()}  (`npvit download NAME` fetches a model's official weights)")
    return 0


def add_parser(sub):
    p = sub.add_parser("models", help="the variants, parameter counts, reported top-1, cached weights",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)
