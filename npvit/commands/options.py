"""Command-line options that several subcommands share, defined once."""
from __future__ import annotations

import sys

from ..data import example_image_path, load_image
from ..errors import NpvitError
from ..inference import DEFAULT_MODEL
from ..weights import cache_dir


def add_model_and_weights(p) -> None:
    """--model, --weights, --download: which network, and where its weights come from
    (the order is npvit.inference.load_model's)."""
    p.add_argument("--model", metavar="NAME",
                   help=f"one of `npvit models` (default {DEFAULT_MODEL}; with --weights: detected)")
    p.add_argument("--weights", metavar="PATH", help="checkpoint (.pt/.pth, .safetensors, .npz)")
    p.add_argument("--download", action="store_true",
                   help="download the official weights into the cache if they are not there")


def add_images(p) -> None:
    """IMAGE ...: the images to look at (none: the example photo, see images_or_example)."""
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (default: the example photo)")


def images_or_example(args, command: str, doing: str) -> list[str]:
    """``args.images``, or when none were given the example photo, said on stderr as
    "npvit COMMAND: no IMAGE given, DOING the example photo PATH"."""
    if args.images:
        return args.images
    example = str(example_image_path())
    print(f"npvit {command}: no IMAGE given, {doing} the example photo {example}", file=sys.stderr)
    return [example]


class ReadableImages:
    """The images of ``paths`` one by one as (path, image), each read when its turn comes: an
    unreadable one is one "npvit: error: ..." line on stderr, counted in ``failures``, and the
    loop goes on (so a command can load its model at the first image that can be used)."""

    def __init__(self, paths: list[str]):
        self.paths, self.failures = paths, 0

    def __iter__(self):
        for path in self.paths:
            try:
                image = load_image(path)
            except NpvitError as e:
                print(f"npvit: error: {e}", file=sys.stderr)
                self.failures += 1
                continue
            yield path, image


def note_random_weights(command: str, name: str) -> None:
    """Say on stderr that ``name`` runs with RANDOM weights, as none are in the cache."""
    print(f"npvit {command}: no official weights for {name} in {cache_dir()}, so RANDOM "
          f"untrained weights are used (get them with `npvit download {name}` or "
          f"--download, or pass --weights PATH)", file=sys.stderr)


def check_seed(seed: int) -> int:
    """--seed must be a non-negative integer (NumPy's generators take no negative seed)."""
    if seed < 0:
        raise NpvitError(f"--seed must be a non-negative integer, got {seed}")
    return seed


def add_threads(p, pooled: str = "images run in a pool of N threads") -> None:
    """--threads N: npvit.set_num_threads(N) (images in a pool of N threads, BLAS on one).
    ``pooled`` says what runs in the pool, for the help."""
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"CPU threads: {pooled}, each BLAS call on one thread, so a busy "
                        f"neighbour slows npvit in proportion (0 = every CPU, the default with "
                        f"threadpoolctl installed, else 1; 1 leaves the other cores to the "
                        f"machine's other users)")


def apply_threads(args) -> None:
    """Check and apply --threads (before any work starts: the size check runs the model)."""
    from ..threads import can_pin_blas, set_num_threads
    if args.threads is None:
        # without threadpoolctl BLAS keeps its own threads, and a pool on top of them would
        # oversubscribe the cores: then one image at a time, as before --threads existed
        args.threads = 0 if can_pin_blas() else 1
    if args.threads < 0:
        raise NpvitError(f"--threads must be 0 (every CPU) or a positive number, got {args.threads}")
    set_num_threads(args.threads)
