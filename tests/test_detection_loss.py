"""The SSD multibox loss and its matcher against ml-cvnets' code transcribed in torch (autograd
for the gradients)."""
import numpy as np
import pytest

from npvit.detection.multibox_loss import match_anchors, multibox_loss_backward, multibox_loss_forward
from npvit.models.ssd_anchors import ssd_anchors
from ssd_reference import ref_match, ref_ssd_loss

SIZES = [(6, 6), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)]     # a small input: 290 anchors


def random_targets(rng, n_boxes):
    xy = rng.uniform(0, 0.7, size=(n_boxes, 2))
    wh = rng.uniform(0.05, 0.6, size=(n_boxes, 2))
    return np.concatenate([xy, np.minimum(xy + wh, 1.0)], 1), rng.integers(1, 81, size=n_boxes)


def test_matching_equals_ml_cvnets(torch, rng):
    anchors = ssd_anchors(SIZES)
    for n_boxes in (1, 3, 8):
        boxes, labels = random_targets(rng, n_boxes)
        offsets, matched = match_anchors(boxes, labels, anchors)
        ref_offsets, ref_labels = ref_match(torch.from_numpy(boxes), torch.from_numpy(labels),
                                            torch.from_numpy(anchors))
        np.testing.assert_array_equal(matched, ref_labels.numpy())
        positive = matched > 0
        assert positive.sum() >= n_boxes - 1           # every box claims an anchor (up to a clash)
        np.testing.assert_allclose(offsets[positive], ref_offsets.numpy()[positive], rtol=1e-12)
    offsets, matched = match_anchors(np.zeros((0, 4)), np.zeros(0, dtype=int), anchors)
    assert not matched.any() and offsets.shape == anchors.shape


def test_multibox_loss_and_gradients_equal_autograd(torch, rng):
    anchors = ssd_anchors(SIZES)
    targets = [match_anchors(*random_targets(rng, k), anchors) for k in (2, 5, 0)]
    t_offsets, t_labels = (np.stack(t) for t in zip(*targets))      # (3, A, 4), (3, A)
    boxes = rng.normal(size=(3, len(anchors), 4))
    logits = rng.normal(size=(3, len(anchors), 81)) * 2
    loss, cache = multibox_loss_forward(boxes, logits, t_offsets, t_labels)
    dboxes, dlogits = multibox_loss_backward(cache)

    b = torch.tensor(boxes, requires_grad=True)
    z = torch.tensor(logits, requires_grad=True)
    total, box, cls = ref_ssd_loss(z, b, torch.from_numpy(t_labels), torch.from_numpy(t_offsets))
    total.backward()
    assert loss.total == pytest.approx(total.item(), rel=1e-12)
    assert loss.box == pytest.approx(box.item(), rel=1e-12)
    assert loss.cls == pytest.approx(cls.item(), rel=1e-12)
    np.testing.assert_allclose(dboxes, b.grad.numpy(), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(dlogits, z.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_loss_without_any_box_is_zero():
    anchors = ssd_anchors(SIZES)
    t_offsets, t_labels = match_anchors(np.zeros((0, 4)), np.zeros(0, dtype=int), anchors)
    loss, cache = multibox_loss_forward(np.ones((1, len(anchors), 4)), np.ones((1, len(anchors), 81)),
                                        t_offsets[None], t_labels[None])
    dboxes, dlogits = multibox_loss_backward(cache)
    assert loss.total == 0.0 and not dboxes.any() and not dlogits.any()
