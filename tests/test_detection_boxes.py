"""SSD anchors, box decoding, NMS and post-processing against ml-cvnets' table and torchvision."""
import itertools
from pathlib import Path

import numpy as np
import pytest

from npvit.data.coco import coco_category_ids, coco_classes, coco_names
from npvit.models.ssd_anchors import anchors_per_location, ssd_anchors
from npvit.models.ssd_boxes import (POSTPROCESS, batched_nms, center_to_corner, corner_to_center,
                                    decode_boxes, encode_boxes, nms, postprocess)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dense"
SIZES_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def loop_anchors(sizes):
    """ml-cvnets' generator written as its loop (y outer, x inner), one level after another."""
    scales = np.linspace(0.1, 1.05, len(sizes) + 1)
    out = []
    for i, (fh, fw) in enumerate(sizes):
        s_min, s_max = scales[i], (scales[i] * scales[i + 1]) ** 0.5
        level = []
        for y, x in itertools.product(range(fh), range(fw)):
            cx, cy = (x + 0.5) / fw, (y + 0.5) / fh
            level += [[cx, cy, s_min, s_min], [cx, cy, s_max, s_max]]
            for r in ([2, 3] if i < 5 else [2]):
                q = r ** 0.5
                level += [[cx, cy, s_min * q, s_min / q], [cx, cy, s_min / q, s_min * q]]
        out.append(np.clip(np.array(level), 0, 1))
    return np.concatenate(out)


def test_anchors_equal_the_ml_cvnets_table():
    anchors = ssd_anchors(SIZES_320)
    assert anchors.shape == (3232, 4) and anchors_per_location() == [6, 6, 6, 6, 6, 4]
    np.testing.assert_array_equal(anchors, loop_anchors(SIZES_320))
    np.testing.assert_array_equal(ssd_anchors([(20, 22), (10, 11), (5, 6), (3, 3), (2, 2), (1, 1)]),
                                  loop_anchors([(20, 22), (10, 11), (5, 6), (3, 3), (2, 2), (1, 1)]))
    table = SHARED / "anchors_ssd320.tsv"
    if not table.is_file():
        pytest.skip("../shared/reference is absent")
    rows = [line.split("\t") for line in table.read_text().splitlines()[1:]]
    for level, _, fh, fw, k, start, end, slot, w, h, _ in rows:
        fh, fw, k, start, end, slot = map(int, (fh, fw, k, start, end, slot))
        assert (end - start) == fh * fw * k
        block = anchors[start:end].reshape(fh, fw, k, 4)[:, :, slot]
        np.testing.assert_allclose(block[..., 2:], np.broadcast_to([float(w), float(h)], (fh, fw, 2)),
                                   atol=5e-7)
        np.testing.assert_allclose(block[..., 0], np.broadcast_to((np.arange(fw) + 0.5) / fw, (fh, fw)))
        np.testing.assert_allclose(block[..., 1].T, np.broadcast_to((np.arange(fh) + 0.5) / fh, (fw, fh)))
    assert int(rows[-1][6]) == len(anchors)


def test_decoding_equals_torchvision_box_coder(torch, rng):
    from torchvision.models.detection._utils import BoxCoder
    anchors = ssd_anchors(SIZES_320)
    offsets = rng.normal(size=(2, len(anchors), 4))
    ours = decode_boxes(offsets, anchors)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = coder.decode(torch.from_numpy(offsets.reshape(-1, 4)),
                       [torch.from_numpy(center_to_corner(anchors))] * 2).reshape(2, -1, 4).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    # encoding is decoding's inverse
    np.testing.assert_allclose(encode_boxes(corner_to_center(ours), anchors), offsets, atol=1e-10)


def boxes_with_ties(rng, n, grid=8):
    """float32 corner boxes on a 1/grid lattice (exact IoUs of 0.5 and equal boxes happen),
    some degenerate (zero or negative width/height), scores with ties."""
    xy = rng.integers(0, 6 * grid, size=(n, 2)) / grid
    wh = rng.integers(-1, 3 * grid, size=(n, 2)) / grid            # -1/grid: inverted boxes
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    boxes[: n // 10] = boxes[n // 10: 2 * (n // 10)]                 # exact duplicates
    scores = (rng.integers(0, n // 3, size=n) / (n // 3)).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("n", [60, 1500])    # 1500 boxes: torchvision's per-class path
def test_nms_equals_torchvision(torch, rng, n):
    import torchvision
    for trial in range(3):
        boxes, scores = boxes_with_ties(rng, n)
        labels = rng.integers(0, 4, size=n)
        for thr in (0.5, 0.3, 0.7):
            ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
            np.testing.assert_array_equal(nms(boxes, scores, thr), ref)
            ref = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                              torch.from_numpy(labels), thr).numpy()
            ours = batched_nms(boxes, scores, labels, thr)
            assert sorted(ours) == sorted(ref)                      # the same boxes survive,
            np.testing.assert_array_equal(scores[ours], scores[ref])  # ranked the same way


def reference_postprocess(torch, boxes, probs, release):
    """ml-cvnets' post-processing transcribed in torch: v0.2+ postprocess_detections, v0.1
    SingleShotDetector.predict."""
    import torchvision
    boxes, probs = torch.from_numpy(boxes), torch.from_numpy(probs)
    out_b, out_s, out_l = [], [], []
    for c in range(1, probs.shape[1]):
        p = probs[:, c]
        mask = p > (0.01 if release == "cvnets-v0.2" else 0.05)
        p, b = p[mask], boxes[mask]
        if p.numel() == 0:
            continue
        if release == "cvnets-v0.2":
            p, idx = p.topk(min(400, p.numel()))
            b = b[idx]
        else:
            keep = torchvision.ops.nms(b, p, 0.5)[:200]
            p, b = p[keep], b[keep]
        out_b.append(b), out_s.append(p), out_l.append(torch.full((len(p),), c))
    b, s, lab = torch.cat(out_b), torch.cat(out_s), torch.cat(out_l)
    if release == "cvnets-v0.2":
        keep = torchvision.ops.batched_nms(b, s, lab, 0.5)[:200]
        b, s, lab = b[keep], s[keep], lab[keep]
    return b.numpy(), s.numpy(), lab.numpy()


@pytest.mark.parametrize("release", ["cvnets-v0.2", "cvnets-v0.1"])
def test_postprocess_equals_ml_cvnets(torch, rng, release):
    anchors = ssd_anchors(SIZES_320)
    boxes = decode_boxes(rng.normal(size=(len(anchors), 4)), anchors).astype(np.float32)
    logits = rng.normal(size=(len(anchors), 81)) * 3
    logits[:, 0] += 4                          # most anchors are background, as in real output
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    ours = postprocess(boxes, probs, POSTPROCESS[release])
    ref_boxes, ref_scores, ref_labels = reference_postprocess(torch, boxes, probs, release)
    assert len(ours.scores) > 50
    np.testing.assert_array_equal(ours.scores, ref_scores)
    np.testing.assert_array_equal(ours.labels, ref_labels)
    np.testing.assert_array_equal(ours.boxes, ref_boxes)


def test_coco_classes():
    classes = coco_classes()
    assert len(classes) == 80 and classes[0] == (1, 1, "person") and classes[-1].category_id == 90
    ids = coco_category_ids()
    assert ids[0] == -1 and list(ids[1:]) == sorted(ids[1:]) and coco_names()[90] == "toothbrush"
    table = SHARED / "labels_coco.tsv"
    if table.is_file():
        rows = [line.split("\t") for line in table.read_text().splitlines()[2:]]
        assert [(int(c), n, int(i)) for c, n, i in rows] == [(c.column, c.name, c.category_id)
                                                            for c in classes]


def test_detector_preprocessing_is_each_releases(torch):
    """v0.2+: torchvision F.resize(PIL, (320, 320), BICUBIC) then /255, RGB (ml-cvnets'
    COCODetection evaluation transforms); v0.1: the OpenCV-bilinear emulation, BGR."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    from npvit.data import preprocess_resized
    from npvit.data.preprocess import resize_opencv_bilinear
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 203, 3), dtype=np.uint8))
    ref = TF.pil_to_tensor(TF.resize(image, [320, 320], InterpolationMode.BICUBIC)).numpy() / 255
    np.testing.assert_allclose(preprocess_resized(image, "cvnets-v2", 320, 320), ref, atol=1e-7)
    bgr = preprocess_resized(image, "cvnets-v1", 320, 320)
    expected = resize_opencv_bilinear(np.asarray(image), 320, 320).transpose(2, 0, 1)[::-1] / 255
    np.testing.assert_allclose(bgr, expected, atol=1e-7)
    assert bgr.shape == (3, 320, 320) and bgr.dtype == np.float32
