"""``npvit finetune`` on tiny generated image folders: end to end in a subprocess, exact resume
after an interruption, the frozen backbone, the replaced head, and one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import npvit
from npvit import cli
from npvit.commands import finetune
from npvit.weights import read_checkpoint, read_model_meta

CLASSES = ("diagonal", "horizontal", "vertical")
# small and quick: 32x32 crops, batches of 4
QUICK = ["--size", "32", "--batch-size", "4", "--quiet"]


def write_stripes(root, n_per_class, split=("train", "val"), seed=0):
    """PNG stripes (48x48, random colours, period and phase), one folder per orientation."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:48, 0:48]
    coordinate = {"diagonal": rows + cols, "horizontal": rows, "vertical": cols}
    for part, n in zip(split, n_per_class):
        for c in CLASSES:
            folder = root / part / c
            folder.mkdir(parents=True)
            for i in range(n):
                period = rng.integers(6, 12)
                on = (coordinate[c] + rng.integers(0, period)) % period < period // 2
                pixels = np.where(on[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3))
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_stripes(tmp_path_factory.mktemp("stripes"), (4, 2))


def test_finetune_runs_end_to_end_in_a_subprocess(folder, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "npvit", "finetune", str(folder), "--model", "mobilevitv2_050",
         "--epochs", "2", "--out", str(out), *QUICK],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data: 3 classes (diagonal, horizontal, vertical), 12 training "
                               "and 6 validation images")
    assert [line.split()[:2] for line in lines if line.startswith("epoch")] == \
        [["epoch", "1/2"], ["epoch", "2/2"]]
    assert all("val loss" in line for line in lines if line.startswith("epoch"))
    # the model file says what it is, and its weights load back into a 3-class model
    meta = read_model_meta(out / "model.npz")
    assert (meta["model"], meta["classes"], meta["input_size"]) == \
        ("mobilevitv2_050", list(CLASSES), 32)
    model = npvit.create_model("mobilevitv2_050", num_classes=3)
    model.load_state_dict(read_checkpoint(out / "model.npz"))
    assert model.eval()(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "curves.png",
                                                      "model.npz", "run.json"]
    # the manifest logs both epochs: eval-mode held-out loss and accuracy, lr, time
    log = json.loads((out / "run.json").read_text())
    assert log["classes"] == list(CLASSES) and log["epochs_done"] == 2
    assert [r["epoch"] for r in log["epochs"]] == [1, 2]
    for record in log["epochs"]:
        assert 0 <= record["val_acc"] <= 1 and record["val_loss"] > 0
        assert record["lr_first"] > 0 and record["seconds"] > 0
    assert Image.open(out / "curves.png").size[0] > 400


def test_resume_after_an_interruption_ends_with_the_same_parameters(folder, tmp_path,
                                                                    monkeypatch):
    """Run A trains 3 epochs. Run B is interrupted (Ctrl-C) right after epoch 1's checkpoint,
    then the same command plus --resume trains epochs 2 and 3: every weight, BatchNorm
    statistic and optimiser state entry equals run A's, bit for bit."""
    args = ["finetune", str(folder), "--model", "mobilevit_xxs", "--epochs", "3", *QUICK]
    assert cli.main(args + ["--out", str(tmp_path / "A")]) == 0

    write = finetune.write_epoch

    def write_then_interrupt(*a, **kw):
        write(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "write_epoch", write_then_interrupt)
    assert cli.main(args + ["--out", str(tmp_path / "B")]) == 130
    monkeypatch.setattr(finetune, "write_epoch", write)
    assert cli.main(args + ["--resume", str(tmp_path / "B" / "checkpoint.npz")]) == 0

    for name in ("model.npz", "checkpoint.npz"):
        with np.load(tmp_path / "A" / name) as a, np.load(tmp_path / "B" / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                if k != "meta/history":          # the log holds wall-clock times
                    assert np.array_equal(a[k], b[k]), (name, k)
    # the log continues too: the same three epochs with the same losses
    log_a, log_b = (json.loads((tmp_path / r / "run.json").read_text())["epochs"] for r in "AB")
    assert [(r["epoch"], r["train_loss"], r["val_acc"]) for r in log_a] == \
        [(r["epoch"], r["train_loss"], r["val_acc"]) for r in log_b]


def test_frozen_backbone_with_a_new_head(folder, tmp_path):
    """Weights of a 2-class model, fine-tuned on 3 classes with --freeze-backbone: the head is
    replaced (3 outputs) and everything else, BatchNorm statistics included, is unchanged."""
    source = npvit.create_model("mobilevit_xxs", num_classes=2, seed=3)
    weights = tmp_path / "two_classes.npz"
    np.savez(weights, **source.state_dict())
    out = tmp_path / "out"
    assert cli.main(["finetune", str(folder), "--model", "mobilevit_xxs", "--weights",
                     str(weights), "--freeze-backbone", "--epochs", "1", "--out", str(out),
                     *QUICK]) == 0
    tuned = read_checkpoint(out / "model.npz")
    assert tuned["head.fc.weight"].shape == (3, source.num_features)
    for k, v in source.state_dict().items():
        if not k.startswith("head.fc."):
            assert np.array_equal(tuned[k], v), k


def _one_line_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("npvit: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_give_one_line_errors(folder, tmp_path, capsys):
    assert "no such directory" in _one_line_error(
        capsys, ["finetune", str(tmp_path / "missing"), "--model", "mobilevit_xxs"])
    (tmp_path / "empty").mkdir()
    assert "no class folders" in _one_line_error(
        capsys, ["finetune", str(tmp_path / "empty"), "--model", "mobilevit_xxs"])
    assert "--model is required" in _one_line_error(capsys, ["finetune", str(folder)])
    assert "unknown model 'mobilevit_xxl'" in _one_line_error(
        capsys, ["finetune", str(folder), "--model", "mobilevit_xxl"])
    assert "holds mobilevitv2_050 weights, not mobilevit_xxs" in _one_line_error(capsys, [
        "finetune", str(folder), "--model", "mobilevit_xxs", "--weights",
        str(_saved(npvit.create_model("mobilevitv2_050"), tmp_path / "v2.npz"))])


def test_a_broken_image_stops_training_with_its_name(tmp_path, capsys):
    root = write_stripes(tmp_path / "data", (2, 1))
    (root / "train" / "vertical" / "broken.jpg").write_bytes(b"not a jpeg")
    # one batch of all 7 training images, so the first step reads the broken file
    err = _one_line_error(capsys, ["finetune", str(root), "--model", "mobilevit_xxs",
                                   "--out", str(tmp_path / "out"), *QUICK, "--batch-size", "64"])
    assert "broken.jpg" in err


def test_resume_refuses_other_settings_and_other_classes(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["finetune", str(folder), "--model", "mobilevit_xxs", "--epochs", "1",
                     "--out", str(out), *QUICK]) == 0
    ckpt = str(out / "checkpoint.npz")
    assert "--lr 0.5 (checkpoint: 0.001)" in _one_line_error(
        capsys, ["finetune", str(folder), "--resume", ckpt, "--lr", "0.5"])
    other = write_stripes(tmp_path / "other", (1, 1))
    (other / "train" / "diagonal").rename(other / "train" / "slanted")
    (other / "val" / "diagonal").rename(other / "val" / "slanted")
    assert "other classes" in _one_line_error(capsys, ["finetune", str(other), "--resume", ckpt])
    capsys.readouterr()
    assert cli.main(["finetune", str(folder), "--resume", ckpt]) == 0    # its 1 epoch is done
    assert "nothing to train" in capsys.readouterr().out


def _saved(model, path):
    np.savez(path, **model.state_dict())
    return path
