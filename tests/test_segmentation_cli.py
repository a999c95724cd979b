"""Segmentation end to end without torch: official-layout checkpoints convert and give the
reference's logits, `npvit segment` writes the overlay and the label PNG, `npvit eval` on tiny
PASCAL VOC and ADE20k folders gives the mIoU a hand count gives, and every bad input is one line."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import npvit
from npvit.cli import main
from npvit.data import load_image, segmentation_classes
from npvit.segmentation.datasets import read_target
from npvit.segmentation.inference import segment
from npvit.segmentation.metrics import ConfusionMatrix
from npvit.segmentation.overlay import voc_colour_map
from npvit.weights import save_npz
from no_torch import blocked_imports, run_without_torch

VOC_MODEL, ADE_MODEL = "deeplabv3_mobilevit_xxs_voc", "pspnet_mobilevitv2_050_ade20k"


def _photo(seed, h, w) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w] / 9.0
    a, b = np.random.default_rng(seed).random(2) * 2
    rgb = np.stack([np.sin(a * xx), np.cos(b * yy), np.sin(xx + yy + seed)], -1)
    return Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8))


def _hand_count(pairs, num_classes):
    """mIoU and pixel accuracy by explicit counting, class by class (not a confusion matrix)."""
    ious, correct, counted = [], 0, 0
    for c in range(num_classes):
        inter = union = 0
        for target, pred in pairs:
            valid = (target >= 0) & (target < num_classes)
            inter += int(np.sum(valid & (target == c) & (pred == c)))
            union += int(np.sum(valid & ((target == c) | (pred == c))))
        if union:
            ious.append(inter / union)
    for target, pred in pairs:
        valid = (target >= 0) & (target < num_classes)
        correct += int(np.sum(valid & (target == pred)))
        counted += int(valid.sum())
    return sum(ious) / len(ious), correct / counted


def test_confusion_matrix_scores_equal_a_hand_count_and_skip_ignored_pixels():
    target = np.array([[0, 0, 1, 255], [2, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 2], [2, 2, 1, 0]])
    m = ConfusionMatrix(3)
    m.add(target, pred)
    s = m.scores()
    # class 0: inter 1, union 2; class 1: inter 2, union 4; class 2: inter 1, union 2
    assert s.iou.tolist() == [1 / 2, 2 / 4, 1 / 2]
    assert s.miou == pytest.approx((1 / 2 + 2 / 4 + 1 / 2) / 3)
    assert s.pixel_accuracy == 4 / 6 and s.pixels == 6
    empty = ConfusionMatrix(4)
    empty.add(target, pred)
    assert np.isnan(empty.scores().iou[3]) and empty.scores().classes_scored == 3


def _palette_png(values: np.ndarray, path):
    im = Image.fromarray(values.astype(np.uint8), mode="P")
    im.putpalette(voc_colour_map().reshape(-1).tolist())
    im.save(path)


@pytest.fixture(scope="module")
def voc_folder(tmp_path_factory):
    """A VOC-layout folder of 3 photos whose masks agree with the model's prediction on their
    left half (class i there) and have other classes on the right, with a 255 border; the
    model's weights as .npz; and the masks npvit predicts."""
    root = tmp_path_factory.mktemp("voc")
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    model = npvit.create_model(VOC_MODEL, seed=3).eval()
    weights = save_npz(model.state_dict(), root.parent / "voc_weights.npz")
    predictions = {}
    for i, (h, w) in enumerate([(60, 80), (64, 64), (75, 50)]):
        photo = _photo(i, h, w)
        photo.save(root / "JPEGImages" / f"img{i}.jpg", quality=95)
        pred = segment(model, load_image(root / "JPEGImages" / f"img{i}.jpg"))
        target = pred.copy()
        target[:, w // 2:] = (np.arange(w - w // 2) + i) % 21
        target[0, :] = 255
        _palette_png(target, root / "SegmentationClass" / f"img{i}.png")
        predictions[f"img{i}"] = pred
    return root, weights, predictions


def test_eval_on_a_voc_folder_equals_the_hand_count(tmp_path, voc_folder):
    root, weights, predictions = voc_folder
    out = run_without_torch(["-m", "npvit", "eval", str(root), "--weights", str(weights), "--json"],
                            tmp_path / "hook")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    pairs = [(read_target(root / "SegmentationClass" / f"{k}.png", "voc"), v)
             for k, v in sorted(predictions.items())]
    miou, accuracy = _hand_count(pairs, 21)
    assert result["model"] == VOC_MODEL and result["dataset"] == "voc" and result["images"] == 3
    assert result["miou"] == pytest.approx(miou, rel=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)
    assert blocked_imports(tmp_path / "hook") == []


def test_eval_reports_a_bad_pair_in_one_line_and_refuses_a_classifier_or_wrong_dataset(
        tmp_path, voc_folder, monkeypatch, capsys):
    root, weights, _ = voc_folder
    broken = tmp_path / "voc"
    (broken / "JPEGImages").mkdir(parents=True)
    (broken / "SegmentationClass").mkdir()
    for name in ("img0.jpg", "img1.jpg"):
        (broken / "JPEGImages" / name).write_bytes((root / "JPEGImages" / name).read_bytes())
    (broken / "SegmentationClass" / "img0.png").write_bytes((root / "SegmentationClass" / "img0.png").read_bytes())
    (broken / "SegmentationClass" / "img1.png").write_bytes(b"not a png")
    out = run_without_torch(["-m", "npvit", "eval", str(broken), "--weights", str(weights)],
                            tmp_path / "hook")
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("npvit: error:")]
    assert len(errors) == 1 and "img1.png" in errors[0]
    assert "mIoU" in out.stdout
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path))
    for extra, message in ((["--model", "mobilevitv2_050"], "is a classifier"),
                           (["--model", ADE_MODEL], "predicts ade20k classes"),
                           ([], "name the model with --model")):
        assert main(["eval", str(root), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_eval_on_an_ade20k_folder_ignores_mask_value_zero(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    model = npvit.create_model(ADE_MODEL, seed=4).eval()
    weights = save_npz(model.state_dict(), tmp_path / "ade.npz")
    photo_path = root / "images" / "validation" / "ADE_val_00000001.jpg"
    _photo(7, 48, 64).save(photo_path, quality=95)
    pred = segment(model, load_image(photo_path))
    values = pred + 1                                  # mask value = channel + 1
    values[:, :20] = (np.arange(20) * 7) % 151          # other classes, and some 0 = ignored
    values[10:20, :] = 0
    Image.fromarray(values.astype(np.uint8), mode="L").save(root / "annotations" / "validation" /
                                                           "ADE_val_00000001.png")
    out = run_without_torch(["-m", "npvit", "eval", str(root), "--weights", str(weights), "--json"],
                            tmp_path / "hook")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    target = values.astype(np.int64) - 1
    miou, accuracy = _hand_count([(target, pred)], 150)
    assert result["dataset"] == "ade20k" and result["miou"] == pytest.approx(miou, rel=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)


def test_segment_writes_the_overlay_and_the_label_png_without_torch(tmp_path, voc_folder):
    root, weights, predictions = voc_folder
    image = root / "JPEGImages" / "img0.jpg"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"no image here")
    masks = tmp_path / "masks"
    out = run_without_torch(["-m", "npvit", "segment", str(image), str(bad), "--weights",
                             str(weights), "--masks", str(masks)], tmp_path / "hook", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and f"npvit: error: {bad}" in out.stderr
    overlay = Image.open(tmp_path / "img0_segment.png")
    assert overlay.mode in ("RGB", "RGBA") and overlay.width > 200
    labels = Image.open(masks / "img0.png")
    assert labels.mode == "P" and labels.size == (80, 60)
    np.testing.assert_array_equal(np.asarray(labels), predictions["img0"])
    assert VOC_MODEL in out.stdout and "RANDOM" not in out.stderr
    assert blocked_imports(tmp_path / "hook") == []


def test_segment_example_photo_with_random_weights_and_one_line_errors(tmp_path, monkeypatch, capsys):
    env = {**os.environ, "NPVIT_HOME": str(tmp_path / "empty")}
    out = run_without_torch(["-m", "npvit", "segment", "--model", VOC_MODEL, "-o",
                             str(tmp_path / "o.png")], tmp_path / "hook", env=env)
    assert out.returncode == 0, out.stderr
    assert "example photo" in out.stderr and "RANDOM untrained weights" in out.stderr
    assert (tmp_path / "o.png").is_file() and (tmp_path / "o_labels.png").is_file()
    monkeypatch.chdir(tmp_path)
    for args, message in ((["--model", "mobilevit_xxs"], "unknown segmentation model"),
                          (["a.png", "b.png", "-o", "x.png"], "ONE image"),
                          (["--weights", str(tmp_path / "missing.pt")], "missing.pt")):
        assert main(["segment", *args]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith("npvit: error:")]
        assert len(errors) == 1 and message in errors[0], (args, errors)


def test_official_layout_checkpoints_convert_without_torch_and_give_the_reference_logits(torch, tmp_path):
    from dense_reference import official_state_dict, reference_segmenter
    from npvit.models.segmentation import RELEASES
    x = np.random.default_rng(0).random((2, 3, 66, 98))
    np.save(tmp_path / "x.npy", x)
    names = ["deeplabv3_mobilevit_xxs_voc", "deeplabv3_mobilevitv2_050_voc", "pspnet_mobilevitv2_050_ade20k"]
    expected = {}
    for name in names:
        ref = reference_segmenter(RELEASES[name], seed=9, dtype="float32")
        torch.save(official_state_dict(ref), tmp_path / f"{name}.pt")
        with torch.no_grad():
            expected[name] = ref(torch.from_numpy(x.astype(np.float32)))[0].numpy()
    script = (
        "import sys, numpy as np, npvit\n"
        "from npvit.weights import convert_checkpoint\n"
        "x = np.load(sys.argv[1] + '/x.npy').astype(np.float32)\n"
        "for name in sys.argv[2:]:\n"
        "    c = convert_checkpoint(sys.argv[1] + f'/{name}.pt')\n"
        "    assert c.model == name and c.layout == 'cvnets-seg', (c.model, c.layout)\n"
        "    m = npvit.create_model(name, pretrained=sys.argv[1] + f'/{name}.pt').eval()\n"
        "    np.save(sys.argv[1] + f'/{name}.npy', m(x))\n")
    out = run_without_torch(["-c", script, str(tmp_path), *names], tmp_path / "hook")
    assert out.returncode == 0, out.stderr
    assert blocked_imports(tmp_path / "hook") == []
    for name in names:
        got = np.load(tmp_path / f"{name}.npy")
        assert np.abs(got - expected[name]).max() <= 1e-4, name


def test_class_tables_are_the_reference_lists():
    voc, ade = segmentation_classes("voc"), segmentation_classes("ade20k")
    assert len(voc) == 21 and voc[0].name == "background" and voc[15].name == "person"
    assert len(ade) == 150 and [c.mask_value for c in ade] == list(range(1, 151))
    from test_segmentation_models import DENSE
    if DENSE is None:
        pytest.skip("../shared/reference/dense is absent")
    rows = [line.split("\t") for line in (DENSE / "labels_ade20k.tsv").read_text().splitlines()[2:]]
    assert [(int(c), int(v), n) for c, v, n in rows] == [tuple(c) for c in ade]
    rows = [line.split("\t") for line in (DENSE / "labels_voc.tsv").read_text().splitlines()[1:]]
    assert [n for _, n in rows] == [c.name for c in voc]


def test_verify_reproduces_a_segmentation_anchor_made_by_hugging_face(torch, tmp_path):
    """An HF-layout DeepLabv3 (random weights and BN statistics) saved with torch.save; the
    anchor is its logits[0, :3, :3, :3] on HF's own MobileViTImageProcessor (short side 544, crop
    512, bilinear, BGR) output, as the published anchors are; npvit verify must PASS without
    torch, and FAIL when one value moves by 1e-2."""
    transformers = pytest.importorskip("transformers")
    from test_segmentation_models import _hf_segmenter
    from npvit.models.segmentation import RELEASES
    hf = _hf_segmenter(torch, RELEASES[VOC_MODEL], "float32")
    torch.save(hf.state_dict(), tmp_path / "hf_xxs.pt")
    image = tmp_path / "made.png"
    _photo(5, 300, 420).save(image)
    processor = transformers.MobileViTImageProcessor(
        size={"shortest_edge": 544}, crop_size={"height": 512, "width": 512},
        resample=Image.Resampling.BILINEAR)
    pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = hf(pixel_values=pixels).logits[0].numpy()
    assert logits.shape == (21, 32, 32)
    indices = [c * 1024 + i * 32 + j for c in range(3) for i in range(3) for j in range(3)]
    entry = {"model": VOC_MODEL, "image_url": "http://example.invalid/made.png", "preprocess": "hf",
             "crop_size": 512, "resize_size": 544, "logit_indices": indices,
             "values": [float(logits.reshape(-1)[i]) for i in indices], "tolerance": 1e-4}
    for shift, code, verdict in ((0.0, 0, "PASS"), (1e-2, 1, "FAIL")):
        moved = dict(entry, values=[v + (shift if k == 4 else 0.0) for k, v in enumerate(entry["values"])])
        anchors = tmp_path / "anchors.json"
        anchors.write_text(json.dumps({"anchors": [moved]}))
        out = run_without_torch(["-m", "npvit", "verify", "--weights", str(tmp_path / "hf_xxs.pt"),
                                 "--anchors", str(anchors), "--image", str(image)], tmp_path / "hook")
        assert out.returncode == code, out.stdout + out.stderr
        row = next(line for line in out.stdout.splitlines() if line.startswith(VOC_MODEL + " "))
        assert row.endswith(verdict), row
    assert blocked_imports(tmp_path / "hook") == []


def test_the_published_segmentation_anchors_are_the_hf_v1_script_values():
    from npvit.data.anchors import load_anchors
    from test_segmentation_models import DENSE
    anchors = [a for a in load_anchors() if a.model in npvit.list_models("segmentation")]
    assert sorted(a.model for a in anchors) == sorted(
        f"deeplabv3_mobilevit_{v}_voc" for v in ("xxs", "xs", "s"))
    assert all(a.crop_size == 512 and a.resize_size == 544 and a.preprocess == "hf" for a in anchors)
    assert not any("mobilevitv2" in a.model for a in anchors)     # HF's v2 port is undilated
    if DENSE is None:
        pytest.skip("../shared/reference/dense is absent")
    rows = [line.split("\t") for line in (DENSE / "hf" / "expected_logits.tsv").read_text().splitlines()[1:]]
    script = {r[0].split(" -> ")[0]: json.loads(r[7]) for r in rows if "convert_mlcvnets" in r[1]
              and r[0].startswith("deeplabv3_")}
    for a in anchors:
        published = np.array(script[a.model.removesuffix("_voc")]).reshape(-1)
        np.testing.assert_array_equal(np.array(a.values), published)


def test_download_fetches_converts_and_loads_a_segmentation_release(torch, tmp_path, monkeypatch, server):
    import dataclasses
    import io
    from dense_reference import official_state_dict, reference_segmenter
    from npvit.models.segmentation import RELEASES
    from npvit.weights import SEGMENTATION
    ref = reference_segmenter(RELEASES[VOC_MODEL], seed=2, dtype="float32")
    buffer = io.BytesIO()
    torch.save(official_state_dict(ref), buffer)
    entry = SEGMENTATION[VOC_MODEL]
    server.files["/seg/" + entry.file_name] = buffer.getvalue()
    monkeypatch.setitem(SEGMENTATION, VOC_MODEL,
                        dataclasses.replace(entry, url=server.url + "/seg/" + entry.file_name))
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "cache"))
    assert main(["download", VOC_MODEL, "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [entry.file_name, f"{VOC_MODEL}.npz"])
    model = npvit.create_model(VOC_MODEL, pretrained=True).eval()
    x = np.random.default_rng(1).random((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x))[0].numpy()
    assert np.abs(model(x) - expected).max() <= 1e-4
