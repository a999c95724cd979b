"""Evaluation preprocessing: an RGB PIL image -> float32 (3, S, S) in [0, 1], by named pipeline.

Every pipeline is: resize the SHORT side to R (the long side to int(R * long / short),
truncated), centre-crop S x S at offsets ((h - S) // 2, (w - S) // 2), divide by 255, no
mean/std normalisation. They differ in the resampling filter and the channel order:

  name        resampling                               channels   used by
  cvnets-v1   OpenCV INTER_LINEAR, no antialiasing     BGR        ml-cvnets v0.1 (v1 checkpoints)
  cvnets-v2   PIL BICUBIC (antialiased)                RGB        ml-cvnets v0.2+ (v2 checkpoints)
  hf          PIL BILINEAR (antialiased)               BGR        the Hugging Face port's
                                                                  MobileViTImageProcessor, v1 and v2

Confirmed in apple/ml-cvnets (read at the release tags):
- cvnets-v0.1 (the v1 checkpoints were trained and evaluated with it; the v0.2 model zoo says
  "These results are from CVNets v0.1 ... switched to PIL in v0.2"):
  data/datasets/dataset_base.py ``read_image`` = ``cv2.imread(path, cv2.IMREAD_COLOR)`` ("read
  in BGR format", never converted to RGB); data/datasets/classification/imagenet.py
  ``validation_transforms``: Resize(size + 32) -> CenterCrop(size) -> NumpyToTensor;
  data/transforms/image.py: ``_resize_fn`` keeps the aspect ratio (long side
  ``int(size * long / short)``) and calls ``cv2.resize`` with the "bilinear" default
  (INTER_LINEAR) that config/classification/mobilevit_{xx_small,x_small,small}.yaml do not
  override; ``CenterCrop`` offsets ``(h - size) // 2``; ``NumpyToTensor`` divides by 255.
  The configs' crop size is 256, so R = 288.
- cvnets-v0.2: config/classification/imagenet/mobilevit_v2.yaml sets ``resize.size: 288``,
  ``resize.interpolation: bicubic``, ``center_crop.size: 256``; data/datasets/dataset_base.py
  ``read_image_pil`` = ``Image.open(path).convert("RGB")``; data/transforms/image_pil.py
  ``_resize_fn`` computes the size as v0.1 does and calls torchvision ``F.resize`` on the PIL
  image (= PIL's own antialiased ``Image.resize``); ``CenterCrop`` offsets ``(h - size) // 2``
  (not torchvision's rounded offsets); ``ToTensor`` = ``pil_to_tensor(img) / 255``.
- Other sizes: R = S + 32 by default, as v0.1 computes it (``scale_size = size + 32``) and as
  the HF conversion scripts build their processor (``size = image_size + 32``). The released
  v2 384x384 models were fine-tuned with config/classification/finetune_higher_res_in1k/
  mobilevit_v2.yaml, which says ``resize.size: 384`` and ``center_crop.size: 384``: for them
  pass ``resize_size=384``.
- hf: transformers' MobileViTImageProcessor as the HF conversion scripts build it (see
  ../shared/reference/NOTES.md): resize the short side with PIL BILINEAR, centre crop,
  rescale 1/255, then flip RGB -> BGR (``do_flip_channel_order``) for v1 AND v2. Its
  published reference logits need this pipeline.

OpenCV difference: for uint8 images ``cv2.resize`` works in fixed point (weights rounded to
multiples of 1/2048, integer accumulators with truncating shifts), while
`resize_opencv_bilinear` computes the same two-tap weighted sums in float64 and rounds to the
nearest integer. The results differ by at most 1 grey level (1/255), on roughly one pixel in
eight (12.6% on the example photo resized to 288 with opencv-python-headless 4.12);
tests/test_data_preprocess.py checks the bound against cv2 where it is installed. npvit does
not imitate the fixed-point arithmetic: it is an implementation detail of OpenCV's optimised
code paths, which may differ between builds, and one grey level is far below what changes a
classifier's answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import NpvitError
from .image import MIN_SIDE, check_aspect_ratio, to_rgb


@dataclass(frozen=True)
class Pipeline:
    name: str
    resample: str        # "opencv-bilinear", "pil-bicubic" or "pil-bilinear"
    channel_order: str   # "RGB" or "BGR": the order of the 3 output channels
    description: str


PIPELINES = {p.name: p for p in (
    Pipeline("cvnets-v1", "opencv-bilinear", "BGR",
             "ml-cvnets v0.1 (v1 checkpoints): OpenCV bilinear, BGR"),
    Pipeline("cvnets-v2", "pil-bicubic", "RGB",
             "ml-cvnets v0.2+ (v2 checkpoints): PIL bicubic, RGB"),
    Pipeline("hf", "pil-bilinear", "BGR",
             "Hugging Face MobileViTImageProcessor: PIL bilinear, BGR (its published logits)"),
)}

DEFAULT_CROP_SIZE = 256
RESIZE_MARGIN = 32   # default resize size = crop size + 32 (288 for 256)


def get_pipeline(name: str) -> Pipeline:
    if name not in PIPELINES:
        raise NpvitError(f"unknown preprocessing {name!r}; choose one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def default_pipeline(model_name: str) -> str:
    """The pipeline a model's official checkpoints were evaluated with: v1 -> cvnets-v1,
    v2 -> cvnets-v2 (names as in ``npvit.list_models()``)."""
    if model_name.startswith("mobilevitv2_"):
        return "cvnets-v2"
    if model_name.startswith("mobilevit_"):
        return "cvnets-v1"
    raise NpvitError(f"no default preprocessing for model {model_name!r}")


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(new_width, new_height) with the short side = ``short_side``, the long side truncated
    (ml-cvnets, torchvision and transformers all use ``int(short_side * long / short)``)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def linear_taps(n_in: int, n_out: int):
    """OpenCV INTER_LINEAR sampling along one axis of length n_in resized to n_out.

    Output sample d reads the source at the pixel-centre-aligned position
        src = (d + 0.5) * n_in / n_out - 0.5,
    as the weighted pair (1 - frac) * x[i0] + frac * x[i1]. OpenCV clamps at the borders:
    a position before the first pixel centre reads pixel 0, one at or past the last reads the
    last pixel. (This is also PyTorch's bilinear with align_corners=False; the network's
    npvit.functional.resize builds dense matrices from it, fine for feature maps but
    O(n_in * n_out) memory for photos, so images are resampled here by gathering.)
    Returns i0, i1 (int64, (n_out,)) and frac (float64, (n_out,)).
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    before_first, past_last = i0 < 0, i0 >= n_in - 1
    i0[before_first], frac[before_first] = 0, 0.0
    i0[past_last], frac[past_last] = n_in - 1, 0.0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, frac


def resize_opencv_bilinear(pixels, width: int, height: int,
                           rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    """uint8 (H, W, C) array or RGB PIL image -> uint8 (height, width, C) as
    ``cv2.resize(..., INTER_LINEAR)``:
    separable two-tap interpolation, no antialiasing (downscaling reads only the 2 nearest
    pixels per axis), rounded back to uint8 as cv2 returns it for uint8 input.

    ``rows`` / ``cols``: compute only that part of the output (a centre crop): the same
    arithmetic on only the source pixels it reads (taken from a PIL image row by row), so
    memory is O(output), not O(input)."""
    if isinstance(pixels, Image.Image):
        source_width, source_height = pixels.size
        pixels = _pil_pixels(pixels)
    else:
        source_height, source_width = pixels.shape[:2]
        pixels = lambda ys, xs, array=pixels: array[np.ix_(ys, xs)]
    y0, y1, fy = (a[rows] for a in linear_taps(source_height, height))
    x0, x1, fx = (a[cols] for a in linear_taps(source_width, width))
    ys, (iy0, iy1) = _used(y0, y1)
    xs, (ix0, ix1) = _used(x0, x1)
    x = pixels(ys, xs).astype(np.float64)                                  # the pixels read
    by_row = x[iy0] * (1 - fy)[:, None, None] + x[iy1] * fy[:, None, None]          # (h, |xs|, C)
    out = by_row[:, ix0] * (1 - fx)[None, :, None] + by_row[:, ix1] * fx[None, :, None]  # (h, w, C)
    return np.rint(out).astype(np.uint8)


def _pil_pixels(image: Image.Image):
    """pixels(ys, xs) -> uint8 (len(ys), len(xs), C) of a PIL image, read one row at a time
    (never the whole image as an array)."""
    def pixels(ys, xs):
        left, right = int(xs[0]), int(xs[-1]) + 1
        strips = [np.asarray(image.crop((left, int(y), right, int(y) + 1)))[0] for y in ys]
        return np.stack(strips)[:, xs - left]
    return pixels


def _used(i0: np.ndarray, i1: np.ndarray):
    """(the sorted distinct source indices in i0 and i1, i0 and i1 as positions among them)."""
    used, positions = np.unique(np.concatenate([i0, i1]), return_inverse=True)
    return used, np.split(positions, 2)


def _resized_size(image: Image.Image, short_side: int) -> tuple[int, int]:
    """(new_width, new_height) of the short-side resize, or one line why it is refused."""
    width, height = image.size
    check_aspect_ratio(width, height)
    new_width, new_height = short_side_size(width, height, short_side)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and new_width * new_height > limit:
        raise NpvitError(f"a {width}x{height} image is too elongated: resizing its short side "
                         f"to {short_side} would give {new_width}x{new_height} pixels, more "
                         f"than Pillow's limit of {limit}")
    return new_width, new_height


def resize_short_side(image: Image.Image, short_side: int, resample: str) -> np.ndarray:
    """RGB PIL image -> uint8 (H', W', 3) with its short side resized to ``short_side``."""
    new_width, new_height = _resized_size(image, short_side)
    if (new_width, new_height) == image.size:
        return np.asarray(image)  # ml-cvnets, torchvision and transformers all skip this resize
    if resample == "opencv-bilinear":
        return resize_opencv_bilinear(image, new_width, new_height)
    return np.asarray(image.resize((new_width, new_height), _PIL_FILTERS[resample]))


_PIL_FILTERS = {"pil-bicubic": Image.Resampling.BICUBIC, "pil-bilinear": Image.Resampling.BILINEAR}


def resize_and_crop(image: Image.Image, short_side: int, crop: int, resample: str) -> np.ndarray:
    """RGB PIL image -> uint8 (crop, crop, 3): its short side resized to ``short_side``, then
    the centre ``crop`` x ``crop`` at offsets ((H' - crop) // 2, (W' - crop) // 2).
    OpenCV-style resizing computes only the cropped pixels (bit-identical to resizing all of
    them); Pillow's resize runs in uint8, in Pillow's own C code."""
    new_width, new_height = _resized_size(image, short_side)
    top, left = (new_height - crop) // 2, (new_width - crop) // 2
    box = (left, top, left + crop, top + crop)
    if (new_width, new_height) == image.size:
        # ml-cvnets, torchvision and transformers all skip this resize
        return np.asarray(image.crop(box))
    if resample == "opencv-bilinear":
        return resize_opencv_bilinear(image, new_width, new_height,
                                      slice(top, top + crop), slice(left, left + crop))
    return np.asarray(image.resize((new_width, new_height), _PIL_FILTERS[resample]).crop(box))


def preprocessed_box(box, image_size: tuple[int, int], crop_size: int = DEFAULT_CROP_SIZE,
                     resize_size: int | None = None) -> np.ndarray:
    """Where a box [x0, y0, x1, y1] in the pixels of a (width, height) image lands in the
    network input that `preprocess` makes of it (same resize and crop), clipped to the
    (crop_size x crop_size) input: float64 (4,), possibly empty (x1 <= x0) if cropped away."""
    width, height = image_size
    resize_size = crop_size + RESIZE_MARGIN if resize_size is None else resize_size
    new_width, new_height = short_side_size(width, height, resize_size)
    top, left = (new_height - crop_size) // 2, (new_width - crop_size) // 2
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    scaled = np.array([x0 * new_width / width - left, y0 * new_height / height - top,
                       x1 * new_width / width - left, y1 * new_height / height - top])
    return np.clip(scaled, 0, crop_size)


def preprocess(image: Image.Image, pipeline: str = "cvnets-v2",
               crop_size: int = DEFAULT_CROP_SIZE, resize_size: int | None = None) -> np.ndarray:
    """PIL image (any mode; `load_image` gives RGB) -> float32 (3, crop_size, crop_size) in
    [0, 1], channels in the pipeline's order. resize_size: the short side before cropping
    (default crop_size + 32)."""
    spec = get_pipeline(pipeline)
    resize_size = crop_size + RESIZE_MARGIN if resize_size is None else resize_size
    if crop_size < MIN_SIDE:
        raise NpvitError(f"crop size {crop_size} is below the {MIN_SIDE}-pixel minimum")
    if resize_size < crop_size:
        raise NpvitError(f"resize size {resize_size} is smaller than the crop size {crop_size}")

    pixels = resize_and_crop(to_rgb(image), resize_size, crop_size, spec.resample)  # uint8 (S, S, 3) RGB
    x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)      # (3, S, S) RGB
    if spec.channel_order == "BGR":
        x = x[::-1]  # the one RGB -> BGR flip
    return np.ascontiguousarray(x)


def preprocess_batch(images, pipeline: str = "cvnets-v2", crop_size: int = DEFAULT_CROP_SIZE,
                     resize_size: int | None = None) -> np.ndarray:
    """A sequence of PIL images -> float32 (N, 3, crop_size, crop_size)."""
    return np.stack([preprocess(im, pipeline, crop_size, resize_size) for im in images])


def check_input(x) -> np.ndarray:
    """Refuse an array a model cannot meaningfully run on, with a one-line NpvitError
    (a ValueError). Accepts float (N, 3, H, W) with H, W >= 32 and only finite values;
    returns it as an ndarray. (The range is not checked: [0, 1] is the convention, but
    gradient checks and feature visualisation legitimately feed other values.)"""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise NpvitError(f"expected images of shape (N, 3, H, W), got {x.shape}")
    if x.shape[0] == 0:
        raise NpvitError(f"the batch is empty: shape {x.shape} holds no image")
    if min(x.shape[2:]) < MIN_SIDE:
        raise NpvitError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, "
                         f"got {x.shape[2]}x{x.shape[3]}")
    if not np.issubdtype(x.dtype, np.floating):
        raise NpvitError(f"expected a floating-point array in [0, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise NpvitError("the input contains NaN or Inf values")
    return x


def preprocess_resized(image: Image.Image, pipeline: str, height: int, width: int) -> np.ndarray:
    """PIL image -> float32 (3, height, width) in [0, 1]: resized to exactly height x width
    (aspect ratio NOT kept, no crop) with the pipeline's filter and channel order. This is the
    detectors' evaluation input (ml-cvnets ``--evaluation.detection.resize-input-images``:
    v0.1 cv2.resize INTER_LINEAR on the BGR image, v0.2+ PIL bicubic on the RGB image, both to
    320 x 320; dense/NOTES.md 2.5)."""
    spec = get_pipeline(pipeline)
    if min(height, width) < MIN_SIDE:
        raise NpvitError(f"input size {height}x{width} is below the {MIN_SIDE}-pixel minimum")
    image = to_rgb(image)
    if image.size == (width, height):
        pixels = np.asarray(image)
    elif spec.resample == "opencv-bilinear":
        pixels = resize_opencv_bilinear(np.asarray(image), width, height)
    else:
        pil_filter = {"pil-bicubic": Image.Resampling.BICUBIC,
                      "pil-bilinear": Image.Resampling.BILINEAR}[spec.resample]
        pixels = np.asarray(image.resize((width, height), pil_filter))
    x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)      # (3, H, W) RGB
    if spec.channel_order == "BGR":
        x = x[::-1]
    return np.ascontiguousarray(x)
