"""`npvit eval`: top-1 / top-5 equal what timm's predictions imply on the same preprocessed
images (in a subprocess where torch cannot be imported), for both ways of labelling a folder;
bad images are skipped with one line each; setup errors are one line."""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import npvit
from npvit.cli import main
from npvit.commands.eval import labelled_images, spread
from npvit.data import imagenet_classes, load_image, preprocess
from npvit.weights import save_npz
from no_torch import blocked_imports, run_without_torch
from test_data_image import BAD_FILES
from timm_reference import numpy_state_dict, random_timm_model

NAME, SIZE, COUNT = "mobilevitv2_050", 96, 11


def _pattern(i: int, rng) -> Image.Image:
    """A smooth colour pattern of its own size, so the images differ in what the model sees."""
    h, w = 100 + 7 * i, 130 - 3 * i
    yy, xx = np.mgrid[0:h, 0:w] / 20.0
    a, b, c = rng.random(3) * 3
    rgb = np.stack([np.sin(a * xx + i), np.cos(b * yy - i), np.sin(c * (xx + yy))], -1)
    return Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A timm model, its weights as .npz, and COUNT images, image i labelled with timm's
    class of rank i % 7 on it — so ranks 0 count for top-1, ranks 0-4 for top-5."""
    pytest.importorskip("torch")
    import torch
    timm_model = random_timm_model(NAME, seed=31)
    folder = tmp_path_factory.mktemp("eval")
    weights = save_npz(numpy_state_dict(timm_model), folder / "weights.npz")
    rng = np.random.default_rng(2)
    paths = []
    for i in range(COUNT):
        paths.append(folder / f"image_{i:02d}.png")
        _pattern(i, rng).save(paths[-1])
    x = np.stack([preprocess(load_image(p), "cvnets-v2", crop_size=SIZE) for p in paths])
    with torch.no_grad():
        probs = torch.softmax(timm_model(torch.from_numpy(x)).double(), dim=1).numpy()
    samples = []   # (png, label, rank of the label in timm's prediction)
    for i, (path, row) in enumerate(zip(paths, probs)):
        order = np.argsort(-row)[:8]
        assert np.all(-np.diff(row[order]) > 1e-5 * row[order[0]]), "near-tie: pick another seed"
        samples.append((path, int(order[i % 7]), i % 7))
    return weights, samples


def _image_folder(root, samples):
    for path, label, _ in samples:
        (root / imagenet_classes()[label].wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / imagenet_classes()[label].wnid / path.name)
    return root


def _flat_folder(root, samples):
    root.mkdir()
    for path, label, _ in samples:
        shutil.copy(path, root / f"{imagenet_classes()[label].wnid}_{path.name}")
    return root


def _eval_without_torch(tmp_path, args):
    hook = tmp_path / "no_torch"
    out = run_without_torch(["-m", "npvit", "eval", "--json", *map(str, args)], hook,
                            env={**os.environ, "NPVIT_HOME": str(tmp_path / "cache")})
    assert blocked_imports(hook) == []
    assert "Traceback" not in out.stderr
    return out


def _expected(ranks):
    ranks = np.array(ranks)
    return {"images": len(ranks), "top1": np.mean(ranks == 0), "top5": np.mean(ranks < 5)}


def _assert_result(out, expected, skipped=0):
    result = json.loads(out.stdout)
    assert result["model"] == NAME and result["preprocess"] == "cvnets-v2"
    assert result["images"] == expected["images"] and result["skipped"] == skipped
    assert result["top1"] == pytest.approx(expected["top1"], abs=1e-12)
    assert result["top5"] == pytest.approx(expected["top5"], abs=1e-12)


def test_image_folder_accuracy_equals_timm_without_torch(tmp_path, labelled):
    weights, samples = labelled
    root = _image_folder(tmp_path / "val", samples)
    out = _eval_without_torch(tmp_path, [root, "--weights", weights, "--size", SIZE,
                                         "--batch-size", 4])              # batches 4, 4, 3
    assert out.returncode == 0 and out.stderr == "", out.stderr
    _assert_result(out, _expected([rank for _, _, rank in samples]))
    assert 0 < json.loads(out.stdout)["top1"] < json.loads(out.stdout)["top5"] < 1


def test_wnid_file_names_with_a_bad_image_an_unlabelled_one_and_limit(tmp_path, labelled):
    weights, samples = labelled
    root = _flat_folder(tmp_path / "flat", samples)
    shutil.copy(samples[0][0], root / "holiday.png")                       # no wnid: left out
    (root / "notes.txt").write_text("not an image, ignored by extension")
    bad = root / "n01440764_truncated.png"
    bad.write_bytes(samples[1][0].read_bytes()[:300])
    out = _eval_without_torch(tmp_path, [root, "--weights", weights, "--size", SIZE])
    assert out.returncode == 1                                             # a skipped image
    left_out, error = out.stderr.splitlines()
    assert "left out 1 image file" in left_out
    assert error.startswith(f"npvit: error: {bad}: ") and "truncated" in error
    _assert_result(out, _expected([rank for _, _, rank in samples]), skipped=1)

    bad.unlink()
    by_name = sorted(samples, key=lambda s: f"{imagenet_classes()[s[1]].wnid}_{s[0].name}")
    out = _eval_without_torch(tmp_path, [root, "--weights", weights, "--size", SIZE, "--limit", 4])
    assert out.returncode == 0
    _assert_result(out, _expected([rank for _, _, rank in spread(by_name, 4)]))


def test_text_output(tmp_path, labelled, capsys, monkeypatch):
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "cache"))
    weights, samples = labelled
    root = _image_folder(tmp_path / "val", samples[:3])
    assert main(["eval", str(root), "--weights", str(weights), "--size", str(SIZE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{NAME}  [weights {weights}") and lines[1].split() == [
        "images", "3", "evaluated"]
    ranks = np.array([rank for _, _, rank in samples[:3]])
    assert lines[2].split()[:2] == ["top-1", f"{np.mean(ranks == 0):.2%}"]
    assert lines[3].split()[2] == f"({(ranks < 5).sum()}/3)"


@given(n=st.integers(1, 500), limit=st.integers(1, 600))
def test_limit_spreads_over_the_whole_list(n, limit):
    chosen = spread(list(range(n)), limit)
    assert len(chosen) == min(n, limit) and chosen == sorted(set(chosen))
    assert chosen[0] == 0 and (limit == 1 or chosen[-1] == n - 1)


def test_labelled_images_reads_both_layouts(tmp_path):
    wnid = imagenet_classes()[7].wnid
    (tmp_path / "a" / wnid).mkdir(parents=True)
    for name in ("x.JPEG", "y.png", ".hidden.jpg", "z.txt"):
        (tmp_path / "a" / wnid / name).write_bytes(b"")
    assert labelled_images(tmp_path / "a") == ([(tmp_path / "a" / wnid / "x.JPEG", 7),
                                                (tmp_path / "a" / wnid / "y.png", 7)], 0)
    (tmp_path / "b").mkdir()
    for name in (f"{wnid}_1.jpg", f"{wnid}.png", f"{wnid}0_1.jpg", "n99999999_1.jpg", "cat.jpg"):
        (tmp_path / "b" / name).write_bytes(b"")
    assert labelled_images(tmp_path / "b") == ([(tmp_path / "b" / f"{wnid}.png", 7),
                                                (tmp_path / "b" / f"{wnid}_1.jpg", 7)], 3)


@pytest.fixture
def weights_npz(tmp_path, monkeypatch):
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "cache"))
    return save_npz(npvit.create_model(NAME).state_dict(), tmp_path / "w.npz")


def _one_error_line(capsys, argv, code=2):
    assert main(["eval", *map(str, argv)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npvit: error: ") and "Traceback" not in err
    return err


def test_setup_errors_are_one_line(tmp_path, weights_npz, capsys):
    good = tmp_path / "good"
    (good / imagenet_classes()[0].wnid).mkdir(parents=True)
    BAD_FILES["not an image"][0](good / imagenet_classes()[0].wnid)
    assert "no such directory" in _one_error_line(capsys, [tmp_path / "none", "--weights", weights_npz])
    (tmp_path / "cats").mkdir(parents=True)
    (tmp_path / "cats" / "tabby").mkdir()
    assert "WordNet ids" in _one_error_line(capsys, [tmp_path / "cats", "--weights", weights_npz])
    (tmp_path / "empty").mkdir()
    assert "no labelled images" in _one_error_line(capsys, [tmp_path / "empty", "--weights", weights_npz])
    assert "--limit" in _one_error_line(capsys, [good, "--weights", weights_npz, "--limit", 0])
    assert "npvit download mobilevitv2_050" in _one_error_line(capsys, [good])   # no weights
    # the only image is unreadable: its line, then that nothing could be evaluated
    assert main(["eval", str(good), "--weights", str(weights_npz)]) == 2
    first, second = capsys.readouterr().err.splitlines()
    assert "notes.jpg: not an image" in first and "none of the 1 images" in second
