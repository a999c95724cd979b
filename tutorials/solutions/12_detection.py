"""Solutions to the exercises of tutorial 12, and the wrong answers their checkers must reject."""
import numpy as np


def _iou_with(box, others):
    """IoU of one corner box with each row of others (torchvision's arithmetic)."""
    w = np.maximum(0, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
    h = np.maximum(0, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / (area + areas - inter)


def nms_by_hand(boxes, scores, iou_threshold):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        if order:
            rest = np.array(order)
            order = list(rest[_iou_with(boxes[best], boxes[rest]) <= iou_threshold])
    return np.array(keep, dtype=np.int64)


def nms_by_hand_at_or_above(boxes, scores, iou_threshold):
    """Wrong: drops boxes whose IoU EQUALS the threshold too (torchvision keeps them: > only)."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        if order:
            rest = np.array(order)
            order = list(rest[_iou_with(boxes[best], boxes[rest]) < iou_threshold])
    return np.array(keep, dtype=np.int64)


def box_iou_by_hand(boxes_a, boxes_b):
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])         # (M, K, 2)
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(-1)              # (M, K)
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).prod(-1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).prod(-1)
    return overlap / (area_a[:, None] + area_b[None, :] - overlap)


def box_iou_by_hand_unclipped(boxes_a, boxes_b):
    """Wrong: no clip, so two boxes apart in both x and y get a positive "overlap"."""
    top_left = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    overlap = (bottom_right - top_left).prod(-1)
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).prod(-1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).prod(-1)
    return overlap / (area_a[:, None] + area_b[None, :] - overlap)


WRONG_ANSWERS = {"nms_by_hand": nms_by_hand_at_or_above, "box_iou_by_hand": box_iou_by_hand_unclipped}
