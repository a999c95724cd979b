"""``npvit synthetic OUT``: write the synthetic shapes task (npvit.data.synthetic) as
OUT/train/<class>/, OUT/val/<class>/ ImageFolders, with OUT/masks/{train,val}/ and the boxes
in OUT/train.json, OUT/val.json.

The validation images are the ones after the training images in the same seeded stream
(indices N_train ... N_train + N_val - 1), so they never repeat a training image. Everything is
written into a temporary folder beside OUT and renamed to OUT at the end: OUT appears complete
or not at all. An existing non-empty OUT is refused rather than mixed with.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..data.image import MIN_SIDE
from ..data.synthetic import SHAPES, SyntheticSet, make_synthetic, write_image_folder
from ..errors import NpvitError


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NpvitError(f"{out} already exists and is not an empty folder; "
                         "choose a new OUT (npvit synthetic never overwrites)")
    for flag, value, low in (("--train", args.train, 1), ("--val", args.val, 0),
                             ("--size", args.size, MIN_SIDE), ("--seed", args.seed, 0)):
        if value < low:
            raise NpvitError(f"{flag} must be at least {low}, got {value}")
    # one stream, split after generating: validation images follow the training ones
    data = make_synthetic(args.train + args.val, args.size, args.classes, args.seed)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise NpvitError(f"{parent}: no such directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        write_image_folder(_part(data, 0, args.train), tmp, split="train", progress=True)
        if args.val:
            write_image_folder(_part(data, args.train, len(data)), tmp, split="val", progress=True)
        if out.exists():
            out.rmdir()        # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}: {args.train} training and {args.val} validation images of "
          f"{args.size}x{args.size}, {args.classes} classes ({', '.join(data.class_names)}), "
          f"seed {args.seed}; masks in {out / 'masks'}, boxes in {out / 'train.json'}"
          + (f" and {out / 'val.json'}" if args.val else ""))
    return 0


def _part(data: SyntheticSet, start: int, stop: int) -> SyntheticSet:
    s = slice(start, stop)
    return SyntheticSet(data.images[s], data.labels[s], data.boxes[s], data.masks[s],
                        data.class_names, data.colors[s], data.seed)


def add_parser(sub):
    p = sub.add_parser("synthetic", help="write the synthetic shapes task (boxes, masks) as "
                                         "train/ and val/ image folders",
                       description="One object of K shape classes per image on textured "
                                   "clutter, with its box and mask: a task with a known answer.")
    p.add_argument("out", metavar="OUT", help="new folder to create")
    # 1600: enough for a small MobileViT to learn the 4 default shapes from scratch (measured:
    # mobilevitv2_050, 64 px, 12 epochs, flips only: 94.5-95.5% held-out over the last 4 epochs)
    p.add_argument("--train", type=int, default=1600, metavar="N", help="training images (default 1600)")
    p.add_argument("--val", type=int, default=400, metavar="N", help="validation images (default 400)")
    p.add_argument("--size", type=int, default=64, metavar="S", help="image side in pixels (default 64)")
    p.add_argument("--classes", type=int, default=4, metavar="K",
                   help=f"number of shape classes, 2-{len(SHAPES)} (default 4: "
                        f"{', '.join(SHAPES[:4])})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    p.set_defaults(func=run)
