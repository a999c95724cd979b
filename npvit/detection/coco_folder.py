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
