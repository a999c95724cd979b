"""``npvit verify`` end to end, on checkpoints and anchors the test makes itself.

A timm model with random weights and random BatchNorm statistics is saved with torch.save in the
official ml-cvnets layout; the anchors file holds timm's logits on a test-made image, computed
on an input the test builds with its own PIL/NumPy code for the 'hf' pipeline (short side 288
with PIL bilinear, centre crop 256, /255, RGB -> BGR). npvit must reproduce them within 1e-4 in
a subprocess where torch cannot be imported, and must report a FAIL when one published value is
moved by 1e-2. The real official anchors (npvit/data/anchors.json) need the real weights:
tests/test_official.py."""
import json
import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from npvit.cli import main as npvit_main
from npvit.data.anchors import load_anchors
from npvit.errors import NpvitError
from npvit.weights import OFFICIAL
from no_torch import blocked_imports, run_without_torch
from official_layouts import cvnets_state_dict
from timm_reference import random_timm_model

COCO_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"
INDICES = [0, 1, 2, 500, 999]


def hf_input(path) -> np.ndarray:
    """(1, 3, 256, 256) float32, written from the HF processor's definition, not npvit's code."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 288 / min(w, h)
    image = image.resize((int(w * scale) if w > h else 288, int(h * scale) if h > w else 288),
                         Image.Resampling.BILINEAR)
    rgb = np.asarray(image)
    top, left = (rgb.shape[0] - 256) // 2, (rgb.shape[1] - 256) // 2
    rgb = rgb[top:top + 256, left:left + 256]
    bgr = rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    return np.ascontiguousarray(bgr)[None]


def made_image(path, seed=0):
    """A 320x240 picture with smooth shapes and texture, so every layer sees structure."""
    yy, xx = np.mgrid[0:240, 0:320] / 100.0
    rng = np.random.default_rng(seed)
    rgb = np.stack([np.sin(3 * xx + 1) + np.cos(2 * yy), np.sin(xx * yy), np.cos(4 * yy - xx)], -1)
    rgb = (rgb - rgb.min()) / (rgb.max() - rgb.min()) * 200 + rng.integers(0, 55, rgb.shape)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def anchor_entry(torch, timm_model, name, image, image_url=COCO_URL) -> dict:
    with torch.no_grad():
        logits = timm_model(torch.from_numpy(hf_input(image)))[0].numpy()
    return {"model": name, "image_url": image_url, "preprocess": "hf", "crop_size": 256,
            "resize_size": 288, "logit_indices": INDICES,
            "values": [float(logits[i]) for i in INDICES], "tolerance": 1e-4,
            "published_in": ["tests/test_verify.py (timm on a test-made image)"]}


def write_anchors(path, *entries):
    path.write_text(json.dumps({"about": "test anchors", "anchors": list(entries)}))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Official-layout checkpoints of mobilevit_xxs and mobilevitv2_050 (random weights and BN
    statistics) in a folder under their official names, a test-made image, anchors from timm."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("verify")
    image = made_image(folder / "made.png")
    entries = {}
    for seed, name in enumerate(("mobilevit_xxs", "mobilevitv2_050")):
        timm_model = random_timm_model(name, seed=20 + seed)
        torch.save(cvnets_state_dict(timm_model.state_dict()), folder / OFFICIAL[name].file_name)
        entries[name] = anchor_entry(torch, timm_model, name, image)
    return {"folder": folder, "image": image, "entries": entries,
            "ckpt": folder / OFFICIAL["mobilevit_xxs"].file_name}


def table_row(stdout: str, model: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(model + " "))


# --- end to end ---------------------------------------------------------------------------------
def test_verify_passes_without_torch(made, tmp_path):
    anchors = write_anchors(tmp_path / "a.json", made["entries"]["mobilevit_xxs"])
    hook = tmp_path / "no_torch"
    out = run_without_torch(["-m", "npvit", "verify", "--weights", str(made["ckpt"]),
                             "--anchors", str(anchors), "--image", str(made["image"])], hook)
    assert out.returncode == 0, out.stdout + out.stderr
    assert blocked_imports(hook) == []          # npvit never even tried to import torch
    row = table_row(out.stdout, "mobilevit_xxs")
    assert row.endswith("PASS")
    assert float(row.split()[1]) <= 1e-4         # the max |diff| column
    assert "1 of 1 anchors reproduced" in out.stdout


def test_verify_fails_when_one_published_value_moves_by_1e_2(made, tmp_path):
    entry = json.loads(json.dumps(made["entries"]["mobilevit_xxs"]))
    entry["values"][3] += 1e-2
    anchors = write_anchors(tmp_path / "a.json", entry)
    out = run_without_torch(["-m", "npvit", "verify", "--weights", str(made["ckpt"]),
                             "--anchors", str(anchors), "--image", str(made["image"])],
                            tmp_path / "no_torch")
    assert out.returncode == 1, out.stdout + out.stderr
    row = table_row(out.stdout, "mobilevit_xxs")
    assert row.endswith("FAIL")
    assert 0.9e-2 <= float(row.split()[1]) <= 1.1e-2   # the miss is shown
    assert "1 FAILED" in out.stdout


def test_weights_folder_with_two_models(made, tmp_path, capsys):
    anchors = write_anchors(tmp_path / "a.json", *made["entries"].values())
    code = npvit_main(["verify", "--weights", str(made["folder"]), "--anchors", str(anchors),
                       "--image", str(made["image"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert table_row(out, "mobilevit_xxs").endswith("PASS")
    assert table_row(out, "mobilevitv2_050").endswith("PASS")
    # --model picks one of them
    assert npvit_main(["verify", "--model", "mobilevitv2_050", "--weights", str(made["folder"]),
                       "--anchors", str(anchors), "--image", str(made["image"])]) == 0
    assert "mobilevit_xxs " not in capsys.readouterr().out


def test_cached_weights_and_image_downloaded_once(made, tmp_path, monkeypatch, capsys, server):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(made["ckpt"], home)                 # as `npvit download` leaves it
    monkeypatch.setenv("NPVIT_HOME", str(home))
    server.files["/img/made.png"] = made["image"].read_bytes()
    entry = dict(made["entries"]["mobilevit_xxs"], image_url=server.url + "/img/made.png")
    anchors = write_anchors(tmp_path / "a.json", entry)
    assert npvit_main(["verify", "--anchors", str(anchors)]) == 0
    first = capsys.readouterr()
    assert table_row(first.out, "mobilevit_xxs").endswith("PASS")
    assert "made.png" in first.err and "100%" in first.err      # the progress bar
    assert (home / "images" / "made.png").read_bytes() == made["image"].read_bytes()
    assert (home / "mobilevit_xxs.npz").is_file()                # converted once
    assert npvit_main(["verify", "--anchors", str(anchors)]) == 0
    assert server.requests == ["/img/made.png"]                  # not fetched again


def test_offline_says_what_to_fetch_in_one_line(made, tmp_path, monkeypatch, capsys, no_proxy):
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "empty"))
    port = unused_port()
    entry = dict(made["entries"]["mobilevit_xxs"], image_url=f"http://127.0.0.1:{port}/x/made.png")
    anchors = write_anchors(tmp_path / "a.json", entry)
    assert npvit_main(["verify", "--anchors", str(anchors)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npvit: error: cannot download ")
    assert f"http://127.0.0.1:{port}/x/made.png into {tmp_path / 'empty' / 'images'}/" in err
    assert f"{OFFICIAL['mobilevit_xxs'].url} into {tmp_path / 'empty'}/" in err
    assert f"npvit verify --anchors {anchors}" in err and "--image FILE" in err


def unused_port() -> int:
    """A local port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- one clear line for each user error -----------------------------------------------------------
def _one_line_error(args, capsys) -> str:
    assert npvit_main(["verify", *map(str, args)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("npvit: error: ")
    assert "Traceback" not in captured.err
    return captured.err


def test_missing_image(made, tmp_path, capsys):
    anchors = write_anchors(tmp_path / "a.json", made["entries"]["mobilevit_xxs"])
    err = _one_line_error(["--weights", made["ckpt"], "--anchors", anchors,
                           "--image", tmp_path / "nope.jpg"], capsys)
    assert f"{tmp_path / 'nope.jpg'}: no such file" in err


@pytest.mark.parametrize("content, problem", [
    (None, "no such anchors file"),
    (b"{not json", "not valid JSON (Expecting property name enclosed in double quotes at line 1"),
    (b"\xff\xfe\x00garbage", "not a text (UTF-8 JSON) anchors file"),
    (b"[1, 2]", 'expected a JSON object with an "anchors" list'),
])
def test_unreadable_anchors_file(made, tmp_path, capsys, content, problem):
    path = tmp_path / "a.json"
    if content is not None:
        path.write_bytes(content)
    err = _one_line_error(["--weights", made["ckpt"], "--anchors", path,
                           "--image", made["image"]], capsys)
    assert f"{path}: {problem}" in err


def test_anchors_for_a_model_the_weights_do_not_match(made, tmp_path, capsys):
    anchors = write_anchors(tmp_path / "a.json", made["entries"]["mobilevitv2_050"])
    common = ["--weights", made["ckpt"], "--anchors", anchors, "--image", made["image"]]
    err = _one_line_error(common, capsys)
    assert f"{made['ckpt']} holds mobilevit_xxs weights, but {anchors} anchor only mobilevitv2_050" in err
    err = _one_line_error([*common, "--model", "mobilevitv2_050"], capsys)
    assert f"{made['ckpt']} holds mobilevit_xxs weights, not mobilevitv2_050" in err


def test_other_selection_errors(made, tmp_path, capsys):
    anchors = write_anchors(tmp_path / "a.json", made["entries"]["mobilevit_xxs"],
                            dict(made["entries"]["mobilevitv2_050"], image_url="http://x/other.png"))
    err = _one_line_error(["--model", "mobilevit_s", "--anchors", anchors], capsys)
    assert f"{anchors} have no anchor for 'mobilevit_s'; anchored models: mobilevit_xxs, " \
           f"mobilevitv2_050" in err
    err = _one_line_error(["--weights", made["folder"], "--anchors", anchors, "--image", made["image"]],
                          capsys)
    assert "the selected anchors use several images; pick one model with --model" in err
    err = _one_line_error(["--model", "mobilevit_xxs", "--weights", tmp_path, "--anchors", anchors,
                           "--image", made["image"]], capsys)
    assert f"{tmp_path} lacks mobilevit_xxs.pt (the mobilevit_xxs weights: fetch " \
           f"{OFFICIAL['mobilevit_xxs'].url})" in err


# --- the anchors format -------------------------------------------------------------------------
GOOD = {"model": "mobilevit_xxs", "image_url": COCO_URL, "preprocess": "hf",
        "logit_indices": [0, 1], "values": [0.5, -1], "tolerance": 1e-4}


@pytest.mark.parametrize("change, problem", [
    ({"tolerence": 1e-4}, "anchor 1 (mobilevit_xxs): unknown field tolerence"),
    ({"model": "mobilevit_xxxl"}, "unknown model 'mobilevit_xxxl'"),
    ({"preprocess": "torchvision"}, "unknown preprocess 'torchvision'"),
    ({"values": [0.5]}, "1 values for 2 logit_indices"),
    ({"values": [0.5, "1"]}, "values must be a list of finite numbers"),
    ({"logit_indices": [0, 1000]}, "logit_indices must be a non-empty list of class indices 0..999"),
    ({"logit_indices": [True, 1]}, "logit_indices must be"),
    ({"tolerance": 0}, "tolerance must be a positive number"),
    ({"image_url": "http://example.com/"}, "image_url must be a URL ending in a file name"),
    ({"crop_size": 256, "resize_size": 200}, "need 32 <= crop_size <= resize_size"),
    ({"published_in": "HF"}, "published_in must be a list of strings"),
])
def test_invalid_anchor_is_one_line(tmp_path, change, problem):
    path = write_anchors(tmp_path / "a.json", dict(GOOD, **change))
    with pytest.raises(NpvitError) as e:
        load_anchors(path)
    assert problem in str(e.value) and str(e.value).startswith(f"{path}: anchor 1")
    assert "\n" not in str(e.value)


def test_missing_fields_and_empty_list(tmp_path):
    path = write_anchors(tmp_path / "a.json", {"model": "mobilevit_xxs"})
    with pytest.raises(NpvitError, match="missing image_url, preprocess, logit_indices, values, tolerance"):
        load_anchors(path)
    with pytest.raises(NpvitError, match='the "anchors" list is empty'):
        load_anchors(write_anchors(tmp_path / "b.json"))


def test_defaults_and_image_name(tmp_path):
    (anchor,) = load_anchors(write_anchors(tmp_path / "a.json", GOOD))
    assert (anchor.crop_size, anchor.resize_size) == (256, 288)
    assert anchor.image_name == "000000039769.jpg"


def test_published_anchors_are_the_hf_ones():
    """The shipped file: the four checkpoints the HF port asserts logits for, each on the COCO
    image with the HF pipeline, logits 0..2, atol 1e-4, and where it was published. (The
    segmentation anchors: tests/test_segmentation_cli.py.)"""
    from npvit.models import list_models
    anchors = [a for a in load_anchors() if a.model in list_models()]
    assert [a.model for a in anchors] == ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s",
                                          "mobilevitv2_100"]
    for a in anchors:
        assert (a.image_url, a.preprocess, a.crop_size, a.resize_size) == (COCO_URL, "hf", 256, 288)
        assert a.logit_indices == (0, 1, 2) and len(a.values) == 3 and a.tolerance == 1e-4
        assert a.hub_id.startswith("apple/") and a.published_in
        assert all(p.startswith("huggingface/transformers ") for p in a.published_in)
