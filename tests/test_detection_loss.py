"""The SSD multibox loss and its matcher against ml-cvnets' code transcribed in torch (autograd
for the gradients)."""
import math

import numpy as np
import pytest

from npvit.detection.multibox_loss import match_anchors, multibox_loss_backward, multibox_loss_forward
from npvit.models.ssd_anchors import ssd_anchors

SIZES = [(6, 6), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1)]     # a small input: 290 anchors


# --- ml-cvnets, transcribed (cvnets/misc/third_party/ssd_utils.py, box_utils.py,
# matcher_det/ssd_matcher.py, loss_fn/detection/ssd_multibox_loss.py) ------------------------------
def ref_box_iou(torch, boxes0, boxes1, eps=1e-5):
    def area_of(lt, rb):
        hw = torch.clamp(rb - lt, min=0.0)
        return hw[..., 0] * hw[..., 1]
    lt = torch.max(boxes0[..., :2], boxes1[..., :2])
    rb = torch.min(boxes0[..., 2:], boxes1[..., 2:])
    overlap = area_of(lt, rb)
    return overlap / (area_of(boxes0[..., :2], boxes0[..., 2:]) + area_of(boxes1[..., :2], boxes1[..., 2:])
                      - overlap + eps)


def ref_match(torch, gt_boxes, gt_labels, anchors, iou_threshold=0.5):
    corner = torch.cat((anchors[..., :2] - anchors[..., 2:] * 0.5, anchors[..., :2] + anchors[..., 2:] * 0.5), -1)
    ious = ref_box_iou(torch, gt_boxes.unsqueeze(0), corner.unsqueeze(1))
    best_target_per_prior, best_target_per_prior_index = ious.max(1)
    best_prior_per_target, best_prior_per_target_index = ious.max(0)
    for target_index, prior_index in enumerate(best_prior_per_target_index):
        best_target_per_prior_index[prior_index] = target_index
    best_target_per_prior.index_fill_(0, best_prior_per_target_index, 2)
    labels = gt_labels[best_target_per_prior_index]
    labels[best_target_per_prior < iou_threshold] = 0
    boxes = gt_boxes[best_target_per_prior_index]
    centre = torch.cat(((boxes[..., :2] + boxes[..., 2:]) * 0.5, boxes[..., 2:] - boxes[..., :2]), -1)
    locations = torch.cat((((centre[..., :2] - anchors[..., :2]) / anchors[..., 2:]) / 0.1,
                           torch.log(centre[..., 2:] / anchors[..., 2:]) / 0.2), -1)
    return locations, labels


def ref_hard_negative_mining(torch, loss, labels, neg_pos_ratio):
    pos_mask = labels > 0
    num_neg = pos_mask.long().sum(dim=1, keepdim=True) * neg_pos_ratio
    loss[pos_mask] = -math.inf
    _, indexes = loss.sort(dim=1, descending=True)
    _, orders = indexes.sort(dim=1)
    return pos_mask | (orders < num_neg)


def ref_ssd_loss(torch, confidence, predicted_locations, gt_labels, gt_locations, neg_pos_ratio=3):
    num_classes = confidence.shape[-1]
    pos_mask = gt_labels > 0
    pred = predicted_locations[pos_mask].reshape(-1, 4)
    gt = gt_locations[pos_mask].reshape(-1, 4)
    num_pos = max(1, gt.shape[0])
    smooth_l1 = torch.nn.functional.smooth_l1_loss(pred, gt, reduction="sum")
    with torch.no_grad():
        loss = -torch.nn.functional.log_softmax(confidence, dim=2)[:, :, 0]
        mask = ref_hard_negative_mining(torch, loss, gt_labels, neg_pos_ratio)
    cls = torch.nn.functional.cross_entropy(confidence[mask, :].reshape(-1, num_classes),
                                            gt_labels[mask], reduction="sum")
    return (smooth_l1 + cls) / num_pos, smooth_l1 / num_pos, cls / num_pos


def random_targets(rng, n_boxes):
    xy = rng.uniform(0, 0.7, size=(n_boxes, 2))
    wh = rng.uniform(0.05, 0.6, size=(n_boxes, 2))
    return np.concatenate([xy, np.minimum(xy + wh, 1.0)], 1), rng.integers(1, 81, size=n_boxes)


def test_matching_equals_ml_cvnets(torch, rng):
    anchors = ssd_anchors(SIZES)
    for n_boxes in (1, 3, 8):
        boxes, labels = random_targets(rng, n_boxes)
        offsets, matched = match_anchors(boxes, labels, anchors)
        ref_offsets, ref_labels = ref_match(torch, torch.from_numpy(boxes), torch.from_numpy(labels),
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
    total, box, cls = ref_ssd_loss(torch, z, b, torch.from_numpy(t_labels), torch.from_numpy(t_offsets))
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
