"""``npvit download NAME... [--dir D]``: fetch official checkpoints into the cache and convert
each once to ``.npz`` (what ``create_model(name, pretrained=True)`` then loads)."""
from __future__ import annotations

from ..weights import DETECTION, OFFICIAL, SEGMENTATION, cache_dir, official, pretrained_path


def run(args) -> int:
    names = list(OFFICIAL) if args.all else args.names
    if not names:
        print(f"official checkpoints (cache: {cache_dir(args.dir)}):")
        for entry in OFFICIAL.values():
            print(f"  {entry.name:16s} top-1 {entry.top1:5.2f}%  {entry.params:>10,} params  {entry.url}")
        print("segmentation (mIoU as reported; params without the train-only aux head):")
        for entry in SEGMENTATION.values():
            print(f"  {entry.name:33s} mIoU {entry.miou:5.2f}%  {entry.params:>10,} params  {entry.url}")
        print("detection (COCO val2017 box mAP as reported):")
        for entry in DETECTION.values():
            print(f"  {entry.name:33s} mAP  {entry.map:5.2f}   {entry.params:>10,} params  {entry.url}")
        return 0
    for name in names:
        official(name)   # unknown names fail before anything is downloaded
    for name in names:
        print(pretrained_path(name, args.dir, progress=not args.quiet, force=args.force))
    return 0


def add_parser(sub):
    p = sub.add_parser("download", help="download official weights into the cache (no names: list them)")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="model name(s), e.g. mobilevit_xxs or deeplabv3_mobilevitv2_050_voc")
    p.add_argument("--all", action="store_true", help="all ten official checkpoints")
    p.add_argument("--dir", help="cache folder (default: $NPVIT_HOME or ~/.cache/npvit)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="download and convert again even if the cache has the files (a damaged cache)")
    p.set_defaults(func=run)
