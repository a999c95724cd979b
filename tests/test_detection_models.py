"""The SSDLite detectors against ml-cvnets' architecture rebuilt in torch.nn (tests/ssd_reference.py):
parameter counts, raw outputs at 320 and at an odd size, the multibox loss and every gradient."""
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.detection.multibox_loss import match_anchors, multibox_loss_backward, multibox_loss_forward
from npvit.models.ssdlite import RELEASES, SSDLite

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "dense"
SMALL = ["ssdlite_mobilevit_xxs_coco", "ssdlite_mobilevitv2_050_coco"]
COUNTS_KEY = {"050": "0.5", "075": "0.75", "100": "1.0", "125": "1.25", "150": "1.5", "175": "1.75",
              "200": "2.0"}


def counts_row(name):
    backbone = RELEASES[name].backbone
    if backbone.startswith("mobilevitv2_"):
        return "coco_ssd_mobilevitv2_" + COUNTS_KEY[backbone[-3:]]
    return "coco_ssd_" + backbone


@pytest.mark.parametrize("name", list(RELEASES))
def test_parameter_counts_and_state_dict_sizes(name):
    model = SSDLite(name)
    table = SHARED / "counts.tsv"
    if not table.is_file():
        pytest.skip("../shared/reference is absent")
    rows = {r[0]: r for r in (line.split("\t") for line in table.read_text().splitlines())}
    row = rows[counts_row(name)]
    assert model.num_parameters() == int(row[2])
    assert len(model.state_dict()) == int(row[5])


def test_registry_names_the_detectors():
    assert npvit.list_models(task="detection") == list(RELEASES)
    assert "ssdlite_mobilevitv2_050_coco" not in npvit.list_models(task="classification")
    model = npvit.create_model("ssdlite_mobilevitv2_050_coco")
    assert isinstance(model, SSDLite) and model.anchors().shape == (3232, 4)


def twins(name, dtype, seed=0):
    from ssd_reference import npvit_state, random_reference
    ref = random_reference(RELEASES[name].backbone, seed=seed, dtype=dtype)
    model = SSDLite(name, dtype=np.dtype(dtype).type)
    model.load_state_dict(npvit_state(ref))
    return ref, model.eval()


@pytest.mark.parametrize("name", SMALL)
def test_outputs_equal_torch(torch, name):
    from timm_reference import relative_error
    for dtype, sizes in (("float64", [(320, 320), (229, 263)]), ("float32", [(320, 320), (229, 263)])):
        ref, model = twins(name, dtype)
        for h, w in sizes:
            x = np.random.default_rng(h).random((2, 3, h, w)).astype(dtype)
            with torch.no_grad():
                ref_boxes, ref_logits = ref(torch.from_numpy(x))
            with npvit.nn.no_grad():             # inference (BN folded); train-mode grads below
                boxes, logits = model(x)
            assert boxes.shape == (2, len(model.anchors(h, w)), 4) and logits.shape[-1] == 81
            assert boxes.dtype == np.dtype(dtype)
            if dtype == "float64":
                assert relative_error(boxes, ref_boxes.numpy()) < 1e-9
                assert relative_error(logits, ref_logits.numpy()) < 1e-9
            else:
                np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-4, rtol=0)
                np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", SMALL)
def test_multibox_loss_and_every_gradient_equal_autograd(torch, name):
    from ssd_reference import npvit_key, ref_ssd_loss
    from timm_reference import relative_error
    ref, model = twins(name, "float64", seed=3)
    ref.train(), model.train()
    h, w = 193, 257                                    # odd: every resize path runs
    x = np.random.default_rng(5).random((2, 3, h, w))
    anchors = model.anchors(h, w)
    targets = [match_anchors(np.array(b), np.array(c), anchors) for b, c in (
        ([[0.1, 0.2, 0.5, 0.7], [0.55, 0.1, 0.95, 0.4]], [1, 18]),
        ([[0.3, 0.3, 0.4, 0.45], [0.0, 0.5, 1.0, 1.0], [0.6, 0.6, 0.9, 0.8]], [3, 62, 1]))]
    t_offsets, t_labels = (np.stack(t) for t in zip(*targets))

    boxes, logits = model(x)
    loss, cache = multibox_loss_forward(boxes, logits, t_offsets, t_labels)
    dx = model.backward(*multibox_loss_backward(cache))

    xt = torch.tensor(x, requires_grad=True)
    ref_boxes, ref_logits = ref(xt)
    total, _, _ = ref_ssd_loss(ref_logits, ref_boxes, torch.from_numpy(t_labels), torch.from_numpy(t_offsets))
    total.backward()
    assert loss.total == pytest.approx(total.item(), rel=1e-9)
    assert relative_error(dx, xt.grad.numpy()) < 1e-7
    params = dict(model.named_parameters())
    ref_grads = {npvit_key(k): p.grad.numpy() for k, p in ref.named_parameters()}
    assert sorted(ref_grads) == sorted(params)
    # In training mode a bias followed by another BatchNorm has a gradient of exactly 0 in
    # exact arithmetic (the next BN removes any shift); both sides then hold rounding noise.
    noise = 1e-12 * max(np.abs(g).max() for g in ref_grads.values())
    for key, g_ref in ref_grads.items():
        if np.abs(g_ref).max() < noise:
            assert np.abs(params[key].grad).max() < noise, key
        else:
            assert relative_error(params[key].grad, g_ref) < 1e-7, key


def test_detect_equals_ml_cvnets_pipeline(torch):
    """model.detect vs ml-cvnets' eval path on the torch reference: softmax, decoding (torchvision's
    BoxCoder), the v0.2 post-processing transcribed in torch, scaling to pixels with clipping, and
    sorted(COCO ids)[label - 1]."""
    from test_detection_boxes import reference_postprocess
    from torchvision.models.detection._utils import BoxCoder
    from npvit.data.coco import coco_category_ids
    from npvit.models.ssd_boxes import center_to_corner
    ref, model = twins("ssdlite_mobilevitv2_050_coco", "float64", seed=4)
    x = np.random.default_rng(9).random((1, 3, 160, 160))           # 838 anchors
    found = model.detect(x)[0]
    with torch.no_grad():
        offsets, logits = ref(torch.from_numpy(x))
        probs = torch.softmax(logits, dim=-1)[0].numpy()
    corners = torch.from_numpy(center_to_corner(model.anchors(160, 160).astype(np.float64)))
    boxes = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(offsets[0], corners).numpy()
    ref_boxes, ref_scores, ref_labels = reference_postprocess(torch, boxes, probs, "cvnets-v0.2")
    assert 0 < len(found.scores) <= 200
    np.testing.assert_allclose(found.scores, ref_scores, rtol=1e-9)
    np.testing.assert_array_equal(found.labels, coco_category_ids()[ref_labels])
    np.testing.assert_allclose(found.boxes, np.clip(ref_boxes * 160, 0, 160), rtol=1e-9, atol=1e-9)
