"""The PyTorch side of the detection tests: ml-cvnets' SSDLite rebuilt from torch.nn following
../shared/reference/dense/NOTES.md section 2.2, with ml-cvnets' module names (so its state dict
IS the official checkpoint layout, except that the backbone keeps timm's names), and ml-cvnets'
matcher and multibox loss transcribed. Import only inside tests that already required torch."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dense_reference import timm_stage_outputs
from official_layouts import cvnets_key
from timm_reference import random_timm_model, randomise_norms

PROJ = (512, 256, 256, 128, 128, 64)
ANCHORS = (6, 6, 6, 6, 6, 4)


class ConvLayer(nn.Module):
    """ml-cvnets' ConvLayer: block.conv (bias only without norm), block.norm, block.act (ReLU)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bias=False, norm=True, act=True):
        super().__init__()
        self.block = nn.Sequential()
        self.block.add_module("conv", nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=bias))
        if norm:
            self.block.add_module("norm", nn.BatchNorm2d(cout))
        if act:
            self.block.add_module("act", nn.ReLU())

    def forward(self, x):
        return self.block(x)


class SeparableConv(nn.Module):
    """dw_conv: depthwise 3x3 + BN, no activation; pw_conv: 1x1 (+BN +ReLU, or with bias)."""

    def __init__(self, cin, cout, stride=1, head=False):
        super().__init__()
        self.dw_conv = ConvLayer(cin, cin, 3, stride, groups=cin, act=False)
        self.pw_conv = ConvLayer(cin, cout, 1, bias=head, norm=not head, act=not head)

    def forward(self, x):
        return self.pw_conv(self.dw_conv(x))


class SSDHead(nn.Module):
    def __init__(self, cin, proj, anchors, kernel):
        super().__init__()
        self.proj_layer = ConvLayer(cin, proj, 1) if (proj != cin and kernel > 1) else None
        cin = proj if self.proj_layer is not None else cin
        out = anchors * 85
        self.loc_cls_layer = (SeparableConv(cin, out, head=True) if kernel > 1
                              else ConvLayer(cin, out, 1, bias=True, norm=False, act=False))

    def forward(self, x):
        if self.proj_layer is not None:
            x = self.proj_layer(x)
        x = self.loc_cls_layer(x)
        x = x.permute(0, 2, 3, 1).contiguous().view(x.shape[0], -1, 85)
        return torch.split(x, [4, 81], dim=-1)


class TorchSSDLite(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        encoder.final_conv, encoder.head = nn.Identity(), nn.Identity()   # ml-cvnets drops both
        self.encoder = encoder
        c16 = encoder.stages[3][-1].conv_proj.conv.out_channels
        c32 = encoder.stages[4][-1].conv_proj.conv.out_channels
        extra, cin = {}, c32
        for os_, out in zip((64, 128, 256), PROJ[2:5]):
            extra[f"os_{os_}"] = SeparableConv(cin, out, stride=2)
            cin = out
        extra["os_-1"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvLayer(cin, PROJ[5], 1, norm=False))
        self.extra_layers = nn.ModuleDict(extra)
        self.ssd_heads = nn.ModuleList([SSDHead(c, p, a, 3 if i < 5 else 1) for i, (c, p, a) in
                                        enumerate(zip([c16, c32, *PROJ[2:]], PROJ, ANCHORS))])

    def forward(self, x):
        feats = timm_stage_outputs(self.encoder, x)
        levels = [feats[3], feats[4]]
        y = feats[4]
        for name in ("os_64", "os_128", "os_256", "os_-1"):
            y = self.extra_layers[name](y)
            levels.append(y)
        locs, confs = zip(*[head(lv) for head, lv in zip(self.ssd_heads, levels)])
        return torch.cat(locs, 1), torch.cat(confs, 1)


def random_reference(backbone: str, seed=0, dtype="float64"):
    """A TorchSSDLite on a randomised timm backbone; every BN affine and statistic random."""
    model = TorchSSDLite(random_timm_model(backbone, seed=seed, dtype="float32"))
    randomise_norms(model, seed + 7)
    return model.to(getattr(torch, dtype)).eval()


def npvit_key(key: str) -> str:
    """Reference (ml-cvnets head names, timm backbone names) -> npvit, written as explicit cases."""
    if key.startswith("encoder."):
        return "backbone." + key[len("encoder."):]
    p = key.split(".")
    if p[0] == "extra_layers" and p[1] == "os_-1":
        return "extra_layers.pooled.conv." + p[-1]
    unit = {"conv": "conv", "norm": "bn"}
    if p[-3] == "block":                                  # ...<unit>.block.{conv,norm}.<param>
        owner = ".".join(p[:-3])
        bare = p[-2] == "conv" and ("loc_cls_layer" in owner and not owner.endswith("dw_conv"))
        return f"{owner}.{p[-1]}" if bare else f"{owner}.{unit[p[-2]]}.{p[-1]}"
    raise AssertionError(key)


def npvit_state(reference) -> dict:
    return {npvit_key(k): v.detach().cpu().numpy() for k, v in reference.state_dict().items()}


def official_state(reference) -> dict:
    """The reference's tensors under the official ml-cvnets checkpoint names."""
    out = {}
    v1 = any(k.endswith("conv_fusion.conv.weight") for k in reference.state_dict())
    for k, v in reference.state_dict().items():
        if k.startswith("encoder."):
            out["encoder." + cvnets_key(k[len("encoder."):], v1)] = v
        else:
            out[k] = v
    return out


# --- ml-cvnets, transcribed (cvnets/misc/third_party/ssd_utils.py, box_utils.py,
# matcher_det/ssd_matcher.py, loss_fn/detection/ssd_multibox_loss.py) ------------------------------
def ref_box_iou(boxes0, boxes1, eps=1e-5):
    def area_of(lt, rb):
        hw = torch.clamp(rb - lt, min=0.0)
        return hw[..., 0] * hw[..., 1]
    lt = torch.max(boxes0[..., :2], boxes1[..., :2])
    rb = torch.min(boxes0[..., 2:], boxes1[..., 2:])
    overlap = area_of(lt, rb)
    return overlap / (area_of(boxes0[..., :2], boxes0[..., 2:]) + area_of(boxes1[..., :2], boxes1[..., 2:])
                      - overlap + eps)


def ref_match(gt_boxes, gt_labels, anchors, iou_threshold=0.5):
    corner = torch.cat((anchors[..., :2] - anchors[..., 2:] * 0.5, anchors[..., :2] + anchors[..., 2:] * 0.5), -1)
    ious = ref_box_iou(gt_boxes.unsqueeze(0), corner.unsqueeze(1))
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


def ref_hard_negative_mining(loss, labels, neg_pos_ratio):
    pos_mask = labels > 0
    num_neg = pos_mask.long().sum(dim=1, keepdim=True) * neg_pos_ratio
    loss[pos_mask] = -math.inf
    _, indexes = loss.sort(dim=1, descending=True)
    _, orders = indexes.sort(dim=1)
    return pos_mask | (orders < num_neg)


def ref_ssd_loss(confidence, predicted_locations, gt_labels, gt_locations, neg_pos_ratio=3):
    num_classes = confidence.shape[-1]
    pos_mask = gt_labels > 0
    pred = predicted_locations[pos_mask].reshape(-1, 4)
    gt = gt_locations[pos_mask].reshape(-1, 4)
    num_pos = max(1, gt.shape[0])
    smooth_l1 = torch.nn.functional.smooth_l1_loss(pred, gt, reduction="sum")
    with torch.no_grad():
        loss = -torch.nn.functional.log_softmax(confidence, dim=2)[:, :, 0]
        mask = ref_hard_negative_mining(loss, gt_labels, neg_pos_ratio)
    cls = torch.nn.functional.cross_entropy(confidence[mask, :].reshape(-1, num_classes),
                                            gt_labels[mask], reduction="sum")
    return (smooth_l1 + cls) / num_pos, smooth_l1 / num_pos, cls / num_pos


