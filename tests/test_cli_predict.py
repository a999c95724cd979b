"""`npvit predict` and `npvit models` through the CLI: the same top-k as timm on the same
preprocessed images (in a subprocess where torch cannot be imported), the example photo and the
random-weights notice when nothing else is available, and one line per bad image."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import npvit
from npvit.cli import main
from npvit.data import default_pipeline, example_image_path, load_image, preprocess
from npvit.weights import OFFICIAL, save_npz
from no_torch import blocked_imports, run_without_torch
from official_layouts import cvnets_state_dict
from test_data_image import BAD_FILES
from timm_reference import random_timm_model

V1, V2 = "mobilevit_xxs", "mobilevitv2_050"
TOPK = 5


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NPVIT_HOME", str(cache))
    return cache


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The example photo, an RGBA PNG wider than tall, a grey JPEG with odd sides."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:200, 0:300]
    rgba = np.stack([xx % 256, yy, (xx + yy) % 256, np.full_like(xx, 200)], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "pattern.png")
    grey = (rng.random((333, 257)) * 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(folder / "noise grey.jpg")
    return [example_image_path(), folder / "pattern.png", folder / "noise grey.jpg"]


def _timm_top_k(torch, timm_model, paths, pipeline, size=256):
    """[(indices, probabilities)] of timm on npvit's preprocessing of each image; also checks
    that the ranking is not decided by a float32 rounding (a gap after every rank)."""
    x = np.stack([preprocess(load_image(p), pipeline, crop_size=size) for p in paths])
    with torch.no_grad():
        probs = torch.softmax(timm_model(torch.from_numpy(x)).double(), dim=1).numpy()
    expected = []
    for row in probs:
        order = np.argsort(-row)[:TOPK + 1]
        assert np.all(-np.diff(row[order]) > 1e-5 * row[order[0]]), "near-tie: pick another seed"
        expected.append((order[:TOPK].tolist(), row[order[:TOPK]]))
    return expected


def _predict_without_torch(tmp_path, args):
    hook = tmp_path / "no_torch"
    out = run_without_torch(["-m", "npvit", "predict", "--json", *map(str, args)], hook,
                            env={**os.environ, "NPVIT_HOME": str(tmp_path / "cache")})
    assert blocked_imports(hook) == []
    return out


def _assert_same_top_k(out, paths, expected, model_name):
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in results] == [str(p) for p in paths]
    for result, (indices, probs) in zip(results, expected):
        assert result["model"] == model_name and "RANDOM" not in result["weights"]
        assert [row["index"] for row in result["top"]] == indices
        assert np.abs(np.array([row["prob"] for row in result["top"]]) - probs).max() <= 1e-5
        classes = npvit.data.imagenet_classes()
        assert [row["wnid"] for row in result["top"]] == [classes[i].wnid for i in indices]


def test_predict_v1_official_layout_checkpoint_equals_timm_without_torch(torch, tmp_path, photos):
    timm_model = random_timm_model(V1, seed=21)
    checkpoint = tmp_path / "official.pt"
    torch.save(cvnets_state_dict(timm_model.state_dict()), checkpoint)
    expected = _timm_top_k(torch, timm_model, photos, default_pipeline(V1))     # cvnets-v1
    out = _predict_without_torch(tmp_path, [*photos, "--weights", checkpoint])  # model detected
    _assert_same_top_k(out, photos, expected, V1)


def test_predict_v2_converted_npz_equals_timm_without_torch(torch, tmp_path, photos):
    timm_model = random_timm_model(V2, seed=22)
    torch.save(cvnets_state_dict(timm_model.state_dict()), tmp_path / "official.pt")
    convert = run_without_torch(["-m", "npvit", "convert", str(tmp_path / "official.pt"),
                                 "-o", str(tmp_path / "w.npz")], tmp_path / "hook")
    assert convert.returncode == 0, convert.stderr
    for pipeline, size in [("cvnets-v2", 256), ("hf", 160)]:
        expected = _timm_top_k(torch, timm_model, photos, pipeline, size)
        out = _predict_without_torch(tmp_path, [*photos, "--model", V2, "--weights",
                                                tmp_path / "w.npz", "--preprocess", pipeline,
                                                "--size", size])
        _assert_same_top_k(out, photos, expected, V2)


def test_without_images_or_weights_it_classifies_the_example_photo_with_a_notice(tmp_path):
    out = _predict_without_torch(tmp_path, ["--topk", "3"])
    assert out.returncode == 0, out.stderr
    notes = out.stderr.splitlines()
    assert len(notes) == 2 and "Traceback" not in out.stderr
    assert "example photo" in notes[0] and str(example_image_path()) in notes[0]
    assert "no official weights for mobilevitv2_050" in notes[1] and "RANDOM" in notes[1]
    assert "npvit download mobilevitv2_050" in notes[1]
    [result] = [json.loads(line) for line in out.stdout.splitlines()]
    assert result["image"] == str(example_image_path()) and result["model"] == V2
    assert result["weights"].startswith("RANDOM") and len(result["top"]) == 3


def test_table_output_names_image_model_weights_and_classes(photos, empty_cache, capsys):
    save_npz(npvit.create_model(V1, seed=2).state_dict(), empty_cache / f"{V1}.npz")
    assert main(["predict", str(photos[1]), "--model", V1, "--topk", "2", "--size", "64"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""                                  # cached weights: no notice
    header, *rows = captured.out.splitlines()
    assert header.startswith(f"{photos[1]}  [{V1}, official weights") and "cvnets-v1 64x64" in header
    assert len(rows) == 2
    for rank, row in enumerate(rows, start=1):
        assert re.fullmatch(rf"\s+{rank}\s+\d+\.\d\d%\s+\d+\s+n\d{{8}}\s+\S.*", row), row


@pytest.mark.parametrize("case", BAD_FILES)
def test_each_bad_image_is_one_line_and_a_nonzero_exit(tmp_path, empty_cache, capsys, case):
    make, problem = BAD_FILES[case]
    path = make(tmp_path)
    assert main(["predict", str(path)]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"npvit: error: {path}: ") and problem in captured.err


def test_good_and_bad_images_together_report_every_good_one(tmp_path, photos, empty_cache):
    panorama = tmp_path / "panorama.png"          # readable, too long to resize (short side 96)
    Image.new("RGB", (400_000, 32)).save(panorama)
    paths = [tmp_path / "missing.jpg", photos[1], BAD_FILES["truncated jpeg"][0](tmp_path),
             photos[2], BAD_FILES["empty"][0](tmp_path), panorama]
    save_npz(npvit.create_model(V2, seed=4).state_dict(), tmp_path / "w.npz")
    out = _predict_without_torch(tmp_path, [*paths, "--weights", tmp_path / "w.npz", "--size", "64"])
    assert out.returncode == 1
    assert [json.loads(line)["image"] for line in out.stdout.splitlines()] == [str(photos[1]),
                                                                               str(photos[2])]
    errors = out.stderr.splitlines()
    assert len(errors) == 4 and "Traceback" not in out.stderr
    for line, bad in zip(errors, [paths[0], paths[2], paths[4], panorama]):
        assert line.startswith(f"npvit: error: {bad}: ")
    assert "too elongated" in errors[-1]


@pytest.mark.parametrize("argv, message", [
    (["--model", "mobilevit_huge"], "unknown model 'mobilevit_huge'"),
    (["--weights", "nowhere.npz"], "nowhere.npz does not exist"),
    (["--topk", "0"], "--topk"),
    (["--size", "31"], "--size"),
])
def test_setup_errors_are_one_line_with_exit_2(photos, empty_cache, capsys, argv, message):
    assert main(["predict", str(photos[1]), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npvit: error: ") and message in err


def test_a_checkpoint_for_another_model_is_one_line(tmp_path, photos, empty_cache, capsys):
    save_npz(npvit.create_model(V1).state_dict(), tmp_path / "xxs.npz")
    assert main(["predict", str(photos[1]), "--model", V2, "--weights", str(tmp_path / "xxs.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds mobilevit_xxs weights, not mobilevitv2_050" in err


def test_models_lists_all_ten_with_counts_top1_and_cache_state(tmp_path, empty_cache):
    empty_cache.mkdir()
    (empty_cache / f"{V2}.npz").write_bytes(b"")              # only the name matters here
    (empty_cache / OFFICIAL["mobilevit_s"].file_name).write_bytes(b"")
    out = run_without_torch(["-m", "npvit", "models"], tmp_path / "hook",
                            env={**os.environ, "NPVIT_HOME": str(empty_cache)})
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:-1]}
    assert list(rows) == npvit.list_models()
    for name, line in rows.items():
        entry = OFFICIAL[name]   # test_weights_download: entry.params == the model's count
        assert f"{entry.params:,}" in line and f"{entry.top1:.2f}%" in line
        expected = {V2: "converted", "mobilevit_s": "downloaded"}.get(name, "-")
        assert line.split()[5] == expected
    assert str(empty_cache) in out.stdout.splitlines()[-1]


def test_readme_first_command_is_a_prediction_that_runs_offline(tmp_path):
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].splitlines()[0]
    install, command = first.split(" && ")
    assert install == "pip install -e ." and command.split()[:2] == ["npvit", "predict"]
    out = _predict_without_torch(tmp_path, command.split()[2:])    # empty cache, no torch
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "RANDOM" in json.loads(out.stdout)["weights"]
