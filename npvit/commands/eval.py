"""``npvit eval DIR``: top-1 and top-5 accuracy on a folder of labelled images: ImageNet's, or
the classes of a fine-tuned model. (For a segmentation release, or a PASCAL VOC / ADE20k
folder: mIoU, npvit/segmentation/evaluate.py.)

A fine-tuned model (--weights run/model.npz, written by `npvit finetune`) names its classes:
DIR/<class>/ folders must be named as they are (a class may have no folder). The report adds
each class's accuracy (the share of its images predicted as it); top-5 is shown only when the
model has more than 5 classes. Weights that name none of their K classes (a plain state dict)
take DIR's K sorted folders as classes 0 ... K-1, said in a note. --confusion PNG draws the
confusion matrix (rows: true class, columns: predicted).

For an ImageNet model, the class of each image comes from
  - an ImageFolder layout, DIR/<wnid>/<image> (e.g. DIR/n01440764/ILSVRC2012_val_00000293.JPEG):
    every sub-folder must be named by an ImageNet-1k WordNet id; or, when DIR has no
    sub-folders,
  - the file name, when it starts with a wnid: DIR/n01440764_10026.JPEG. Files whose name does
    not start with one are left out, and how many is said in one line.
Image files are recognised by extension (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, any
case), as torchvision's ImageFolder does; other files are ignored.

--limit N evaluates N images spread evenly over the sorted list (so every class keeps its
share), not the first N (which in an ImageFolder would be the first few classes only).
Preprocessing and --model / --weights / --download work as in `npvit predict`. Without
weights eval stops with one line saying how to get them: the accuracy of an untrained network
is chance (0.1%) and measures nothing.

An image that cannot be used is reported in one line ("npvit: error: FILE: problem") and
skipped; accuracy is over the images that were read. Exit code: 0 when every image was
evaluated, 1 when some were skipped (so scripts notice), 2 for a usage or setup error.

A COCO-layout folder (DIR/annotations/instances_*.json and its images) is evaluated with a
detector instead (--model ssdlite_..._coco, default ssdlite_mobilevitv2_050_coco): COCO box
mAP, AP50, AP75 and AP small/medium/large, computed in NumPy (npvit/detection/evaluate.py).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import (DEFAULT_CROP_SIZE, MIN_SIDE, image_files, imagenet_classes, load_image,
                    preprocess, wnid_to_index)
from ..errors import NpvitError, error_line
from ..inference import (DEFAULT_MODEL, PREPROCESS_CHOICES, check_size, class_names, classify,
                         load_model, model_file_settings, pipeline_for)
from ..outputs import write_atomically
from ..threads import get_num_threads, map_in_order
from .options import add_model_and_weights, add_threads, apply_threads

_WNID_PREFIX = re.compile(r"^(n\d{8})(?!\d)")   # "n01440764_10026.JPEG" -> "n01440764"

Sample = tuple[Path, int]   # (image file, ImageNet class index)


def labelled_images(directory, class_names: list[str] | None = None) -> tuple[list[Sample], int]:
    """(samples sorted by path, number of image files left out for lack of a wnid).
    class_names None: ImageNet (folders or file names by wnid); else DIR/<class>/ folders
    named as the model's classes (some classes may have no folder)."""
    root, classes = Path(directory), wnid_to_index()
    if not root.is_dir():
        raise NpvitError(f"{root}: no such directory" if not root.exists()
                         else f"{root}: not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is not None:
        return _named_class_folders(root, folders, class_names), 0
    if folders:
        unknown = [p.name for p in folders if p.name not in classes]
        if unknown:
            nested = any(p.is_dir() and p.name in classes for p in (root / unknown[0]).iterdir())
            hint = f"; the images sit one level too deep: pass {root / unknown[0]} as DIR" if nested else ""
            raise NpvitError(f"{root}/{unknown[0]}: sub-folders must be named by ImageNet-1k "
                             f"WordNet ids such as n01440764 ({len(unknown)} are not){hint}")
        return [(f, classes[p.name]) for p in folders for f in image_files(p)], 0
    samples, unlabelled = [], 0
    for f in image_files(root):
        match = _WNID_PREFIX.match(f.name)
        if match and match.group(1) in classes:
            samples.append((f, classes[match.group(1)]))
        else:
            unlabelled += 1
    return samples, unlabelled


def layout_notes(directory) -> list[str]:
    """What a folder with class sub-folders holds that eval will not read, said in one line each:
    image files beside the class folders, and class folders whose images sit one level deeper."""
    root = Path(directory)
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        return []
    notes = []
    loose = image_files(root)
    if loose:
        notes.append(f"ignored {len(loose)} image file(s) directly in {root}: with class "
                     f"folders there, only the images inside them are read")
    deep = [p for p in folders if not image_files(p) and any(q.is_dir() for q in p.iterdir())]
    if deep:
        notes.append(f"{len(deep)} class folder(s) hold sub-folders but no images (e.g. "
                     f"{deep[0]}): the images sit one level too deep; they must be directly in "
                     f"{root}/<wnid>/")
    return notes


def _named_class_folders(root: Path, folders: list[Path], class_names: list[str]) -> list[Sample]:
    index = {name: i for i, name in enumerate(class_names)}
    listing = ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else "")
    unknown = [p.name for p in folders if p.name not in index]
    if not folders or unknown:
        found = (f"{root}/{unknown[0]} is not one of them ({len(unknown)} folders are not)"
                 if unknown else f"{root} has no sub-folders")
        hint = f"; did you mean {root / 'val'}?" if "val" in unknown else ""   # a train/val root
        raise NpvitError(f"the model's classes are {listing}: put each class's images in "
                         f"DIR/<class>/; {found}{hint}")
    return [(f, index[p.name]) for p in folders for f in image_files(p)]


def folder_classes(directory, k: int) -> list[str]:
    """For weights that name none of their ``k`` classes: DIR's sorted class folders, taken as
    classes 0 ... k-1 (the order npvit finetune and torchvision's ImageFolder give them)."""
    root = Path(directory)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    if len(folders) != k:
        raise NpvitError(f"the weights name none of their {k} classes, and {directory} has "
                         f"{len(folders)} class folders, not {k}, to take as classes 0 ... {k - 1}")
    return folders


def spread(samples: list, limit: int | None) -> list:
    """``limit`` items evenly spaced over ``samples`` (all of them when limit is None or larger);
    the spacing is at least 1, so rounding never picks an item twice."""
    if limit is None or limit >= len(samples):
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]


class Tally:
    """Running top-1 / top-5 counts and the confusion matrix (rows: true class, columns:
    predicted class), over ``num_classes`` classes."""

    def __init__(self, num_classes: int = 1000):
        self.images = self.top1 = self.top5 = 0
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        """probabilities: (B, K); labels: (B,) class indices."""
        best5 = np.argsort(-probabilities, axis=1, kind="stable")[:, :5]    # (B, min(5, K))
        self.images += len(labels)
        self.top1 += int((best5[:, 0] == labels).sum())
        self.top5 += int((best5 == labels[:, None]).any(axis=1).sum())
        np.add.at(self.confusion, (labels, best5[:, 0]), 1)

    def per_class(self) -> list[tuple[int, int, int]]:
        """(class index, images, correct) of every class that has images."""
        images, correct = self.confusion.sum(axis=1), np.diag(self.confusion)
        return [(i, int(images[i]), int(correct[i])) for i in np.flatnonzero(images)]


def run(args) -> int:
    apply_threads(args)
    from ..detection.coco_folder import is_coco_folder
    if is_coco_folder(args.directory):          # COCO layout: detection mAP (detection/evaluate.py)
        from ..detection.evaluate import run as run_detection
        return run_detection(args)
    from ..segmentation import evaluate as segmentation_eval
    if segmentation_eval.wanted(args):   # a segmentation release or a VOC / ADE20k folder
        return segmentation_eval.run(args)
    if args.batch_size < 1:
        raise NpvitError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise NpvitError(f"--limit must be at least 1, got {args.limit}")
    _, args.preprocess, args.size, resize = model_file_settings(args.weights, args.preprocess,
                                                                args.size)
    if args.size < MIN_SIDE:
        raise NpvitError(f"--size must be at least {MIN_SIDE}, got {args.size}")
    if args.weights is None and args.model is None:
        args.model = DEFAULT_MODEL
    if args.model is not None:
        check_size(args.model, args.size)
    model, source = load_model(args.model, args.weights, download=args.download)
    check_size(model.name, args.size)
    names, note = class_names(model)
    if note:
        names = folder_classes(args.directory, len(names))
        print(f"npvit eval: {note}; taking the folders of {args.directory} in sorted order "
              f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})", file=sys.stderr)
    samples, unlabelled = labelled_images(args.directory, names)
    for note in layout_notes(args.directory):
        print(f"npvit eval: {note}", file=sys.stderr)
    if unlabelled:
        print(f"npvit eval: left out {unlabelled} image file(s) in {args.directory} whose name "
              f"does not start with an ImageNet wnid (n01440764_...)", file=sys.stderr)
    if not samples:
        raise NpvitError(f"{args.directory}: no labelled images; use {args.directory}/<wnid>/"
                         f"<image> or file names starting with the wnid")
    samples = spread(samples, args.limit)
    pipeline = pipeline_for(model.name, args.preprocess)

    num_classes = model.head.fc.weight.shape[0]
    tally, skipped, batch, labels = Tally(num_classes), 0, [], []
    started = time.perf_counter()   # images/s: decoding + inference, the model already loaded
    with tqdm(total=len(samples), unit="img", desc=model.name, disable=None) as bar:
        def decode(sample):
            """(input array, None) or (None, error message); in the --threads pool, ahead of
            the forward passes."""
            path = sample[0]
            try:
                return preprocess(load_image(path), pipeline, crop_size=args.size,
                                  resize_size=resize), None
            except NpvitError as e:
                return None, str(e) if str(e).startswith(str(path)) else f"{path}: {e}"

        for i, ((path, label), (x, message)) in enumerate(zip(samples, map_in_order(decode, samples))):
            if x is not None:
                batch.append(x)
                labels.append(label)
            else:
                tqdm.write(error_line(message), file=sys.stderr)
                skipped += 1
            if batch and (len(batch) == args.batch_size or i == len(samples) - 1):
                tally.add(classify(model, np.stack(batch)), np.array(labels))
                batch, labels = [], []
                bar.set_postfix_str(f"top-1 {tally.top1 / tally.images:.1%}", refresh=False)
            bar.update(1)
    speed = len(samples) / (time.perf_counter() - started)

    if tally.images == 0:
        raise NpvitError(f"none of the {len(samples)} images in {args.directory} could be read")
    top1, top5 = tally.top1 / tally.images, tally.top5 / tally.images
    with_top5 = num_classes > 5          # top-5 of 5 or fewer classes is always 100%
    per_class = [] if names is None else tally.per_class()   # ImageNet: 1000 lines, left out
    if args.confusion:
        _save_confusion(tally.confusion, names, args.confusion,
                        f"{model.name} on {args.directory}: top-1 {top1:.1%} of {tally.images}")
    if args.json:
        result = {"model": model.name, "weights": source, "preprocess": pipeline,
                  "size": args.size, "images": tally.images, "skipped": skipped, "top1": top1,
                  "images_per_second": speed, "threads": get_num_threads()}
        if with_top5:
            result["top5"] = top5
        if names is not None:
            result["classes"] = names
            result["per_class"] = [{"class": names[i], "images": n, "correct": c,
                                    "accuracy": c / n} for i, n, c in per_class]
            result["confusion"] = tally.confusion.tolist()
        print(json.dumps(result))
    else:
        print(f"{model.name}  [{source}, {pipeline} {args.size}x{args.size}]")
        skipped_note = f", {skipped} skipped (unreadable)" if skipped else ""
        print(f"  images  {tally.images} evaluated{skipped_note}")
        print(f"  top-1   {top1:.2%}  ({tally.top1}/{tally.images})")
        if with_top5:
            print(f"  top-5   {top5:.2%}  ({tally.top5}/{tally.images})")
        print(f"  speed   {speed:.1f} images/s on {get_num_threads()} thread(s) (decoding and "
              f"inference, after loading the model)")
        if per_class:
            print("  per class (share of the class's images predicted as it):")
            width = max(len(names[i]) for i, _, _ in per_class)
            for i, n, c in per_class:
                print(f"    {names[i]:<{width}}  {c / n:7.2%}  ({c}/{n})")
    if args.confusion:
        print(f"wrote {args.confusion}", file=sys.stderr if args.json else sys.stdout)
    return 1 if skipped else 0


def _save_confusion(confusion: np.ndarray, names, path, title: str) -> None:
    """The confusion matrix as a PNG, written to a temporary file and renamed."""
    from ..viz.figures import confusion_figure
    names = names or [c.name for c in imagenet_classes()]
    figure = confusion_figure(confusion, names, title)
    write_atomically(path, lambda f: figure.savefig(f, format="png"))


def add_parser(sub):
    p = sub.add_parser("eval", help="top-1 / top-5 accuracy on a folder of labelled ImageNet images "
                                    "(mIoU on PASCAL VOC / ADE20k, mAP on COCO)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="DIR/<wnid>/<image> or DIR/<wnid>_*.JPEG; or a "
                   "COCO folder (DIR/annotations/instances_*.json + images): detection mAP")
    add_model_and_weights(p)
    add_threads(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate N images spread over the folder")
    p.add_argument("--size", type=int,
                   help=f"network input side (default: the model file's, else {DEFAULT_CROP_SIZE})")
    p.add_argument("--preprocess", choices=PREPROCESS_CHOICES,
                   help="default: the model file's, else cvnets = the model family's official "
                        "pipeline; or by name")
    p.add_argument("--confusion", metavar="PNG",
                   help="also draw the confusion matrix (true x predicted class) into PNG")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)
