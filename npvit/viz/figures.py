"""Figures of the maps in `npvit.viz.maps`, drawn headless with matplotlib's Agg canvas (a bare
``matplotlib.figure.Figure``: no pyplot, no display, no global state).

* `score_map_figure` (MobileViTv2, the paper's Fig. 5): input | OS 8 | OS 16 | OS 32, or with
  every layer one row per output stride: input | layer 1 | layer 2 | ...
* `attention_figure` (MobileViT v1): one row per block (or layer): the input with the query
  patch outlined | the query patch's attention, one panel per head | the attention each patch
  receives on average.

Every panel is PANEL_INCHES square at DPI, so a figure of r rows and c columns saves to a PNG of
exactly `figure_pixels(r, c)`.
"""
from __future__ import annotations

import numpy as np

from .maps import AttentionMaps, ScoreMap, colorize

PANEL_INCHES = 2.4      # side of one panel
TITLE_INCHES = 0.35     # room above each row for the panel titles
HEADER_INCHES = 0.5     # room at the top for the figure title
DPI = 100
OVERLAY_ALPHA = 0.5     # weight of the colour map when drawn over the input


def figure_inches(rows: int, cols: int) -> tuple[float, float]:
    return cols * PANEL_INCHES, rows * (PANEL_INCHES + TITLE_INCHES) + HEADER_INCHES


def figure_pixels(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) in pixels of the saved PNG."""
    width, height = figure_inches(rows, cols)
    return round(width * DPI), round(height * DPI)


def display_image(x: np.ndarray, channel_order: str = "RGB") -> np.ndarray:
    """A model input (1, 3, H, W) or (3, H, W) in [0, 1] -> (H, W, 3) RGB for imshow
    (a BGR input, as the cvnets-v1 pipeline makes, is flipped back)."""
    x = np.asarray(x, np.float64).reshape(3, *np.shape(x)[-2:])
    if channel_order == "BGR":
        x = x[::-1]
    return np.clip(x.transpose(1, 2, 0), 0.0, 1.0)


def _panel(image_rgb: np.ndarray, heat: np.ndarray, overlay: bool) -> np.ndarray:
    colour = colorize(heat)
    return (1 - OVERLAY_ALPHA) * image_rgb + OVERLAY_ALPHA * colour if overlay else colour


def _grid(rows: int, cols: int, title: str):
    from matplotlib.figure import Figure

    width, height = figure_inches(rows, cols)
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - HEADER_INCHES / height,
                        wspace=0.06, hspace=TITLE_INCHES / PANEL_INCHES)
    fig.suptitle(title, fontsize=11)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _show(ax, picture, title):
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])


def score_map_figure(image_rgb: np.ndarray, maps: list[ScoreMap], title: str,
                     overlay: bool = False):
    """image_rgb (H, W, 3) and the maps of `context_score_maps` -> a matplotlib Figure."""
    strides = sorted({m.stride for m in maps})
    one_per_block = len(maps) == len(strides)
    if one_per_block:   # the paper's layout: input | OS 8 | OS 16 | OS 32
        fig, axes = _grid(1, 1 + len(maps), title)
        _show(axes[0, 0], image_rgb, "input")
        for ax, m in zip(axes[0, 1:], sorted(maps, key=lambda m: m.stride)):
            _show(ax, _panel(image_rgb, m.heatmap, overlay),
                  f"OS {m.stride} (layer {m.layer + 1}/{m.depth})")
        return fig
    fig, axes = _grid(len(strides), 1 + max(m.depth for m in maps), title)
    for row, stride in enumerate(strides):
        _show(axes[row, 0], image_rgb, "input")
        for m in (m for m in maps if m.stride == stride):
            _show(axes[row, 1 + m.layer], _panel(image_rgb, m.heatmap, overlay),
                  f"OS {stride}, layer {m.layer + 1}/{m.depth}")
    return fig


def attention_figure(image_rgb: np.ndarray, maps: list[AttentionMaps], title: str,
                     overlay: bool = False):
    """image_rgb (H, W, 3) and the maps of `attention_maps` -> a matplotlib Figure."""
    from matplotlib.patches import Rectangle

    num_heads = maps[0].heads.shape[0]
    height, width = image_rgb.shape[:2]
    fig, axes = _grid(len(maps), 2 + num_heads, title)
    for row, m in enumerate(maps):
        n_h, n_w = m.heads.shape[1] // 2, m.heads.shape[2] // 2
        _show(axes[row, 0], image_rgb, f"OS {m.stride}, layer {m.layer + 1}/{m.depth}: query")
        # The query patch in input pixels (a 2x2 patch of the feature map at this stride).
        cell_h, cell_w = height / n_h, width / n_w
        axes[row, 0].add_patch(Rectangle((m.query[1] * cell_w - 0.5, m.query[0] * cell_h - 0.5),
                                         cell_w, cell_h, fill=False, edgecolor="red", linewidth=1.5))
        for head, heat in enumerate(m.head_heatmaps):
            _show(axes[row, 1 + head], _panel(image_rgb, heat, overlay), f"head {head + 1}")
        _show(axes[row, 1 + num_heads], _panel(image_rgb, m.received_heatmap, overlay),
              "received (mean)")
    return fig


def outline_box(fig, box, color: str = "white") -> None:
    """Draw the box [x0, y0, x1, y1] (input pixels, edges) on every image panel of a figure
    made above (all panels show the input's pixel grid, so one rectangle fits them all)."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    for ax in fig.axes:
        if ax.axison:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=color, linewidth=1.2, linestyle="--"))


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
    """The confusion matrix (K, K) of counts, rows = true class, columns = predicted class,
    each cell shaded by its share of the row (the class's images) and labelled with its count
    when K is small enough to read."""
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion)
    k = len(confusion)
    side = min(12.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side + 1.5, side), dpi=DPI)
    ax = fig.subplots()
    rows = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    shown = ax.imshow(confusion / rows, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class's images")
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                dark = count / rows[i, 0] > 0.5
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
