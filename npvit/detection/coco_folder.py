"""A COCO-layout folder: an instances json and the images it names, as COCO ships them:

    DIR/annotations/instances_val2017.json     (or DIR/instances_*.json)
    DIR/val2017/000000000139.jpg ...           (or DIR/images/..., or DIR/...)

The json's "images" give file_name, width, height; its "annotations" the boxes [x, y, w, h]
in pixels with category_id, area and iscrowd (npvit.detection.coco_map reads them as they are).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import NpvitError


def annotation_files(directory) -> list[Path]:
    root = Path(directory)
    return sorted([*root.glob("annotations/instances_*.json"), *root.glob("instances_*.json")])


def is_coco_folder(directory) -> bool:
    return Path(directory).is_dir() and bool(annotation_files(directory))


def read_coco_folder(directory) -> tuple[dict, dict[int, Path]]:
    """(the instances dict, {image id: image file}); one clear error when something is off."""
    files = annotation_files(directory)
    if not files:
        raise NpvitError(f"{directory}: no annotations/instances_*.json")
    if len(files) > 1:
        preferred = [f for f in files if f.name == "instances_val2017.json"]
        if not preferred:
            raise NpvitError(f"{directory}: several instances files ({', '.join(f.name for f in files)}); "
                             "keep one")
        files = preferred
    path = files[0]
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NpvitError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise NpvitError(f"{path}: not a COCO instances file (needs images, annotations, categories)")
    _check_records(data, path)
    split = path.stem[len("instances_"):]
    root = Path(directory)
    folders = [root / split, root / "images", root]
    files_by_id = {}
    for image in data["images"]:
        name = image.get("file_name")
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise NpvitError(f"{path}: image {image.get('id')} has an unusable file_name {name!r}")
        candidates = [f / name for f in folders if (f / name).is_file()]
        files_by_id[image["id"]] = candidates[0] if candidates else folders[0] / name
    return data, files_by_id


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _check_records(data: dict, path: Path) -> None:
    """Every image has an id; every annotation an image_id among them, a category_id, a box of
    four finite numbers with w, h >= 0, and a finite area if it has one."""
    ids = set()
    for image in data["images"]:
        if not isinstance(image, dict) or "id" not in image:
            raise NpvitError(f"{path}: an entry of images has no id")
        ids.add(image["id"])
    for a in data["annotations"]:
        box = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(map(_number, box))
                and box[2] >= 0 and box[3] >= 0):
            raise NpvitError(f"{path}: annotation {a.get('id') if isinstance(a, dict) else a!r} "
                             "needs bbox [x, y, w, h] of finite numbers, w, h >= 0")
        if a.get("image_id") not in ids or "category_id" not in a:
            raise NpvitError(f"{path}: annotation {a.get('id')} names no known image_id / category_id")
        if "area" in a and not _number(a["area"]):
            raise NpvitError(f"{path}: annotation {a.get('id')} has a non-numeric area")
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c:
            raise NpvitError(f"{path}: an entry of categories has no id")
