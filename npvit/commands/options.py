"""Command-line options that several subcommands share, defined once."""
from __future__ import annotations

from ..errors import NpvitError
from ..inference import DEFAULT_MODEL


def add_model_and_weights(p) -> None:
    """--model, --weights, --download: which network, and where its weights come from
    (the order is npvit.inference.load_model's)."""
    p.add_argument("--model", metavar="NAME",
                   help=f"one of `npvit models` (default {DEFAULT_MODEL}; with --weights: detected)")
    p.add_argument("--weights", metavar="PATH", help="checkpoint (.pt/.pth, .safetensors, .npz)")
    p.add_argument("--download", action="store_true",
                   help="download the official weights into the cache if they are not there")


def check_seed(seed: int) -> int:
    """--seed must be a non-negative integer (NumPy's generators take no negative seed)."""
    if seed < 0:
        raise NpvitError(f"--seed must be a non-negative integer, got {seed}")
    return seed
