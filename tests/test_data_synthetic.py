"""The synthetic shapes task: deterministic per seed, and its boxes and masks are exactly the
drawn object (npvit/data/synthetic.py)."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from npvit.cli import main
from npvit.data.synthetic import (MARGIN, OBJECT_GRAIN, SHAPES, make_synthetic, read_boxes,
                                  write_image_folder)
from npvit.errors import NpvitError
from npvit.train import find_image_folder


def _bounding_box(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_same_seed_gives_the_same_bits_and_another_seed_other_images():
    a, b = make_synthetic(12, size=48, seed=3), make_synthetic(12, size=48, seed=3)
    for field in ("images", "labels", "boxes", "masks", "colors"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, make_synthetic(12, size=48, seed=4).images)
    # image i depends only on (seed, i): a shorter set is a prefix of a longer one
    np.testing.assert_array_equal(make_synthetic(5, size=48, seed=3).images, a.images[:5])


@given(size=st.integers(32, 80), num_classes=st.integers(2, len(SHAPES)),
       seed=st.integers(0, 2**31))
def test_boxes_and_masks_are_the_drawn_object(size, num_classes, seed):
    data = make_synthetic(2 * num_classes, size=size, num_classes=num_classes, seed=seed)
    assert data.images.shape == (2 * num_classes, size, size, 3) and data.images.dtype == np.uint8
    assert data.masks.dtype == np.uint8 and set(np.unique(data.masks)) <= {0, 1}
    assert data.labels.dtype == np.int64 and data.boxes.dtype == np.float32
    assert data.class_names == sorted(SHAPES[:num_classes])
    assert np.bincount(data.labels, minlength=num_classes).tolist() == [2] * num_classes
    for image, mask, box, color in zip(data.images, data.masks, data.boxes, data.colors):
        assert box.tolist() == _bounding_box(mask)
        # object pixels carry the object's colour (+- grain), and nothing else comes close:
        # thresholding the colour distance gives back the mask exactly
        distance = np.abs(image.astype(int) - color.astype(int)).max(axis=-1)
        assert distance[mask == 1].max() <= OBJECT_GRAIN
        assert distance[mask == 0].min() >= MARGIN
        # the object is whole and large: not touching the border, at least 4% of the image
        assert box[0] >= 1 and box[1] >= 1 and box[2] <= size - 1 and box[3] <= size - 1
        assert mask.sum() >= 0.04 * size * size


def test_shapes_have_their_geometry():
    data = make_synthetic(len(SHAPES), size=96, num_classes=len(SHAPES), seed=0)
    fill = {data.class_names[label]: mask.sum() / np.prod(np.diff(box.reshape(2, 2), axis=0))
            for label, mask, box in zip(data.labels, data.masks, data.boxes)}
    # share of its bounding box an (up to 20 degrees rotated) shape fills
    assert fill["disc"] == pytest.approx(np.pi / 4, abs=0.06)
    assert fill["square"] > 0.6 and fill["triangle"] < 0.6 and fill["ring"] < fill["disc"] - 0.2
    assert fill["star"] < fill["triangle"] + 0.05


def test_written_folder_reads_back_as_image_folder_masks_and_boxes(tmp_path):
    data = make_synthetic(8, size=40, num_classes=4, seed=1)
    boxes_file = write_image_folder(data, tmp_path, split="train")
    write_image_folder(make_synthetic(4, size=40, seed=2), tmp_path, split="val")
    split = find_image_folder(tmp_path)
    assert split.classes == data.class_names and len(split.train) == 8 and len(split.val) == 4
    annotation = json.loads(boxes_file.read_text())
    assert annotation["classes"] == data.class_names
    boxes = read_boxes(boxes_file)
    for i, record in enumerate(annotation["images"]):
        image = np.asarray(Image.open(tmp_path / record["image"]))
        mask = np.asarray(Image.open(tmp_path / record["mask"]))
        np.testing.assert_array_equal(image, data.images[i])
        np.testing.assert_array_equal(mask, data.masks[i] * 255)
        assert record["image"].split("/")[1] == data.class_names[data.labels[i]]
        assert boxes[record["image"]] == data.boxes[i].tolist()
    labels = {path.as_posix().split("/")[-1]: label for path, label in split.train}
    assert [labels[f"{i:05d}.png"] for i in range(8)] == data.labels.tolist()


def test_bad_arguments_are_one_line(tmp_path):
    for kwargs in ({"n": 0}, {"n": 2, "size": 16}, {"n": 2, "num_classes": 1},
                   {"n": 2, "num_classes": len(SHAPES) + 1}, {"n": 2, "seed": -1},
                   {"n": 10**6, "size": 1024}):
        with pytest.raises(NpvitError):
            make_synthetic(**kwargs)
    (tmp_path / "boxes.json").write_text("{}")
    with pytest.raises(NpvitError, match="not a boxes file"):
        read_boxes(tmp_path / "boxes.json")


def test_cli_writes_train_and_val_at_once_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["synthetic", "shapes", "--train", "8", "--val", "4", "--size", "32",
                 "--seed", "5"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]     # no temporary left over
    root = tmp_path / "shapes"
    split = find_image_folder(root)
    assert (len(split.train), len(split.val)) == (8, 4)
    # validation images continue the training images' stream: no image is in both
    expected = make_synthetic(12, size=32, seed=5)
    val = json.loads((root / "val.json").read_text())["images"]
    for i, record in enumerate(val):
        np.testing.assert_array_equal(np.asarray(Image.open(root / record["image"])),
                                      expected.images[8 + i])
    capsys.readouterr()

    def one_line_error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("npvit: error: ")
        return err

    assert "shapes already exists" in one_line_error(["synthetic", "shapes"])
    assert "2 to 8 classes" in one_line_error(["synthetic", "other", "--classes", "9"])
    assert "--val must be at least 0" in one_line_error(["synthetic", "other", "--val", "-1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_an_interrupted_cli_run_leaves_nothing(tmp_path, monkeypatch):
    import npvit.commands.synthetic as command

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(command, "write_image_folder", fail)
    assert main(["synthetic", "shapes", "--train", "2", "--val", "2", "--size", "32"]) == 130
    assert list(tmp_path.iterdir()) == []
