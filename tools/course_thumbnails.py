"""Write the README's course thumbnails, docs/course/NN.png, from the figures the tutorials wrote.

Each tutorial is represented by one of its figures (FIGURES below; the tutorial's number is the
key). Run the tutorials first, then point this at the folder they wrote to:

    NPVIT_TUTORIAL_OUT=/tmp/figs python tutorials/01_convolution.py   # ... or every tutorial
    python tools/course_thumbnails.py /tmp/figs

Each thumbnail is the figure scaled to 170 pixels high, or 480 wide if that is smaller (PIL,
antialiased), reduced to a 256-colour palette and saved as an optimised PNG of a few tens of kB. A tutorial whose figure is not in the folder is skipped and
named in the output.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent.parent / "docs" / "course"
HEIGHT, MAX_WIDTH = 170, 480
FIGURES = {                      # tutorial number -> the figure that stands for it
    "01": "01_im2col.png",
    "02": "02_norm_axes.png",
    "03": "03_polyphase_photo.png",
    "04": "04_fig1_latency.png",
    "05": "05_receptive_field.png",
    "06": "06_training_loss.png",
    "07": "07_top5.png",
    "08": "08_context_scores.png",
    "09": "09_scores_v2.png",
    "10": "10_attention_zoo.png",
    "11": "11_tiny_segmenter.png",
    "12": "12_tiny_detector.png",
}


def thumbnail(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        image = image.convert("RGB")
        scale = min(HEIGHT / image.height, MAX_WIDTH / image.width)
        size = (round(image.width * scale), round(image.height * scale))
        small = image.resize(size, Image.Resampling.LANCZOS).quantize(256)
    partial = target.with_name(f".{target.name}.partial")
    small.save(partial, format="PNG", optimize=True)
    os.replace(partial, target)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python tools/course_thumbnails.py FIGURES_DIR", file=sys.stderr)
        return 2
    figures = Path(argv[0])
    DOCS.mkdir(parents=True, exist_ok=True)
    for number, name in FIGURES.items():
        source = figures / name
        if not source.is_file():
            print(f"skipped {number}: no {name} in {figures}")
            continue
        target = DOCS / f"{number}.png"
        thumbnail(source, target)
        print(f"{target} ({target.stat().st_size // 1024} kB) from {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
