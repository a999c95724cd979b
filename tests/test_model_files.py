"""A fine-tuned model used by name: its model file (npvit.weights.meta) drives `npvit predict`,
`eval`, `scoremap` and create_model(pretrained=PATH) with no extra flags, in a process where
torch cannot be imported; files without names, of another model, or folders that do not match
are one line each."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import npvit
from npvit.cli import main
from npvit.data import load_image, preprocess, preprocessed_box
from npvit.data.synthetic import make_synthetic, write_image_folder
from npvit.errors import NpvitError
from npvit.inference import classify
from npvit.weights import model_meta, read_model_meta, save_npz, write_model_npz
from no_torch import blocked_imports, run_without_torch

NAME, SIZE = "mobilevitv2_050", 32


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """OUT/train (8 images), OUT/val (12, 3 per class) and OUT/val.json, from `npvit synthetic`."""
    root = tmp_path_factory.mktemp("shapes") / "out"
    assert main(["synthetic", str(root), "--train", "8", "--val", "12", "--size", str(SIZE),
                 "--seed", "7"]) == 0
    return root


def _npvit_without_torch(tmp_path, *args):
    hook = tmp_path / "no_torch"
    out = run_without_torch(["-m", "npvit", *map(str, args)], hook,
                            env={**os.environ, "NPVIT_HOME": str(tmp_path / "cache"),
                                 "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert blocked_imports(hook) == [] and "Traceback" not in out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def model_file(shapes):
    """run/model.npz from one epoch of a real `npvit finetune` (no torch): the file format and
    its use, not the training, are under test. The small recipe validates images at their own
    size (no resize margin), so the boxes of val.json are the network's boxes."""
    run = shapes.parent / "run"
    _npvit_without_torch(shapes.parent, "finetune", shapes, "--model", NAME, "--size", SIZE,
                         "--recipe", "small", "--epochs", 1, "--batch-size", 4, "--out", run,
                         "--quiet")
    return run / "model.npz"


def test_predict_eval_scoremap_by_name_without_torch(shapes, model_file, tmp_path):
    meta = read_model_meta(model_file)
    classes = meta["classes"]
    assert meta["model"] == NAME and meta["input_size"] == SIZE and meta["resize_size"] == SIZE
    assert classes == sorted(p.name for p in (shapes / "val").iterdir())
    val = sorted((shapes / "val").rglob("*.png"))
    # what the model predicts for each image, computed here through the Python API
    model = npvit.create_model(pretrained=model_file).eval()
    x = np.stack([preprocess(load_image(p), "cvnets-v2", SIZE, SIZE) for p in val])
    predicted = classify(model, x).argmax(axis=1)

    # predict: the user's class names, top-k capped at the 4 classes
    out = _npvit_without_torch(tmp_path, "predict", val[0], "--weights", model_file, "--topk", 9)
    header, *rows = out.splitlines()
    assert f"[{NAME}, weights {model_file} (4 classes), cvnets-v2 {SIZE}x{SIZE}]" in header
    assert len(rows) == 4 and sorted(r.split()[-1] for r in rows) == classes
    assert rows[0].split()[-1] == classes[predicted[0]]

    # eval: per-class counts are the folders' file counts, correct = the predictions above
    confusion_png = tmp_path / "confusion.png"
    result = json.loads(_npvit_without_torch(
        tmp_path, "eval", shapes / "val", "--weights", model_file, "--json",
        "--confusion", confusion_png).splitlines()[0])
    labels = np.array([classes.index(p.parent.name) for p in val])
    assert result["classes"] == classes and result["images"] == len(val) == 12
    assert "top5" not in result                       # 4 classes: top-5 would always be 100%
    for row in result["per_class"]:
        k = classes.index(row["class"])
        assert row["images"] == len(list((shapes / "val" / row["class"]).glob("*.png")))
        assert row["correct"] == int(((labels == k) & (predicted == k)).sum())
    assert result["top1"] == pytest.approx(np.mean(predicted == labels))
    # ... and what finetune measured on the same folder after its last epoch
    history = json.loads((model_file.parent / "run.json").read_text())["epochs"]
    assert result["top1"] == pytest.approx(history[-1]["val_acc"])
    confusion = np.array(result["confusion"])
    assert confusion.sum() == len(val) and np.trace(confusion) == (predicted == labels).sum()
    assert Image.open(confusion_png).format == "PNG"

    # scoremap: the model's input size and pipeline from the file; the box from val.json
    record = json.loads((shapes / "val.json").read_text())["images"][0]
    out = _npvit_without_torch(tmp_path, "scoremap", shapes / record["image"], "--weights",
                               model_file, "--boxes", shapes / "val.json",
                               "-o", tmp_path / "map.png")
    box = preprocessed_box(record["box"], (SIZE, SIZE), SIZE, SIZE)    # = the box itself here
    assert box.tolist() == record["box"]
    assert f"inside the box {' '.join(f'{v:g}' for v in box)} " in out
    assert re.search(r"mean +\d+\.\d%", out) and (tmp_path / "map.png").is_file()


def test_more_than_five_classes_report_top5_and_every_class(tmp_path, capsys):
    data = make_synthetic(12, size=SIZE, num_classes=6, seed=1)
    write_image_folder(data, tmp_path, split="val")
    model = npvit.create_model("mobilevit_xxs", num_classes=6, seed=2)
    path = write_model_npz(tmp_path / "m.npz", model.state_dict(),
                           model_meta("mobilevit_xxs", data.class_names, SIZE, "cvnets-v1"))
    assert main(["eval", str(tmp_path / "val"), "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "top-5" in out and "cvnets-v1 32x32" in out
    per_class = out.split("per class")[1].splitlines()[1:]
    assert [line.split()[0] for line in per_class] == data.class_names
    correct = [re.fullmatch(r"\((\d)/2\)", line.split()[-1]).group(1) for line in per_class]
    top1 = re.search(r"top-1 .*\((\d+)/12\)", out).group(1)
    assert sum(map(int, correct)) == int(top1)


def test_create_model_from_a_model_file(model_file):
    model = npvit.create_model(pretrained=model_file)
    assert model.name == NAME and model.head.fc.weight.shape[0] == 4
    assert model.meta == read_model_meta(model_file)
    same = npvit.create_model(NAME, pretrained=model_file)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(same.state_dict()[k], v)
    # another number of classes: a new task, a fresh head, and no longer those class names
    other = npvit.create_model(pretrained=model_file, num_classes=3)
    assert other.head.fc.weight.shape[0] == 3 and other.meta is None
    with pytest.raises(NpvitError, match=f"is a {NAME} model .4 classes., not mobilevit_xxs"):
        npvit.create_model("mobilevit_xxs", pretrained=model_file)
    with pytest.raises(NpvitError, match="needs a model name"):
        npvit.create_model()


def _one_line(capsys, argv):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npvit: error: ")
    return err


def test_mismatches_are_one_line_and_unnamed_weights_say_so(shapes, model_file, tmp_path, capsys):
    # eval folders not named as the model's classes
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    Image.fromarray(make_synthetic(1, SIZE).images[0]).save(tmp_path / "pets" / "cat" / "a.png")
    err = _one_line(capsys, ["eval", tmp_path / "pets", "--weights", model_file])
    assert "cross, disc, square, triangle" in err and "pets/cat is not one of them" in err
    # the synthetic OUT folder itself: points at OUT/val
    assert "did you mean" in _one_line(capsys, ["eval", shapes, "--weights", model_file])
    # a model file of another model than --model
    image = tmp_path / "pets" / "cat" / "a.png"
    for box in (["5", "5", "2", "9"], ["nan", "0", "4", "4"]):
        assert "--box needs" in _one_line(capsys, ["scoremap", image, "--weights", model_file,
                                                   "--box", *box])
    for command in (["predict", image], ["eval", shapes / "val"], ["scoremap", image]):
        err = _one_line(capsys, [*command, "--weights", model_file, "--model", "mobilevit_xxs"])
        assert f"is a {NAME} model (4 classes), not mobilevit_xxs" in err

    # a plain state dict: works, classes labelled "class i", one note
    plain = save_npz(npvit.create_model(NAME, num_classes=4, seed=5).state_dict(),
                     tmp_path / "plain.npz")
    image = sorted((shapes / "val").rglob("*.png"))[0]
    assert main(["predict", str(image), "--weights", str(plain), "--size", str(SIZE)]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()[1:]
    assert len(rows) == 4 and all(re.search(r"  class [0-3]$", r) for r in rows)
    assert err.count("\n") == 1 and "name none of their 4 classes" in err
    assert main(["eval", str(shapes / "val"), "--weights", str(plain), "--size", str(SIZE)]) == 0
    out, err = capsys.readouterr()
    assert "taking the folders" in err and "cross" in out
