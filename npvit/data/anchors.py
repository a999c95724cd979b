"""Anchors: logits of a model on one image that someone outside npvit published, kept as data.

``anchors.json`` beside this file holds the published ones (see its "about"); ``npvit verify
--anchors FILE`` reads any file of the same format, so anyone can add anchors:

    {"about": "free text (optional)",
     "anchors": [
       {"model":         npvit model name, e.g. "mobilevit_xxs"
        "image_url":     the image the logits were computed on (downloaded once into the cache)
        "preprocess":    pipeline name: "cvnets-v1", "cvnets-v2" or "hf"
        "crop_size":     optional, default 256
        "resize_size":   optional, the short side before cropping, default crop_size + 32
        "logit_indices": the class indices whose logits were published, e.g. [0, 1, 2]; for a
                         segmentation model, indices into its flattened low-resolution logits
                         (C, h, w) of the one image, e.g. logits[0, :3, :3, :3] of a (1, 21,
                         32, 32) output is [0, 1, 2, 32, 33, 34, 64, ...]
        "values":        the published logits, one per index
        "tolerance":     the largest |npvit - published| that still counts as reproduced
        "hub_id":        optional, where the weights were published (shown, not checked)
        "published_in":  optional list of strings: where the values were published
       }, ...]}

`load_anchors` checks all of it and reports the first problem as one NpvitError line naming the
file and the anchor, so a typo ("tolerence") is never silently ignored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..errors import NpvitError
from .preprocess import DEFAULT_CROP_SIZE, PIPELINES, RESIZE_MARGIN

NUM_CLASSES = 1000   # anchors are ImageNet-1k logits


@dataclass(frozen=True)
class Anchor:
    model: str
    image_url: str
    preprocess: str
    logit_indices: tuple[int, ...]
    values: tuple[float, ...]
    tolerance: float
    crop_size: int = DEFAULT_CROP_SIZE
    resize_size: int = DEFAULT_CROP_SIZE + RESIZE_MARGIN
    hub_id: str | None = None
    published_in: tuple[str, ...] = ()

    @property
    def image_name(self) -> str:
        """The image's file name (the last part of its URL)."""
        return PurePosixPath(urlsplit(self.image_url).path).name


REQUIRED = ("model", "image_url", "preprocess", "logit_indices", "values", "tolerance")
OPTIONAL = ("crop_size", "resize_size", "hub_id", "published_in")


def published_anchors_path() -> Path:
    return Path(str(resources.files(__package__) / "anchors.json"))


def load_anchors(path=None) -> list[Anchor]:
    """The anchors in ``path`` (default: the published ones shipped with npvit), checked."""
    path = published_anchors_path() if path is None else Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NpvitError(f"{path}: no such anchors file") from None
    except IsADirectoryError:
        raise NpvitError(f"{path}: is a directory, not an anchors file") from None
    except OSError as e:
        raise NpvitError(f"{path}: cannot read the anchors file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise NpvitError(f"{path}: not a text (UTF-8 JSON) anchors file") from None
    except json.JSONDecodeError as e:
        raise NpvitError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None

    if not isinstance(document, dict) or not isinstance(document.get("anchors"), list):
        raise NpvitError(f'{path}: expected a JSON object with an "anchors" list')
    if not document["anchors"]:
        raise NpvitError(f'{path}: the "anchors" list is empty')
    return [_anchor(entry, f"{path}: anchor {i + 1}") for i, entry in enumerate(document["anchors"])]


def _anchor(entry, where: str) -> Anchor:
    """One JSON object -> Anchor, or an NpvitError starting with ``where``."""
    from ..models import list_models   # not at the top: npvit.models itself imports npvit.data

    if not isinstance(entry, dict):
        raise NpvitError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if isinstance(entry.get("model"), str):
        where += f" ({entry['model']})"
    missing = [k for k in REQUIRED if k not in entry]
    unknown = [k for k in entry if k not in REQUIRED + OPTIONAL]
    if missing:
        raise NpvitError(f"{where}: missing {', '.join(missing)}")
    if unknown:
        raise NpvitError(f"{where}: unknown field {', '.join(unknown)} "
                         f"(fields: {', '.join(REQUIRED + OPTIONAL)})")

    model, url, pipeline = entry["model"], entry["image_url"], entry["preprocess"]
    if model not in list_models("all"):
        raise NpvitError(f"{where}: unknown model {model!r}; choose one of {', '.join(list_models('all'))}")
    # classifiers: class indices; segmentation: flat indices, bounded by the logits' size at run time
    bound = None if model in list_models("segmentation") else NUM_CLASSES
    if not isinstance(url, str) or not PurePosixPath(urlsplit(url).path).name:
        raise NpvitError(f"{where}: image_url must be a URL ending in a file name, got {url!r}")
    if pipeline not in PIPELINES:
        raise NpvitError(f"{where}: unknown preprocess {pipeline!r}; choose one of {', '.join(PIPELINES)}")

    indices, values = entry["logit_indices"], entry["values"]
    if not (isinstance(indices, list) and indices and all(
            _is_int(i) and 0 <= i and (bound is None or i < bound) for i in indices)):
        what = "non-negative indices" if bound is None else f"class indices 0..{bound - 1}"
        raise NpvitError(f"{where}: logit_indices must be a non-empty list of {what}, got {indices!r}")
    if not (isinstance(values, list) and all(_is_finite_number(v) for v in values)):
        raise NpvitError(f"{where}: values must be a list of finite numbers, got {values!r}")
    if len(values) != len(indices):
        raise NpvitError(f"{where}: {len(values)} values for {len(indices)} logit_indices")
    tolerance = entry["tolerance"]
    if not (_is_finite_number(tolerance) and tolerance > 0):
        raise NpvitError(f"{where}: tolerance must be a positive number, got {tolerance!r}")

    crop = entry.get("crop_size", DEFAULT_CROP_SIZE)
    resize = entry.get("resize_size", crop + RESIZE_MARGIN if _is_int(crop) else None)
    if not (_is_int(crop) and _is_int(resize) and 32 <= crop <= resize):
        raise NpvitError(f"{where}: need 32 <= crop_size <= resize_size (integers), "
                         f"got crop_size {crop!r}, resize_size {resize!r}")
    published = entry.get("published_in", [])
    hub_id = entry.get("hub_id")
    if not (isinstance(published, list) and all(isinstance(s, str) for s in published)) \
            or not (hub_id is None or isinstance(hub_id, str)):
        raise NpvitError(f"{where}: published_in must be a list of strings and hub_id a string")

    return Anchor(model, url, pipeline, tuple(indices), tuple(float(v) for v in values),
                  float(tolerance), crop, resize, hub_id, tuple(published))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)   # JSON true is not 1


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
