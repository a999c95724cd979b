"""What `npvit segment` writes: a colour overlay with a legend of the classes present, and the
label PNG (a palette PNG in the dataset's own annotation values, so it reads like the dataset's
masks: VOC class index 0-20; ADE20k channel + 1, 0 = other).

Colours are PASCAL VOC's standard colour map (the bits of the value spread over R, G, B), for
ADE20k indexed by the mask value too. Every file appears under its name only when complete
(npvit.outputs: written to a temporary file in the same folder, then renamed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data import SegmentationClass
from ..outputs import save_image, write_atomically


def voc_colour_map(n: int = 256) -> np.ndarray:
    """uint8 (n, 3): value v's colour takes bits (0, 1, 2) of v, (3, 4, 5) of v >> 3, ... as
    the most significant bits of (R, G, B) — the VOC development kit's labelcolormap."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for value in range(n):
        c, rgb = value, [0, 0, 0]
        for shift in range(7, -1, -1):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << shift
            c >>= 3
        colours[value] = rgb
    return colours


def mask_values(mask: np.ndarray, classes: tuple[SegmentationClass, ...]) -> np.ndarray:
    """Logit channels (H, W) -> the dataset's mask values (H, W) uint8."""
    lookup = np.array([c.mask_value for c in classes], dtype=np.uint8)
    return lookup[mask]


def save_label_png(mask: np.ndarray, classes, path) -> Path:
    """Palette PNG of ``mask`` (H, W logit channels) in the dataset's mask values."""
    image = Image.fromarray(mask_values(mask, classes), mode="P")
    image.putpalette(voc_colour_map().reshape(-1).tolist())
    return save_image(image, path, format="PNG")


def present_classes(mask: np.ndarray, classes) -> list[tuple[SegmentationClass, float]]:
    """[(class, share of the pixels)] of the classes in ``mask``, largest share first."""
    counts = np.bincount(mask.reshape(-1), minlength=len(classes))
    order = np.argsort(-counts, kind="stable")
    return [(classes[i], counts[i] / mask.size) for i in order if counts[i]]


def save_overlay(image: Image.Image, mask: np.ndarray, classes, path, title: str,
                 alpha: float = 0.55) -> Path:
    """The photo with the mask's colours blended in, beside a legend of the classes present."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = voc_colour_map()
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    painted = colours[mask_values(mask, classes)].astype(np.float32)
    blended = ((1 - alpha) * rgb + alpha * painted).round().astype(np.uint8)
    width = 9.0
    height = max(3.0, width * 0.75 * image.height / image.width)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(blended)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    handles = [Patch(facecolor=colours[c.mask_value] / 255, edgecolor="black",
                     label=f"{c.name} {share:.1%}") for c, share in present_classes(mask, classes)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False, title="classes present")
    fig.tight_layout()
    try:
        return write_atomically(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
