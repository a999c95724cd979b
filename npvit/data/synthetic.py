"""A task with a known answer: seeded images in which ONE object of K shape classes sits at a
random place on textured clutter, with its box and mask recorded.

    data = make_synthetic(200, size=64, num_classes=4, seed=0)
    data.images   (n, H, W, 3) uint8     data.masks   (n, H, W) uint8, 1 = object, 0 = background
    data.labels   (n,) int64             data.boxes   (n, 4) float32 xyxy in pixels
    data.class_names  e.g. ["cross", "disc", "square", "triangle"]   (labels index this list)
    write_image_folder(data, "shapes", split="train")   # shapes/train/<class>/<i>.png + masks + JSON

So "did it learn" (held-out accuracy), "does it look at the right place" (score mass inside the
box) and segmentation / detection lessons all have exact answers.

How an image is drawn (image i of seed s uses its own generator ``default_rng([s, i])``, so the
first m images of ``make_synthetic(n)`` are those of ``make_synthetic(m)``, bit for bit):
1. Clutter: a smooth colour field (a 4x4 grid of colours within +-FIELD_SPREAD of a random
   base colour, bilinearly enlarged), grain noise, and 3-7 small distractors (thin line
   segments, small discs and rectangles of random colours, each much smaller than the object).
2. The object: class ``i % K`` (so every class has its share), a random colour at least
   CONTRAST from the field's base colour in some channel (so it stands out), a radius of
   0.22-0.32 of the image side (a large object: its shape is clear at 64 px), a rotation of
   +-20 degrees, and a centre placed so that the whole shape lies inside the image. A pixel
   belongs to the object when its CENTRE (x + 0.5, y + 0.5) falls inside the shape: no
   anti-aliasing, so the mask is exactly the set of painted pixels.
3. The object's pixels get its colour plus grain of at most ``OBJECT_GRAIN`` per channel; every
   background pixel is kept at least ``MARGIN`` away from that colour in some channel (pixels
   closer are pushed away in their most different channel). So the object is separable from
   its surroundings by colour, and the shape, not the colour, tells the class.

The box is the mask's bounding box, in pixel EDGES: ``x0, y0`` = the first object column / row,
``x1, y1`` = one past the last (so ``masks[i, y0:y1, x0:x1]`` holds the whole object and
``x1 - x0`` is its width in pixels), as torchvision's xyxy boxes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import NpvitError
from ..outputs import save_image, write_atomically
from .image import MIN_SIDE

# The shapes in the order classes are added: num_classes=K uses the first K (the default 4 are
# the most distinct). class_names lists them sorted, as an ImageFolder sorts its folders, so a
# label is also the index of its folder.
SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar", "ell", "star")

RADIUS_RANGE = (0.22, 0.32)   # object radius / image side
MAX_ROTATION = 20.0           # degrees either way
MARGIN = 48                   # min. max-channel distance of any background pixel to the object colour
OBJECT_GRAIN = 12             # max. per-channel deviation of object pixels from the object colour
FIELD_SPREAD = 50             # the background's smooth colour field: a base colour +- this
BACKGROUND_GRAIN = 12         # per-pixel noise of the background
DISTRACTORS = (3, 8)          # how many small distractors (lines, discs, rectangles): 3 to 7
CONTRAST = 100                # min. max-channel distance of the object colour to the field's base
MAX_BYTES = 2 << 30           # a set is held in memory: refuse one larger than this


@dataclass
class SyntheticSet:
    images: np.ndarray       # (n, H, W, 3) uint8
    labels: np.ndarray       # (n,) int64, indices into class_names
    boxes: np.ndarray        # (n, 4) float32, x0 y0 x1 y1 in pixels (x1, y1 exclusive)
    masks: np.ndarray        # (n, H, W) uint8, 1 = object
    class_names: list[str]
    colors: np.ndarray       # (n, 3) uint8, each object's colour (before grain)
    seed: int

    def __len__(self) -> int:
        return len(self.labels)


def class_names_for(num_classes: int) -> list[str]:
    """The (sorted) class names of a ``num_classes``-class synthetic set."""
    if not 2 <= num_classes <= len(SHAPES):
        raise NpvitError(f"the synthetic set has 2 to {len(SHAPES)} classes "
                         f"({', '.join(SHAPES)}), got {num_classes}")
    return sorted(SHAPES[:num_classes])


def make_synthetic(n: int, size: int = 64, num_classes: int = 4, seed: int = 0) -> SyntheticSet:
    """``n`` images of ``size`` x ``size`` with one object each (see the module docstring)."""
    if n < 1:
        raise NpvitError(f"the synthetic set needs at least 1 image, got {n}")
    if size < MIN_SIDE:
        raise NpvitError(f"synthetic images need a side of at least {MIN_SIDE} px, got {size}")
    if seed < 0:
        raise NpvitError(f"the seed must be >= 0, got {seed}")
    need = n * size * size * 4          # images (3 bytes a pixel) and masks (1), all in memory
    if need > MAX_BYTES:
        raise NpvitError(f"{n} synthetic images of {size}x{size} would take {need / 2**30:.1f} "
                         f"GiB of memory (the limit is {MAX_BYTES / 2**30:.0f} GiB); make fewer "
                         f"or smaller images")
    names = class_names_for(num_classes)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    labels = np.empty(n, np.int64)
    colors = np.empty((n, 3), np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        shape = SHAPES[i % num_classes]
        labels[i] = names.index(shape)
        images[i], masks[i], colors[i] = _draw(rng, shape, size)
    return SyntheticSet(images, labels, _boxes(masks), masks, names, colors, seed)


def _boxes(masks: np.ndarray) -> np.ndarray:
    """(n, H, W) masks -> (n, 4) float32 bounding boxes, x1 and y1 one past the last pixel."""
    boxes = np.empty((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


# --- drawing ----------------------------------------------------------------------------------
def _draw(rng: np.random.Generator, shape: str, size: int):
    """One image: (H, W, 3) uint8, its (H, W) uint8 mask, the object's colour (3,) uint8."""
    y, x = np.mgrid[0:size, 0:size] + 0.5          # pixel centres
    image, base = _clutter(rng, size, x, y)

    color = rng.integers(0, 256, 3)
    while np.abs(color - base).max() < CONTRAST:   # stand out from the background's colour
        color = rng.integers(0, 256, 3)
    radius = rng.uniform(*RADIUS_RANGE) * size
    # every shape lies inside the unit disc, so a centre this far from the edges keeps it whole
    cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    # object coordinates: the pixel centre relative to the centre, rotated back, in radii
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (x - cx) + s * (y - cy)) / radius
    v = (-s * (x - cx) + c * (y - cy)) / radius
    mask = _INSIDE[shape](u, v)

    image = _keep_away(image, color)
    grain = rng.integers(-OBJECT_GRAIN, OBJECT_GRAIN + 1, (size, size, 3))
    painted = np.clip(color + grain, 0, 255)
    image = np.where(mask[..., None], painted, image)
    return image.astype(np.uint8), mask.astype(np.uint8), color.astype(np.uint8)


def _clutter(rng, size, x, y) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) int64 in 0..255: a smooth colour field around a base colour + grain + small
    distractors; and the base colour (3,)."""
    base = rng.integers(0, 256, 3)
    grid = np.clip(base + rng.integers(-FIELD_SPREAD, FIELD_SPREAD + 1, (4, 4, 3)), 0, 255)
    field = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.BILINEAR),
                       np.int64)
    image = field + rng.integers(-BACKGROUND_GRAIN, BACKGROUND_GRAIN + 1, (size, size, 3))
    for _ in range(rng.integers(*DISTRACTORS)):
        kind = rng.integers(3)
        px, py = rng.uniform(0, size, 2)
        if kind == 0:     # a thin line segment
            length, theta = rng.uniform(0.15, 0.5) * size, rng.uniform(0, np.pi)
            dx, dy = np.cos(theta), np.sin(theta)
            t = np.clip((x - px) * dx + (y - py) * dy, 0, length)
            near = np.hypot(x - px - t * dx, y - py - t * dy) <= rng.uniform(0.6, 1.5)
        elif kind == 1:   # a small disc
            near = np.hypot(x - px, y - py) <= rng.uniform(0.03, 0.07) * size
        else:             # a small axis-aligned rectangle
            hw, hh = rng.uniform(0.02, 0.07, 2) * size
            near = (np.abs(x - px) <= hw) & (np.abs(y - py) <= hh)
        image[near] = rng.integers(0, 256, 3)
    return np.clip(image, 0, 255), base


def _keep_away(image: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Push every pixel closer than MARGIN (max over channels) to ``color`` away from it, in the
    channel where it differs most, to exactly MARGIN (downwards if upwards leaves 0..255)."""
    diff = image - color
    far = np.abs(diff).max(axis=-1) >= MARGIN
    k = np.abs(diff).argmax(axis=-1)[..., None]                    # (H, W, 1) channel index
    ck = color[k[..., 0]][..., None]                               # the colour in that channel
    up = np.take_along_axis(diff, k, axis=-1) >= 0
    target = np.where(up & (ck + MARGIN <= 255) | (ck - MARGIN < 0), ck + MARGIN, ck - MARGIN)
    pushed = image.copy()
    np.put_along_axis(pushed, k, target, axis=-1)
    return np.where(far[..., None], image, pushed)


def _polygon(vertices):
    """inside(u, v) for a simple polygon (crossing-number rule), vertices (m, 2) in radii."""
    vertices = np.asarray(vertices, np.float64)

    def inside(u, v):
        result = np.zeros(u.shape, bool)
        for (u0, v0), (u1, v1) in zip(vertices, np.roll(vertices, -1, axis=0)):
            crosses = (v0 > v) != (v1 > v)
            with np.errstate(divide="ignore", invalid="ignore"):
                at = u0 + (v - v0) * (u1 - u0) / (v1 - v0)
            result ^= crosses & (u < at)
        return result
    return inside


def _regular(points: int, radii) -> np.ndarray:
    """Vertices on circles of the given radii (cycled), first one pointing up (-v)."""
    angles = -np.pi / 2 + np.arange(points) * 2 * np.pi / points
    r = np.resize(np.asarray(radii, np.float64), points)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


# Each shape as a test on object coordinates (u, v) in radii; all lie inside the unit disc.
_INSIDE = {
    "disc": lambda u, v: u ** 2 + v ** 2 <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7),
    "triangle": _polygon(_regular(3, [1.0])),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95))
                          | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: (u ** 2 + v ** 2 <= 1.0) & (u ** 2 + v ** 2 >= 0.55 ** 2),
    "bar": lambda u, v: (np.abs(u) <= 0.95) & (np.abs(v) <= 0.28),
    "ell": lambda u, v: ((u >= -0.7) & (u <= -0.2) & (np.abs(v) <= 0.7))
                        | ((np.abs(u) <= 0.7) & (v >= 0.2) & (v <= 0.7)),
    "star": _polygon(_regular(10, [1.0, 0.45])),
}


# --- writing ----------------------------------------------------------------------------------
def write_image_folder(dataset: SyntheticSet, out_dir, split: str = "train",
                       progress: bool = False) -> Path:
    """Write ``dataset`` under ``out_dir`` and return the path of its annotation file:

        out_dir/<split>/<class>/<i>.png         the images (an ImageFolder: class = folder)
        out_dir/masks/<split>/<class>/<i>.png   the masks, 8-bit grey, 0 = background, 255 = object
        out_dir/<split>.json                    classes, image size, and per image: "image",
                                                "mask" (paths relative to out_dir), "label",
                                                "class", "box" [x0, y0, x1, y1] in pixels

    The masks live outside ``out_dir/<split>`` so that folder holds class folders only. ``<i>``
    is the image's index, zero-padded. Each file is written to a temporary name and renamed;
    ``npvit synthetic`` makes the whole folder appear at once. ``progress``: a progress bar.
    """
    out_dir = Path(out_dir)
    if not split or "/" in split or split.startswith(".") or split == "masks":
        raise NpvitError(f"invalid split name {split!r}")
    width = max(5, len(str(len(dataset) - 1)))
    for name in dataset.class_names:
        (out_dir / split / name).mkdir(parents=True, exist_ok=True)
        (out_dir / "masks" / split / name).mkdir(parents=True, exist_ok=True)
    records = []
    for i in tqdm(range(len(dataset)), desc=f"writing {split}", disable=not progress,
                  leave=False):
        name = dataset.class_names[int(dataset.labels[i])]
        image = Path(split) / name / f"{i:0{width}d}.png"
        mask = Path("masks") / image
        save_image(Image.fromarray(dataset.images[i]), out_dir / image, format="PNG")
        save_image(Image.fromarray(dataset.masks[i] * np.uint8(255)), out_dir / mask, format="PNG")
        records.append({"image": image.as_posix(), "mask": mask.as_posix(),
                        "label": int(dataset.labels[i]), "class": name,
                        "box": [float(b) for b in dataset.boxes[i]]})
    size = dataset.images.shape[1:3]
    header = {"classes": dataset.class_names, "height": int(size[0]), "width": int(size[1]),
              "seed": dataset.seed, "box_format": "xyxy pixels, x1/y1 exclusive",
              "mask_values": {"0": "background", "255": "object"}}
    # one image per line: readable, and diffs of two runs line up
    text = json.dumps(header)[:-1] + ', "images": [\n' \
        + ",\n".join(json.dumps(r) for r in records) + "\n]}\n"
    path = out_dir / f"{split}.json"
    write_atomically(path, lambda f: f.write(text.encode()))
    return path


def read_boxes(path) -> dict[str, list[float]]:
    """{image path relative to the annotation's folder: box [x0, y0, x1, y1]} from a
    ``<split>.json`` written by `write_image_folder`."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())["images"]
        return {r["image"]: [float(b) for b in r["box"]] for r in records}
    except FileNotFoundError:
        raise NpvitError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NpvitError(f"{path}: not a boxes file written by npvit synthetic ({e})") from None
