"""Semantic segmentation: every ml-cvnets MobileViT release, DeepLabv3 and PSPNet on the
dilated backbones (models/backbone.py), with each release's rule for the input size and for
resizing the logits back to the image (../shared/reference/dense/NOTES.md 1.2-1.6).

    model = npvit.create_model("deeplabv3_mobilevitv2_050_voc")
    logits = model(x)               # (N, classes, H/OS, W/OS): the head's low-resolution logits
    dx = model.backward(dlogits)    # fills every parameter's grad
    masks = model.predict(x)        # (N, H, W) class indices, resized as the release evaluates

State-dict names: ``backbone.`` + timm's classifier names (``backbone.stem.conv.weight``,
``backbone.stages.4.1...``), ``head.`` (models/heads.py lists them with ml-cvnets' names) and
``aux_head.`` for the v0.2+ releases' train-only auxiliary classifier.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..data import check_input, segmentation_classes
from ..errors import NpvitError
from ..nn import Module, no_grad
from .backbone import MobileViTBackbone
from .heads import AuxHead, DeepLabV3Head, PSPHead


@dataclass(frozen=True)
class Release:
    """One released ml-cvnets segmentation model: its architecture and its evaluation."""
    name: str
    backbone: str            # npvit backbone variant
    head: str                # "deeplabv3" or "pspnet"
    dataset: str             # "voc" (21 classes) or "ade20k" (150)
    output_stride: int       # 16 or 8
    aspp_channels: int       # DeepLabv3 only: 256 (v0.1) or 512
    rates: tuple             # DeepLabv3 only: the three atrous rates
    code: str                # "v0.1" or "v0.2" (v0.2 = v0.3 = v0.4 for these models)
    preprocess: str          # image pipeline of its evaluation (npvit/segmentation/preprocess.py)
    inferred: str = ""       # what of the configuration could only be inferred (NOTES.md)

    @property
    def aux(self) -> bool:
        """v0.2+ releases train with an auxiliary head on stage 3 (kept in the checkpoint)."""
        return self.code != "v0.1"


_WIDTH_NOTE = ("output stride and atrous rates are those of the repo config at width 1.0; "
               "that the released width W used them (override of the width only) is inferred")
_ADE_NOTE = "the ADE20k output stride 8 and rates (12, 24, 36) are unconfirmed outside the repo config"


def _releases() -> dict[str, Release]:
    out = {}
    for v in ("xxs", "xs", "s"):               # v0.1: confirmed by the HF v1 conversion script
        out[f"deeplabv3_mobilevit_{v}_voc"] = Release(
            f"deeplabv3_mobilevit_{v}_voc", f"mobilevit_{v}", "deeplabv3", "voc", 16, 256,
            (6, 12, 18), "v0.1", "seg-v0.1")
    out["deeplabv3_mobilevit_s_voc_os8"] = Release(
        "deeplabv3_mobilevit_s_voc_os8", "mobilevit_s", "deeplabv3", "voc", 8, 512, (12, 24, 36),
        "v0.2", "seg-v0.2-bilinear",
        "output stride 8 and rates (12, 24, 36) read from its config, unconfirmed outside the repo")
    for head, dataset, widths, stride, rates in (
            ("deeplabv3", "voc", ("050", "100", "125", "150"), 16, (6, 12, 18)),
            ("pspnet", "voc", ("050", "075", "100", "125", "150"), 16, ()),
            ("deeplabv3", "ade20k", ("050", "075", "100", "125", "150", "175", "200"), 8, (12, 24, 36)),
            ("pspnet", "ade20k", ("050", "075", "100", "125", "150", "175"), 8, ())):
        for w in widths:
            # W = 1.0 is the width of the repo configs; HF's (1, 21, 32, 32) logits also
            # confirm OS 16 for DeepLabv3 VOC 1.0.
            notes = [_WIDTH_NOTE] if w != "100" else []
            if dataset == "ade20k":
                notes.append(_ADE_NOTE)
            name = f"{head}_mobilevitv2_{w}_{dataset}"
            out[name] = Release(name, f"mobilevitv2_{w}", head, dataset, stride,
                                512 if head == "deeplabv3" else 0, rates, "v0.2", "seg-v0.2",
                                "; ".join(notes))
    return out


RELEASES: dict[str, Release] = _releases()


def release(name: str) -> Release:
    if name not in RELEASES:
        raise NpvitError(f"unknown segmentation model {name!r}; choose one of {', '.join(RELEASES)}")
    return RELEASES[name]


class SegmentationModel(Module):
    """A backbone at the release's output stride, its head and (v0.2+) the auxiliary head.

    x: (N, 3, H, W) float in [0, 1] (channel order as the release's preprocessing gives it),
    H, W >= 32 -> logits (N, classes, h, w), (h, w) = the last stage's size (H/OS, W/OS for
    multiples of OS; v2 blocks round odd maps up). ``forward_with_aux`` also returns the
    auxiliary logits (stage 3's size); ``backward(dlogits, daux=None)`` returns dL/dx.
    """

    def __init__(self, release: Release, num_classes: int | None = None, dtype=np.float32):
        super().__init__()
        self.release, self.name = release, release.name
        self.classes = segmentation_classes(release.dataset)
        self.num_classes = num_classes or len(self.classes)
        self.backbone = MobileViTBackbone(release.backbone, release.output_stride, dtype)
        c_stage3, c_stage4 = self.backbone.channels[3:]
        if release.head == "deeplabv3":
            self.head = DeepLabV3Head(c_stage4, self.num_classes, release.aspp_channels,
                                      release.rates, v01=release.code == "v0.1", dtype=dtype)
        else:
            self.head = PSPHead(c_stage4, self.num_classes, dtype=dtype)
        self.aux_head = AuxHead(c_stage3, self.num_classes, dtype=dtype) if release.aux else None

    @property
    def output_stride(self) -> int:
        return self.release.output_stride

    def forward(self, x):
        return self.head.forward(self.backbone.forward(x)[4])

    def forward_with_aux(self, x):
        """(logits, aux_logits) for training as ml-cvnets trains (loss + 0.4 * aux loss)."""
        if self.aux_head is None:
            raise NpvitError(f"{self.name} has no auxiliary head (the v0.1 releases trained without)")
        features = self.backbone.forward(x)
        return self.head.forward(features[4]), self.aux_head.forward(features[3])

    def backward(self, dlogits, daux=None):
        dys = [None, None, None, None, self.head.backward(dlogits)]
        if daux is not None:
            dys[3] = self.aux_head.backward(daux)
        return self.backbone.backward(dys)

    def predict(self, x, size=None) -> np.ndarray:
        """(N, 3, H, W) -> class indices (N, *size) (default size: (H, W)), as the release's
        evaluation computes them (eval mode, no gradients):

        * v0.1: the input is resized (bilinear, align_corners=False) down to a multiple of the
          output stride; the logits are upsampled x OS (bilinear, align_corners=False), then
          resized to ``size`` with nearest, then argmax;
        * v0.2+: the input is resized (bilinear, align_corners=True) down to a multiple of the
          output stride; the logits go straight to ``size`` (bilinear, align_corners=True), then
          argmax.
        ``size`` is the original image's (height, width) when x is the resized image.
        """
        if self.training:
            raise NpvitError("the model is in training mode (BatchNorm would use the batch's "
                             "statistics); call model.eval() first")
        x = check_input(x).astype(self.dtype, copy=False)
        stride, v01 = self.output_stride, self.release.code == "v0.1"
        h, w = x.shape[2:]
        size = (h, w) if size is None else (int(size[0]), int(size[1]))
        fitted = (max(h // stride, 1) * stride, max(w // stride, 1) * stride)
        with no_grad():
            if fitted != (h, w):
                x, _ = F.resize_bilinear_forward(x, fitted, align_corners=not v01)
            logits = self.forward(x)
            if v01:
                up = (logits.shape[2] * stride, logits.shape[3] * stride)
                labels = F.resize_bilinear_forward(logits, up, align_corners=False)[0].argmax(axis=1)
                return F.resize_nearest(labels[:, None], size)[:, 0]
            return resized_argmax(logits, size, align_corners=True)

    def extra_repr(self):
        return f"{self.name!r}, {self.num_parameters():,} parameters"


def resized_argmax(logits, size, align_corners: bool, rows_per_block: int = 64) -> np.ndarray:
    """argmax over classes of the logits (N, C, h, w) bilinearly resized to ``size``, computed in
    blocks of output rows so that a large image never holds all C full-size planes at once
    (150 ADE20k classes at 2000 x 1500 would be 1.8 GB). Same numbers as resizing whole."""
    a_h = F.interpolation_matrix(logits.shape[2], size[0], align_corners, logits.dtype)
    a_w = F.interpolation_matrix(logits.shape[3], size[1], align_corners, logits.dtype)
    columns = logits @ a_w.T                                          # (N, C, h, W_out)
    out = np.empty((logits.shape[0], *size), dtype=np.int64)
    for start in range(0, size[0], rows_per_block):
        block = slice(start, start + rows_per_block)
        out[:, block] = (a_h[block] @ columns).argmax(axis=1)          # (N, rows, W_out)
    return out


def create(name: str, num_classes=None, pretrained=False, dtype=np.float32, drop_rate=0.0,
           seed=None) -> SegmentationModel:
    """``npvit.create_model`` for a segmentation release (see there)."""
    if drop_rate:
        raise NpvitError(f"{name}: the segmentation heads use ml-cvnets' own dropouts (0.1); "
                         "drop_rate applies to classifiers only")
    if seed is not None:
        from ..nn.init import manual_seed
        manual_seed(seed)
    model = SegmentationModel(release(name), num_classes, dtype)
    if pretrained:
        from ..weights import load_pretrained
        state = load_pretrained(name, pretrained)
        own = model.state_dict()
        fresh = [k for k in own if k.startswith(("head.classifier.", "aux_head.classifier."))
                 and np.shape(state.get(k)) != np.shape(own[k])]
        # The train-only aux head may be absent from a file (the Hugging Face port drops it),
        # and a new class count starts the classifiers afresh: those keep their random init.
        keep = [k for k in own if (k.startswith("aux_head.") and k not in state) or k in fresh]
        model.load_state_dict({**{k: v for k, v in state.items() if k not in fresh},
                               **{k: own[k] for k in keep}})
    return model

