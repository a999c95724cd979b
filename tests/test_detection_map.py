"""COCO box AP/AR in NumPy equals pycocotools' COCOeval on random and on perfect detections."""
import contextlib
import io
import json

import numpy as np
import pytest

from npvit.detection.coco_map import STAT_NAMES, coco_evaluate


def random_coco(rng, n_images=12, n_categories=4):
    """A small instances dict: boxes of every size class, some crowd boxes, areas that differ
    from the box area (as segmentation areas do), a category without any box."""
    images = [{"id": i + 1, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(n_images)]
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 3, 7, 8, 11)[:n_categories + 1]]
    annotations = []
    for im in images:
        for _ in range(rng.integers(0, 7)):
            w, h = np.exp(rng.uniform(np.log(8), np.log(300), size=2))
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append({"id": len(annotations) + 1, "image_id": im["id"],
                                "category_id": int(rng.choice([c["id"] for c in categories[:-1]])),
                                "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.5, 1.0),
                                "iscrowd": int(rng.random() < 0.08)})
    return {"images": images, "categories": categories, "annotations": annotations}


def noisy_detections(rng, coco):
    dets = []
    for a in coco["annotations"]:
        for _ in range(rng.integers(0, 3)):                      # duplicates and misses
            x, y, w, h = a["bbox"]
            jitter = rng.normal(scale=0.07, size=4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "bbox": [x + jitter[0], y + jitter[1],
                                                              max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                         "category_id": a["category_id"] if rng.random() < 0.9 else 1,
                         "score": float(rng.choice([0.3, 0.5, rng.random()]))})   # with ties
    for im in coco["images"]:                                    # false positives
        for _ in range(rng.integers(0, 4)):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice([1, 3, 7])),
                         "bbox": list(rng.uniform(0, 200, size=2)) + list(rng.uniform(5, 150, size=2)),
                         "score": float(rng.random())})
    return dets


def pycocotools_stats(tmp_path, coco, dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        evaluator = COCOeval(gt, gt.loadRes(dets) if dets else gt.loadRes([]), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    return dict(zip(STAT_NAMES, evaluator.stats))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_detections_equal_pycocotools(tmp_path, seed):
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(seed)
    coco = random_coco(rng)
    dets = noisy_detections(rng, coco)
    ours, ref = coco_evaluate(coco, dets), pycocotools_stats(tmp_path, coco, dets)
    assert 0.05 < ours["AP"] < 0.95
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name


def test_perfect_detections_score_one(tmp_path):
    pytest.importorskip("pycocotools")
    coco = random_coco(np.random.default_rng(3))
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in coco["annotations"] if not a["iscrowd"]]
    ours, ref = coco_evaluate(coco, dets), pycocotools_stats(tmp_path, coco, dets)
    assert ours["AP"] == pytest.approx(1.0) and ours["AP50"] == pytest.approx(1.0)
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name
