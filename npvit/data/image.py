"""Reading an image file into an 8-bit RGB PIL image, or one clear error line naming the file.

What `load_image` does, and why:
- Decodes with Pillow and forces the decode at once (``im.load()``), so a truncated file fails
  here with its name, not later inside preprocessing.
- Applies the EXIF orientation (``ImageOps.exif_transpose``): a phone photo stored sideways
  is seen upright, as OpenCV's ``imread`` (used by ml-cvnets v0.1) also does by default.
  (ml-cvnets v0.2+'s ``Image.open(path).convert("RGB")`` does not, so for a file with a
  rotation tag npvit feeds the upright picture where ml-cvnets v2 fed the stored one.)
- Converts every mode to RGB with 8 bits per channel (`to_rgb`):
    RGBA, LA, PA, P with transparency  -> the alpha channel is DROPPED, not composited. Both
        official loaders do exactly this (ml-cvnets v0.1 ``cv2.imread(path, IMREAD_COLOR)``
        and v0.2+ ``Image.open(path).convert("RGB")``), so the model sees what it would have
        seen in ml-cvnets. (Fully transparent pixels keep whatever colour the file stores.)
    I;16, I;16B, I;16L, I;16N (16-bit grey) -> the high byte (v >> 8), as OpenCV and libpng do
        when reading a 16-bit PNG as 8-bit. Pillow's own conversion would clip at 255 instead,
        turning almost every pixel white.
    I (32-bit int), F (32-bit float) -> Pillow's conversion: values on the 0..255 scale,
        clipped (floats truncated).
    L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX ... -> Pillow's ``convert("RGB")`` (no ICC colour
        management, as in both official loaders).
    Multi-frame files (GIF, TIFF) give their first frame.
- Refuses what it cannot use, each time with an NpvitError "<file>: <problem>":
  missing file, a directory, an empty file, a file Pillow does not recognise, a truncated or
  corrupt image, a decompression bomb (Pillow's limit ``Image.MAX_IMAGE_PIXELS``; its warning
  zone, between 1x and 2x that limit, is treated as an error too), and an image smaller than
  `MIN_SIDE` pixels on a side.

Small images are REFUSED rather than upscaled: the evaluation pipelines would blow a 20x20
icon up to 288x288, and the classifier's answer on such a blur means nothing. Upscale the
image yourself if you really want a prediction for it.

Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as the user set it (False by
default); if some other code sets it to True, truncated images load with grey fill.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import NpvitError

MIN_SIDE = 32  # the smallest side a MobileViT takes (5 stride-2 stages: 32 -> 1x1)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

# An image whose long side is more than this many times its short side is refused up front: the
# short-side resize would make it huge (32x9900 -> 288x89100) for a centre crop of one end.
MAX_ASPECT_RATIO = 20


def check_aspect_ratio(width: int, height: int) -> None:
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT_RATIO * short:
        raise NpvitError(f"a {width}x{height} image is too elongated (aspect ratio "
                         f"{long / max(short, 1):.0f}:1; npvit reads up to {MAX_ASPECT_RATIO}:1); crop "
                         f"it to the part you want classified")


# The formats npvit decodes; Pillow's other plugins (EPS, which calls Ghostscript, and dozens of
# rare formats) are never reached, whatever the file is named.
FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")


def load_image(path) -> Image.Image:
    """Read ``path`` into an upright 8-bit RGB ``PIL.Image``; raise NpvitError naming the file."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise NpvitError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise NpvitError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise NpvitError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket")
        raise NpvitError(f"{path}: is {kind}, not a regular image file")
    if info.st_size == 0:
        raise NpvitError(f"{path}: the file is empty (0 bytes)")

    image = _decode(path)
    try:
        image = to_rgb(image)
    except ValueError as e:  # Pillow has no conversion for a few rare modes, e.g. "La"
        raise NpvitError(f"{path}: cannot convert colour mode {image.mode} to RGB ({e})") from None

    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise NpvitError(f"{path}: image is {width}x{height} pixels; npvit needs at least "
                         f"{MIN_SIDE} on each side (upscale it yourself to try anyway)")
    return image


def _decode(path: Path) -> Image.Image:
    """Open, fully decode and orient the image; every Pillow failure becomes one NpvitError."""
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that, Pillow only warns; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # npvit owns the file, so closing it is certain; the decoded pixels outlive it
            with open(path, "rb") as f:
                image = Image.open(f, formats=FORMATS)
                check_aspect_ratio(*image.size)  # from the header, before decoding
                image.load()  # decode now (frame 0): a truncated file fails here, with its name
                ImageOps.exif_transpose(image, in_place=True)  # upright, without a second copy
                return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise NpvitError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except NpvitError as e:
        raise NpvitError(f"{path}: {e}") from None
    except UnidentifiedImageError:
        raise NpvitError(f"{path}: not an image file npvit reads (it decodes "
                         f"{', '.join(FORMATS)})") from None
    except PermissionError:
        raise NpvitError(f"{path}: permission denied") from None
    except OSError as e:
        if "truncated" in str(e):  # Pillow: "image file is truncated (N bytes not processed)"
            raise NpvitError(f"{path}: {e}") from None
        raise NpvitError(f"{path}: corrupt or unreadable image ({e})") from None
    except Exception as e:
        # Pillow's format plugins also report damaged files as SyntaxError, EOFError,
        # struct.error, zlib.error, ValueError ... Only Pillow code runs in this try block.
        raise NpvitError(f"{path}: corrupt image ({type(e).__name__}: {e})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit "RGB" (see the module docstring for each mode's rule)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        high_byte = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # (H, W)
        return Image.fromarray(high_byte).convert("RGB")  # uint8 (H, W) -> "L" -> RGB
    if image.mode in ("P", "PA") and "transparency" in image.info:
        # Go through RGBA so Pillow resolves the palette transparency; then drop alpha.
        image = image.convert("RGBA")
    return image.convert("RGB")


def example_image_path() -> Path:
    """A real photograph that needs no download: matplotlib's public-domain sample photo of
    Grace Hopper (512x600 JPEG, in uniform), shipped with matplotlib, a runtime dependency."""
    from matplotlib import cbook  # imported here: matplotlib is slow to import

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


# File endings treated as images when a folder is scanned (eval, fine-tuning).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_files(folder) -> list[Path]:
    """The image files directly inside ``folder`` (by ending; hidden files skipped), sorted."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)
