"""`npvit detect`, `npvit eval` on a COCO folder and `npvit models --task detection`, end to end
in subprocesses where torch cannot be imported."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from no_torch import run_without_torch

NAME = "ssdlite_mobilevitv2_050_coco"


def _photo(path, seed, size=(200, 150)):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 60).astype(np.uint8)
    pixels[30:110, 40:150] = (200, 40, 40)                                 # an object
    Image.fromarray(pixels).save(path)


def _npvit(args, tmp_path, env=None):
    env = {**os.environ, "NPVIT_HOME": str(tmp_path / "cache"), **(env or {})}
    return run_without_torch(["-m", "npvit", *args], tmp_path / "hook", env=env, cwd=tmp_path)


def test_detect_images_json_drawing_and_errors(tmp_path):
    _photo(tmp_path / "a.png", 0)
    _photo(tmp_path / "b.jpg", 1, size=(97, 131))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = _npvit(["detect", "a.png", "broken.jpg", "b.jpg", "--json", "--threshold", "0.0125",
                  "-o", "boxes.png"], tmp_path)
    assert out.returncode == 1, out.stderr                     # one image was unusable
    assert "npvit: error: broken.jpg:" in out.stderr and "Traceback" not in out.stderr
    assert "RANDOM untrained weights" in out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in rows] == ["a.png", "b.jpg"]
    for r, (w, h) in zip(rows, [(200, 150), (97, 131)]):
        assert r["model"] == NAME and "RANDOM" in r["weights"] and r["size"] == [320, 320]
        assert 0 < len(r["detections"]) <= 200
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h and d["score"] > 0.0125
            assert isinstance(d["label"], str) and 1 <= d["category_id"] <= 90
    for stem, size in (("a", (200, 150)), ("b", (97, 131))):
        assert Image.open(tmp_path / f"boxes_{stem}.png").size == size

    out = _npvit(["detect", "a.png", "--model", "ssdlite_mobilevit_tiny_coco"], tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("npvit: error: unknown detector")


def test_eval_on_a_coco_folder_and_models_listing(tmp_path):
    import npvit
    from npvit.weights import save_npz
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, annotations = [], []
    for i in range(2):
        _photo(root / "val2017" / f"{i:012d}.jpg", i)
        images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 200, "height": 150})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 3, "iscrowd": 0,
                            "bbox": [40, 30, 110, 80], "area": 8800.0})
    (root / "val2017" / "000000000009.jpg").write_bytes(b"")
    images.append({"id": 10, "file_name": "000000000009.jpg", "width": 200, "height": 150})
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations,
         "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    save_npz(npvit.create_model(NAME, seed=1).state_dict(), tmp_path / "w.npz")

    out = _npvit(["eval", "coco", "--weights", "w.npz", "--json"], tmp_path)
    assert out.returncode == 1, out.stderr                     # the empty file was skipped
    assert "000000000009.jpg: the file is empty" in out.stderr
    result = json.loads(out.stdout)
    assert result["model"] == NAME and result["images"] == 2 and result["skipped"] == 1
    assert 0.0 <= result["AP"] <= result["AP50"] <= 1.0 and result["AP_small"] == -1.0

    out = _npvit(["eval", "coco"], tmp_path)                   # no weights: says how to get them
    assert out.returncode == 2 and "npvit download ssdlite_mobilevitv2_050_coco" in out.stderr

    out = _npvit(["models", "--task", "detection"], tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:-1]]
    assert [r[0] for r in rows] == npvit.list_models(task="detection")
    assert rows[3][:4] == [NAME, "cvnets-v0.2", "2,035,395", "21.24"]


@pytest.mark.parametrize("bad", [
    "{not json", json.dumps({"images": []}),
    json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, "w", 4]}]}),
    json.dumps({"images": [{"id": 1, "file_name": "../a.jpg"}], "categories": [], "annotations": []}),
])
def test_a_bad_instances_file_is_one_line(tmp_path, bad):
    from npvit.detection.coco_folder import read_coco_folder
    from npvit.errors import NpvitError
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(bad)
    with pytest.raises(NpvitError) as err:
        read_coco_folder(tmp_path)
    assert "instances_val2017.json" in str(err.value) and "\n" not in str(err.value)
