"""Drawing detections on the photo: one coloured rectangle per box, its class name and score
in a filled tag above it (Pillow's ImageDraw, at the image's own resolution)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from ..data.coco import coco_names

# 10 distinct colours (matplotlib's tab10), chosen per class so one class keeps one colour
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def draw_detections(image: Image.Image, found) -> Image.Image:
    """A copy of the RGB ``image`` with the Detections ``found`` (pixels, COCO ids) drawn."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    names = coco_names()
    width = max(2, round(max(out.size) / 300))
    for box, score, category in sorted(zip(*found), key=lambda d: d[1]):   # best drawn last
        colour = PALETTE[int(category) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{names[int(category)]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        lift = bottom - top + 4
        tag_top = y1 - lift if y1 - lift >= 0 else y1
        draw.rectangle([x1, tag_top, x1 + right - left + 4, tag_top + lift], fill=colour)
        draw.text((x1 + 2, tag_top + 2 - (top - y1)), text, fill="white", font=font)
    return out
