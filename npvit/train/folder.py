"""An image-classification folder on disk, its train/validation split, and the loader that turns
a list of (image file, label) pairs into batches.

Two layouts are accepted (class names are the sub-folder names, sorted; labels are their
indices; files are matched by extension, anything else in the folders is ignored):

    DIR/train/<class>/<image>         the split is given: DIR/val must hold the same classes
    DIR/val/<class>/<image>

    DIR/<class>/<image>               no train/ folder: val_fraction of every class's images
                                      (at least one, when it has two or more) are held out for
                                      validation, drawn with a seeded shuffle, so the split is
                                      the same on every run with the same seed

Image files are only opened when a batch needs them; a file that turns out to be unreadable
stops training with load_image's one-line error naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import IMAGE_EXTENSIONS, image_files, load_image
from ..errors import NpvitError

# the extensions torchvision's ImageFolder accepts

Sample = tuple[Path, int]   # (image file, class index)


@dataclass
class ImageFolderSplit:
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str    # how the split was made, for the user: "train/ and val/" or "held out 20%"


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise NpvitError(f"{root}: no such directory" if not root.exists()
                         else f"{root}: not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise NpvitError(f"{root} has no class folders: put each class's images in "
                         f"{root}/<class>/ (or in {root}/train/<class>/ and {root}/val/<class>/)")
    return classes


def _images(folder: Path) -> list[Path]:
    files = image_files(folder)
    if not files:
        raise NpvitError(f"{folder} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _samples(root: Path, classes: list[str]) -> list[Sample]:
    return [(f, label) for label, c in enumerate(classes) for f in _images(root / c)]


def find_image_folder(root, val_fraction: float = 0.2, seed: int = 0) -> ImageFolderSplit:
    """The classes and the train and validation samples under ``root`` (layouts above)."""
    root = Path(root)
    if (root / "train").is_dir():
        classes = _class_folders(root / "train")
        if not (root / "val").is_dir():
            raise NpvitError(f"{root}/train exists but {root}/val does not: add a val/ folder "
                             f"with the same classes, or put the class folders in {root} directly")
        val_classes = _class_folders(root / "val")
        if val_classes != classes:
            differ = sorted(set(classes) ^ set(val_classes))
            raise NpvitError(f"{root}/train and {root}/val hold different classes "
                             f"({', '.join(differ[:5])})")
        split = ImageFolderSplit(classes, _samples(root / "train", classes),
                                 _samples(root / "val", classes), "train/ and val/")
    else:
        if not 0 <= val_fraction < 1:
            raise NpvitError(f"the validation fraction must lie in [0, 1), got {val_fraction}")
        classes = _class_folders(root)
        rng = np.random.default_rng(seed)
        train, val = [], []
        for label, c in enumerate(classes):
            files = _images(root / c)
            n_val = round(len(files) * val_fraction)
            if val_fraction > 0 and len(files) >= 2:
                n_val = min(max(n_val, 1), len(files) - 1)
            order = rng.permutation(len(files))
            val += [(files[i], label) for i in sorted(order[:n_val])]
            train += [(files[i], label) for i in sorted(order[n_val:])]
        split = ImageFolderSplit(classes, train, val, f"held out {val_fraction:.0%} of each class")
    if len(split.classes) < 2:
        raise NpvitError(f"{root} has one class ({split.classes[0]}); a classifier needs two "
                         "or more")
    return split


class ImageLoader:
    """Batches ``(x, y)`` — x float32 (B, 3, S, S), y int64 (B,) — of ``samples``, each image
    read with ``load_image`` and passed through ``transform(image, rng)``.

    Epoch e (set with ``set_epoch``) shuffles and augments with ``np.random.default_rng((seed,
    e))``, so the batches of an epoch depend only on the seed and the epoch number: a run
    resumed at an epoch boundary sees exactly the batches an uninterrupted run sees.
    ``drop_last`` drops an incomplete final batch (training does: a batch of one image gives
    BatchNorm no batch statistics to speak of).
    """

    def __init__(self, samples: list[Sample], transform, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0):
        if batch_size < 1:
            raise NpvitError(f"the batch size must be at least 1, got {batch_size}")
        self.samples, self.transform = list(samples), transform
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.samples), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.samples)) if self.shuffle else np.arange(len(self.samples))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = [self.samples[i] for i in order[start:start + self.batch_size]]
            x = np.stack([self.transform(load_image(path), rng) for path, _ in batch])
            y = np.array([label for _, label in batch], dtype=np.int64)
            yield x, y
