"""SSDLite on a MobileViT backbone: the 11 COCO detectors released with ml-cvnets.

Architecture (ml-cvnets cvnets/models/detection/ssd.py and cvnets/modules/ssd_heads.py, the same
in v0.1 and v0.2+; ../shared/reference/dense/NOTES.md section 2.2), for a 320x320 input:

    backbone (output stride 32, no classifier, no v1 final 1x1 conv)
      stage 3 output  (B, C16, 20, 20)  --------------------------------> head 0   6 anchors
      stage 4 output  (B, C32, 10, 10)  --------------------------------> head 1   6
        extra_layers.os_64    separable 3x3 s2 -> 256   (B, 256, 5, 5)  -> head 2   6
        extra_layers.os_128   separable 3x3 s2 -> 128   (B, 128, 3, 3)  -> head 3   6
        extra_layers.os_256   separable 3x3 s2 -> 128   (B, 128, 2, 2)  -> head 4   6
        extra_layers.pooled   global mean, 1x1 -> 64, ReLU  (B, 64, 1, 1) -> head 5 4

    separable block: depthwise 3x3 (stride s) + BN, no activation; 1x1 + BN + ReLU.
    head i: [proj_layer: 1x1 + BN + ReLU to proj_channels[i] = 512, 256, 256, 128, 128, 64, only
            where the input has other channels and the head's kernel is 3], then loc_cls_layer:
            levels 0-4 a depthwise 3x3 + BN then a 1x1 WITH bias (no BN, no activation);
            level 5 a plain 1x1 with bias. Output channels A * (4 + 81), read as
            (B, H, W, A, 85) -> (B, H*W*A, 85): per anchor 4 box offsets, then 81 class logits
            (column 0 = background).

Outputs are concatenated level by level: (B, 3232, 4) box offsets and (B, 3232, 81) logits at
320x320, in the order of ``anchors(320, 320)`` (models/ssd_anchors.py). ``detect`` decodes,
applies the release's post-processing (models/ssd_boxes.py) and returns boxes in input pixels.

State-dict names: ``backbone.`` + timm's names for the backbone (stem.*, stages.*), and for
the rest ml-cvnets' module names with ConvLayer's ``block.conv/block.norm`` written timm-style
as ``conv/bn`` (bare convs hold ``weight``/``bias`` directly), e.g.
    ml-cvnets                                          npvit
    encoder.layer_4.1.conv_proj.block.norm.weight      backbone.stages.3.1.conv_proj.bn.weight
    extra_layers.os_64.dw_conv.block.conv.weight       extra_layers.os_64.dw_conv.conv.weight
    extra_layers.os_-1.1.block.conv.weight             extra_layers.pooled.conv.weight
    ssd_heads.0.proj_layer.block.norm.running_mean     ssd_heads.0.proj_layer.bn.running_mean
    ssd_heads.0.loc_cls_layer.pw_conv.block.conv.bias  ssd_heads.0.loc_cls_layer.pw_conv.bias
    ssd_heads.5.loc_cls_layer.block.conv.weight        ssd_heads.5.loc_cls_layer.weight
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..data.coco import coco_category_ids
from ..errors import NpvitError
from ..nn import Conv2d, ConvNormAct, GlobalAvgPool, Module, ReLU, Sequential, no_grad
from .backbone import MobileViTBackbone
from .ssd_anchors import anchors_per_location, ssd_anchors
from .ssd_boxes import POSTPROCESS, Detections, decode_boxes, postprocess

NUM_CLASSES = 81            # 80 COCO classes + background at column 0
BOX_CODES = 4
PROJ_CHANNELS = (512, 256, 256, 128, 128, 64)
EXTRA_NAMES = ("os_64", "os_128", "os_256")
INPUT_SIZE = 320


class Release(NamedTuple):
    """One released detector: its backbone, the ml-cvnets version that trained and evaluated
    it (which fixes preprocessing and post-processing), and the zoo's numbers."""
    backbone: str
    code: str            # "cvnets-v0.1" or "cvnets-v0.2" (keys of ssd_boxes.POSTPROCESS)
    pipeline: str        # npvit.data preprocessing: colour order and resampling filter
    map: float           # COCO val2017 box mAP@[.5:.95] (%) reported in the model zoo


RELEASES = {
    "ssdlite_mobilevit_xxs_coco": Release("mobilevit_xxs", "cvnets-v0.1", "cvnets-v1", 19.9),
    "ssdlite_mobilevit_xs_coco": Release("mobilevit_xs", "cvnets-v0.1", "cvnets-v1", 24.8),
    "ssdlite_mobilevit_s_coco": Release("mobilevit_s", "cvnets-v0.1", "cvnets-v1", 27.9),
    **{f"ssdlite_{b}_coco": Release(b, "cvnets-v0.2", "cvnets-v2", m) for b, m in (
        ("mobilevitv2_050", 21.24), ("mobilevitv2_075", 24.57), ("mobilevitv2_100", 26.47),
        ("mobilevitv2_125", 27.85), ("mobilevitv2_150", 28.83), ("mobilevitv2_175", 29.52),
        ("mobilevitv2_200", 30.21))},
}


class SeparableConv(Module):
    """Depthwise k x k (stride s) + BN without activation, then 1x1 + BN + optional ReLU."""

    def __init__(self, in_chs, out_chs, stride=1, dtype=np.float32):
        super().__init__()
        self.dw_conv = ConvNormAct(in_chs, in_chs, 3, stride=stride, groups=in_chs, act=False,
                                   dtype=dtype)
        self.pw_conv = ConvNormAct(in_chs, out_chs, 1, act="relu", dtype=dtype)

    def forward(self, x):
        return self.pw_conv.forward(self.dw_conv.forward(x))

    def backward(self, dy):
        return self.dw_conv.backward(self.pw_conv.backward(dy))


class SeparablePredictor(Module):
    """Depthwise 3x3 + BN (no activation), then a 1x1 conv with bias: a head's loc_cls_layer."""

    def __init__(self, in_chs, out_chs, dtype=np.float32):
        super().__init__()
        self.dw_conv = ConvNormAct(in_chs, in_chs, 3, groups=in_chs, act=False, dtype=dtype)
        self.pw_conv = Conv2d(in_chs, out_chs, 1, dtype=dtype)

    def forward(self, x):
        return self.pw_conv.forward(self.dw_conv.forward(x))

    def backward(self, dy):
        return self.dw_conv.backward(self.pw_conv.backward(dy))


class PooledConv(Module):
    """(B, C, H, W) -> global mean -> 1x1 conv (no bias, no BN) -> ReLU -> (B, out, 1, 1)."""

    def __init__(self, in_chs, out_chs, dtype=np.float32):
        super().__init__()
        self.pool = GlobalAvgPool()
        self.conv = Conv2d(in_chs, out_chs, 1, bias=False, dtype=dtype)
        self.act = ReLU()

    def forward(self, x):
        return self.act.forward(self.conv.forward(self.pool.forward(x)[:, :, None, None]))

    def backward(self, dy):
        return self.pool.backward(self.conv.backward(self.act.backward(dy))[:, :, 0, 0])


class SSDHead(Module):
    """(B, C, H, W) -> (B, H*W*A, 4 + num_classes): one level's box offsets and logits."""

    def __init__(self, in_chs, proj_chs, num_anchors, kernel_size=3, num_classes=NUM_CLASSES,
                 dtype=np.float32):
        super().__init__()
        self.num_anchors, self.codes = num_anchors, BOX_CODES + num_classes
        self.proj_layer = None
        if kernel_size > 1 and proj_chs != in_chs:
            self.proj_layer = ConvNormAct(in_chs, proj_chs, 1, act="relu", dtype=dtype)
            in_chs = proj_chs
        out_chs = num_anchors * self.codes
        self.loc_cls_layer = (SeparablePredictor(in_chs, out_chs, dtype) if kernel_size > 1
                              else Conv2d(in_chs, out_chs, 1, dtype=dtype))

    def forward(self, x):
        if self.proj_layer is not None:
            x = self.proj_layer.forward(x)
        y = self.loc_cls_layer.forward(x)                     # (B, A*85, H, W)
        b, _, h, w = y.shape
        self.save_cache(y.shape)
        # channel a*85 + j is anchor slot a's value j: NHWC then (B, H*W*A, 85)
        return y.transpose(0, 2, 3, 1).reshape(b, h * w * self.num_anchors, self.codes)

    def backward(self, dy):
        b, c, h, w = self.pop_cache()
        dy = np.ascontiguousarray(dy.reshape(b, h, w, c).transpose(0, 3, 1, 2))
        dx = self.loc_cls_layer.backward(dy)
        return self.proj_layer.backward(dx) if self.proj_layer is not None else dx


class SSDLite(Module):
    """An SSDLite detector. Build one with ``npvit.create_model("ssdlite_mobilevitv2_050_coco")``.

    x: (B, 3, H, W) float in [0, 1] (the releases use 320x320) -> (box offsets (B, A, 4),
    class logits (B, A, 81)). ``backward(dboxes, dlogits)`` returns dL/dx and fills every
    parameter's grad. ``anchors(h, w)`` and ``detect(x)`` as in the module docstring.
    """

    def __init__(self, name: str, dtype=np.float32):
        super().__init__()
        if name not in RELEASES:
            raise NpvitError(f"unknown detector {name!r}; choose one of {', '.join(RELEASES)}")
        self.name, self.release = name, RELEASES[name]
        self.backbone = MobileViTBackbone(self.release.backbone, output_stride=32, dtype=dtype)
        c16, c32 = self.backbone.channels[3], self.backbone.channels[4]
        extras, chs = [], c32
        for name_, out in zip(EXTRA_NAMES, PROJ_CHANNELS[2:5]):
            extras.append((name_, SeparableConv(chs, out, stride=2, dtype=dtype)))
            chs = out
        self.extra_layers = Module()
        for name_, layer in extras:
            setattr(self.extra_layers, name_, layer)
        self.extra_layers.pooled = PooledConv(chs, PROJ_CHANNELS[5], dtype)
        level_chs = [c16, c32, *PROJ_CHANNELS[2:]]
        self.ssd_heads = Sequential(*[
            SSDHead(c, p, a, kernel_size=3 if i < 5 else 1, dtype=dtype)
            for i, (c, p, a) in enumerate(zip(level_chs, PROJ_CHANNELS, anchors_per_location()))])

    # --- the network ---------------------------------------------------------------------------
    def _levels(self, x) -> list[np.ndarray]:
        """The six feature maps the heads read (strides 16, 32, 64, 128, 256, global)."""
        features = self.backbone.forward(x)
        levels = [features[3], features[4]]
        y = features[4]
        for name in EXTRA_NAMES:
            y = getattr(self.extra_layers, name).forward(y)
            levels.append(y)
        levels.append(self.extra_layers.pooled.forward(y))
        return levels

    def forward(self, x):
        levels = self._levels(x)
        self.save_cache([lv.shape[2:] for lv in levels])
        out = np.concatenate([head.forward(lv) for head, lv in zip(self.ssd_heads, levels)], axis=1)
        return out[..., :BOX_CODES], out[..., BOX_CODES:]

    def backward(self, dboxes, dlogits):
        sizes = self.pop_cache()
        dout = np.concatenate([dboxes, dlogits], axis=-1)
        counts = [h * w * a for (h, w), a in zip(sizes, anchors_per_location())]
        parts = np.split(dout, np.cumsum(counts)[:-1], axis=1)
        dlevels = [head.backward(d) for head, d in zip(self.ssd_heads, parts)]
        # the extra layers form a chain: each level's gradient joins the one from deeper levels
        dy = self.extra_layers.pooled.backward(dlevels[5])
        for i, name in reversed(list(enumerate(EXTRA_NAMES, start=2))):
            dy = getattr(self.extra_layers, name).backward(dy + dlevels[i])
        return self.backbone.backward([None, None, None, dlevels[0], dy + dlevels[1]])

    # --- anchors and detections ------------------------------------------------------------------
    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The six levels' (h, w) for an input of height x width, from the layers' arithmetic:
        every stride-2 3x3 conv (padding 1) gives ceil(n / 2); v2's MobileViT blocks (stages
        2-4) first resize their input up to even sides, v1's resize back afterwards."""
        def down(n):
            return (n + 1) // 2

        def block(n):
            return n + n % 2 if self.backbone.version == 2 else n
        h, w = down(down(down(height))), down(down(down(width)))      # stem, stage 1, stage 2 IR
        h, w = block(h), block(w)
        sizes = []
        for _ in range(2):                                            # stages 3 and 4
            h, w = block(down(h)), block(down(w))
            sizes.append((h, w))
        for _ in EXTRA_NAMES:
            h, w = down(h), down(w)
            sizes.append((h, w))
        return sizes + [(1, 1)]

    def anchors(self, height: int = INPUT_SIZE, width: int = INPUT_SIZE) -> np.ndarray:
        """(A, 4) centre-form anchors (cx, cy, w, h), normalised, in the order of the outputs."""
        return ssd_anchors(self.feature_sizes(height, width)).astype(self.dtype)

    def detect(self, x, score_threshold: float | None = None) -> list[Detections]:
        """Per image: Detections(boxes (K, 4) x1, y1, x2, y2 in input pixels clipped to the
        image, scores (K,), labels (K,) COCO category ids), after the release's post-processing
        (v0.2+: score > 0.01, top 400 per class, NMS 0.5, 200 per image; v0.1: score > 0.05,
        NMS 0.5, 200 per class). ``score_threshold`` replaces the release's threshold."""
        if self.training:
            raise NpvitError("detect needs the model in eval mode (call model.eval())")
        with no_grad():
            offsets, logits = self.forward(x)
        height, width = np.shape(x)[2:]
        anchors = ssd_anchors(self.feature_sizes(height, width))
        shifted = logits - logits.max(-1, keepdims=True)               # softmax over 81 columns
        probabilities = np.exp(shifted)
        probabilities /= probabilities.sum(-1, keepdims=True)
        boxes = decode_boxes(offsets, anchors.astype(offsets.dtype))
        rule, ids = POSTPROCESS[self.release.code], coco_category_ids()
        results = []
        for b in range(len(offsets)):
            d = postprocess(boxes[b], probabilities[b], rule, score_threshold)
            scale = np.array([width, height, width, height], dtype=d.boxes.dtype)
            pixels = np.clip(d.boxes * scale, 0, scale)
            results.append(Detections(pixels, d.scores, ids[d.labels]))
        return results

    def extra_repr(self):
        return f"{self.name!r}, {self.num_parameters():,} parameters"


def create(name: str, pretrained=False, dtype=np.float32, seed=None) -> SSDLite:
    """``npvit.create_model`` for a detection release: pretrained False, True (the official
    weights from the cache) or a checkpoint path; seed makes the random init reproducible."""
    if seed is not None:
        from ..nn.init import manual_seed
        manual_seed(seed)
    model = SSDLite(name, dtype=dtype)
    if pretrained:
        from ..weights import load_pretrained
        model.load_state_dict(load_pretrained(name, pretrained))
    return model
