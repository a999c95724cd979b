"""The PyTorch side of the dense-prediction tests: timm backbones re-configured to ml-cvnets'
output stride 16 / 8 (NOTES.md section 1.3, written out here independently of npvit's rule).
Import only inside tests that already required torch."""
from __future__ import annotations

# (stage, block) -> (stride, dilation) of the convs ml-cvnets changes, from the table in
# ../shared/reference/dense/NOTES.md 1.3: the stride-2 inverted residual's depthwise 3x3
# (stages.L.0.conv2_kxk) and, in v2 only, the MobileViT block's local 3x3 (stages.L.1.conv_kxk).
DILATION_TABLE = {
    16: {(4, 0): (1, 1), (4, 1): (1, 2)},
    8: {(3, 0): (1, 1), (3, 1): (1, 2), (4, 0): (1, 2), (4, 1): (1, 4)},
}


def dilate_timm_backbone(model, output_stride: int, version: int):
    """Change a timm MobileViT's convs in place to ml-cvnets' output stride (32, 16 or 8)."""
    for (stage, block), (stride, dilation) in DILATION_TABLE.get(output_stride, {}).items():
        if block == 0:
            conv = model.stages[stage][0].conv2_kxk.conv
        elif version == 2:
            conv = model.stages[stage][1].conv_kxk.conv
        else:
            continue                       # v1 MobileViT blocks are never dilated
        conv.stride, conv.dilation, conv.padding = (stride, stride), (dilation, dilation), \
            (dilation, dilation)
    return model


def timm_stage_outputs(model, x):
    """The five stage outputs of a timm MobileViT (stem -> stages), with autograd."""
    feats = []
    y = model.stem(x)
    for stage in model.stages:
        y = stage(y)
        feats.append(y)
    return feats


# --- segmentation heads, built from torch.nn as NOTES.md 1.4 / 1.5 describe them ----------------
# Module names are ml-cvnets' (ConvLayer = `block.{conv,norm,act}`), so the reference's own
# state_dict IS the official layout once the timm backbone is renamed (`official_state_dict`).
def _make(torch):
    nn, Fn = torch.nn, torch.nn.functional
    from collections import OrderedDict

    class conv_layer(nn.Module):       # ml-cvnets' ConvLayer
        def __init__(self, c_in, c_out, k, dilation=1, norm=True, act=True, bias=False):
            super().__init__()
            parts = [("conv", nn.Conv2d(c_in, c_out, k, padding=dilation * (k // 2),
                                        dilation=dilation, bias=bias))]
            if norm:
                parts.append(("norm", nn.BatchNorm2d(c_out)))
            if act:
                parts.append(("act", nn.ReLU()))
            self.block = nn.Sequential(OrderedDict(parts))

        def forward(self, x):
            return self.block(x)

    class Pool(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.aspp_pool = nn.Sequential(OrderedDict(gap=nn.AdaptiveAvgPool2d(1),
                                                       conv_1x1=conv_layer(c_in, c_out, 1)))

        def forward(self, x):
            return Fn.interpolate(self.aspp_pool(x), size=x.shape[2:], mode="bilinear",
                                  align_corners=False)

    class ASPPLayer(nn.Module):
        def __init__(self, c_in, c_out, rates, v01):
            super().__init__()
            self.convs = nn.ModuleList([conv_layer(c_in, c_out, 1)]
                                       + [conv_layer(c_in, c_out, 3, r) for r in rates]
                                       + [Pool(c_in, c_out)])
            self.project = conv_layer(5 * c_out, c_out, 1)
            self.dropout = nn.Dropout(0.1) if v01 else nn.Dropout2d(0.1)

        def forward(self, x):
            return self.dropout(self.project(torch.cat([c(x) for c in self.convs], 1)))

    class DeepLabV3(nn.Module):
        def __init__(self, c_in, classes, c_out, rates, v01):
            super().__init__()
            self.aspp = nn.Sequential(OrderedDict(aspp_layer=ASPPLayer(c_in, c_out, rates, v01)))
            cls = conv_layer(c_out, classes, 1, norm=False, act=False, bias=True)
            if v01:
                self.classifier = nn.Sequential(OrderedDict(classifier_dropout=nn.Dropout2d(0.1),
                                                            classifier=cls))
            else:
                self.classifier = cls

        def forward(self, x4, x5):
            return self.classifier(self.aspp(x5))

    class PSPLayer(nn.Module):
        def __init__(self, c_in):
            super().__init__()
            r = ((c_in // 4) // 16) * 16
            self.psp_branches = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(p), conv_layer(c_in, r, 1))
                                               for p in (1, 2, 3, 6)])
            self.fusion = nn.Sequential(conv_layer(c_in + 4 * r, 512, 3), nn.Dropout2d(0.1))

        def forward(self, x):
            h, w = x.shape[2:]
            return self.fusion(torch.cat([x] + [Fn.interpolate(b(x), (h, w), mode="bilinear",
                                                               align_corners=True)
                                                for b in self.psp_branches], 1))

    class PSPNet(nn.Module):
        def __init__(self, c_in, classes):
            super().__init__()
            self.psp_layer = PSPLayer(c_in)
            self.classifier = conv_layer(512, classes, 1, norm=False, act=False, bias=True)

        def forward(self, x4, x5):
            return self.classifier(self.psp_layer(x5))

    def aux_head(c_in, classes):
        inner = max(c_in // 4, 128)
        return nn.Sequential(conv_layer(c_in, inner, 3), nn.Dropout2d(0.1),
                             conv_layer(inner, classes, 1, norm=False, act=False, bias=True))

    return DeepLabV3, PSPNet, aux_head


def reference_segmenter(release, seed=0, dtype="float64"):
    """The torch reference of an npvit segmentation release: timm's backbone dilated per
    DILATION_TABLE (as `encoder`) + the head (`seg_head`, with `aux_head` inside for v0.2+),
    random weights and random BN statistics, eval mode. Call ref(x) -> (logits, aux_logits)."""
    import torch
    from timm_reference import random_timm_model, randomise_norms
    DeepLabV3, PSPNet, aux_head = _make(torch)
    version = 2 if release.backbone.startswith("mobilevitv2_") else 1
    encoder = dilate_timm_backbone(random_timm_model(release.backbone, seed=seed, dtype=dtype),
                                   release.output_stride, version)
    channels = [s[-1].conv_proj.conv.out_channels if hasattr(s[-1], "conv_proj")
                else s[-1].conv3_1x1.conv.out_channels for s in encoder.stages]
    classes = 21 if release.dataset == "voc" else 150
    torch.manual_seed(seed + 2)
    if release.head == "deeplabv3":
        head = DeepLabV3(channels[4], classes, release.aspp_channels, release.rates,
                         release.code == "v0.1")
    else:
        head = PSPNet(channels[4], classes)
    if release.code != "v0.1":
        head.aux_head = aux_head(channels[3], classes)
    randomise_norms(head, seed + 3)

    class Ref(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.seg_head = encoder, head

        def forward(self, x):
            feats = timm_stage_outputs(self.encoder, x)
            logits = self.seg_head(feats[3], feats[4])
            aux = self.seg_head.aux_head(feats[3]) if hasattr(self.seg_head, "aux_head") else None
            return logits, aux

    return Ref().to(getattr(torch, dtype)).eval()


def official_state_dict(ref, tensors: dict | None = None) -> dict:
    """The reference's tensors under the official ml-cvnets segmentation keys: `encoder.` +
    the classifier's ml-cvnets names (tests/official_layouts.py; no classifier, no
    conv_1x1_exp), `seg_head.` + the head's own names. ``tensors``: other tensors under the
    reference's names to rename instead (e.g. the parameters' gradients)."""
    from official_layouts import cvnets_key
    tensors = ref.state_dict() if tensors is None else tensors
    v1 = "encoder.final_conv.conv.weight" in ref.state_dict()
    out = {}
    for k, v in tensors.items():
        if k.startswith(("encoder.stem.", "encoder.stages.")):
            out["encoder." + cvnets_key(k[len("encoder."):], v1)] = v
        elif k.startswith("seg_head."):
            out[k] = v
    return out
