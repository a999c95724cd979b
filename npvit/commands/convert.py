"""``npvit convert SRC [-o DST.npz] [--model NAME] [--force]``: any checkpoint npvit reads
(ml-cvnets or Hugging Face or timm names; .pt/.pth, .safetensors, .npz) -> an npvit ``.npz``.

An existing DST is kept unless --force is given (a re-run must not silently replace a file);
DST must be a regular file or absent (a directory, FIFO or device is refused), and is written
atomically."""
from __future__ import annotations

from pathlib import Path

from ..errors import NpvitError
from ..outputs import check_output
from ..weights import convert_checkpoint, num_parameters, save_npz
from ..weights.keymap import LAYOUT_NAMES


def run(args) -> int:
    src = Path(args.src)
    dst = Path(args.output) if args.output else src.with_suffix(".npz")
    if dst.resolve() == src.resolve():
        raise NpvitError(f"the output is {src} itself; choose another output with -o")
    # before the work: a directory, FIFO or device as -o, or an existing file without --force
    check_output(dst, overwrite=args.force, what="output")
    converted = convert_checkpoint(src, model=args.model)
    save_npz(converted.state, dst)
    print(f"{src} ({LAYOUT_NAMES[converted.layout]} layout) -> {dst}: {converted.model}, "
          f"{len(converted.state)} tensors, {num_parameters(converted.state):,} parameters")
    return 0


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a checkpoint (.pt/.pth/.safetensors) to npvit .npz")
    p.add_argument("src", help="checkpoint file: official ml-cvnets .pt, Hugging Face or timm weights")
    p.add_argument("-o", "--output", help="output .npz (default: SRC with the suffix .npz)")
    p.add_argument("--model", help="model name (default: detected from the keys and shapes)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.set_defaults(func=run)
