"""The network shared by MobileViT v1 and v2: stem -> 5 stages -> [final 1x1 conv] -> head.

    stem        3x3 conv, stride 2, BN, SiLU             (B, 3, H, W) -> (B, C0, H/2, W/2)
    stages.0    inverted residual(s), stride 1           output stride 2
    stages.1    inverted residuals, first has stride 2   output stride 4
    stages.2-4  [inverted residual stride 2, MobileViT block]   output strides 8, 16, 32
    final_conv  1x1 conv, BN, SiLU (v1 only; Identity in v2)
    head        global average pool -> dropout -> fc     (B, num_classes)

Names follow timm, so ``state_dict()`` keys equal ``timm.create_model(name).state_dict()``'s.

The same stage builders (models/mobilevit.py, models/mobilevit_v2.py) also build the
dense-prediction backbones at output stride 16 or 8 (models/backbone.py), following
:func:`dilated_stages`.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from ..data import check_input
from ..errors import NpvitError
from ..nn import (ConvNormAct, Dropout, GlobalAvgPool, Identity, Linear, Module, Sequential,
                  is_grad_enabled, no_grad)
from ..functional.cache_blocks import BLOCK_BYTES
from ..threads import cpu_count, map_in_order

OUTPUT_STRIDES = (8, 16, 32)


def dilated_stages(output_stride: int = 32) -> list[tuple[int, int, int]]:
    """(stride, inverted-residual dilation, block dilation) of stages 2, 3 and 4, ml-cvnets' rule.

    Classification runs at output stride 32: every stage starts with a stride-2 inverted
    residual. For segmentation ml-cvnets keeps the last stages at a higher resolution: a stage
    whose output stride would exceed ``output_stride`` keeps stride 1, its inverted residual's
    depthwise conv takes the running dilation (starting at 1), then the running dilation
    doubles and the MobileViT block after it gets the doubled one (used only by v2 blocks; v1
    blocks are never dilated). So OS 16 gives stage 4 (1, 1, 2); OS 8 gives stage 3 (1, 1, 2)
    and stage 4 (1, 2, 4). Stages 0 and 1 never change.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise NpvitError(f"output stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    plan, dilation = [], 1
    for stride_after in (8, 16, 32):          # output stride after stages 2, 3, 4 at OS 32
        if stride_after > output_stride:
            plan.append((1, dilation, 2 * dilation))
            dilation *= 2
        else:
            plan.append((2, 1, 1))
    return plan


def _forward_without_grad(part, x):
    """part.forward(x) under no_grad, which is per thread: this may run in the pool of
    npvit.set_num_threads."""
    with no_grad():
        return part.forward(x)


class ClassifierHead(Module):
    """(B, C, H, W) -> (B, num_classes): global average pool, dropout, fc (timm's head.fc)."""

    def __init__(self, in_features, num_classes, drop_rate=0.0, dtype=np.float32):
        super().__init__()
        self.global_pool = GlobalAvgPool()
        self.drop = Dropout(drop_rate)
        self.fc = Linear(in_features, num_classes, dtype=dtype)

    def forward(self, x):
        return self.fc.forward(self.drop.forward(self.global_pool.forward(x)))

    def backward(self, dy):
        return self.global_pool.backward(self.drop.backward(self.fc.backward(dy)))


class MobileViTNet(Module):
    """A MobileViT (v1 or v2) classifier. Build it with :func:`npvit.create_model`.

    x: (B, 3, H, W) float in [0, 1], any H, W >= 32 -> logits (B, num_classes).
    ``backward(dlogits)`` returns dL/dx and fills every parameter's ``grad``.
    """

    def __init__(self, name: str, version: int, stem_chs: int, stages: list[list[Module]],
                 final_chs: int, num_classes: int, drop_rate: float, dtype=np.float32):
        super().__init__()
        self.name, self.version = name, version
        self.stem = ConvNormAct(3, stem_chs, 3, stride=2, dtype=dtype)
        self.stages = Sequential(*[Sequential(*blocks) for blocks in stages])
        last_chs = stages[-1][-1].conv_proj.conv.weight.shape[0]
        if final_chs:
            self.final_conv = ConvNormAct(last_chs, final_chs, 1, dtype=dtype)
        else:
            self.final_conv = Identity()
        self.num_features = final_chs or last_chs
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate, dtype=dtype)

    # What the model file said about itself (npvit.weights.meta: model, classes, input size,
    # preprocessing), set by create_model(pretrained=PATH) and load_model; None otherwise.
    meta: dict | None = None

    # Inference (eval mode under no_grad) runs each part of the network (stem, each stage, head)
    # on as many images at a time as keep that part's input within one cache block (1 MiB,
    # functional/cache_blocks.py); None = the whole batch at once. So the early stages, whose
    # maps are large, go image by image and their activations stay in the CPU caches, while the
    # late stages, whose maps are small, take several images at once and share the Python work
    # of their many small operations: at batch 8 and 256 px, mobilevit_xxs 139 -> 131 ms and
    # mobilevitv2_050 143 -> 137 ms against image by image throughout (A/B in one process, one
    # thread). In eval mode images do not interact (BatchNorm uses its running statistics), so
    # the logits are the same however the batch is cut. Training and backward always see the
    # whole batch. With npvit.set_num_threads(n > 1) the pieces of each part run in a pool of
    # n threads (npvit/threads.py). A part is cut into at least as many pieces as the process has
    # CPUs, whatever n is: so every thread has work, and the logits do not depend on n (a
    # piece's size can change the last bit: BLAS multiplies one image's row by a matrix with
    # another kernel than several images' rows).
    inference_chunk_bytes: int | None = BLOCK_BYTES

    def forward(self, x):
        x = check_input(x).astype(self.dtype, copy=False)
        if (self.inference_chunk_bytes and len(x) > 1 and not self.training
                and not is_grad_enabled()):
            return self._inference_in_pieces(x)
        return self._logits(x)

    def _inference_in_pieces(self, x):
        pieces, cpus = [x], cpu_count()
        for part in (self.stem, *self.stages, self.final_conv, self.head):
            per = max(1, self.inference_chunk_bytes // pieces[0][0].nbytes)  # images per piece
            per = min(per, -(-len(x) // cpus))             # at least one piece per CPU
            if per != len(pieces[0]):                      # cut anew only when the size changes
                joined = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
                pieces = [joined[i:i + per] for i in range(0, len(joined), per)]
            pieces = list(map_in_order(partial(_forward_without_grad, part), pieces))
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def _logits(self, x):
        x = self.stages.forward(self.stem.forward(x))
        return self.head.forward(self.final_conv.forward(x))

    def backward(self, dlogits):
        dx = self.final_conv.backward(self.head.backward(dlogits))
        return self.stem.backward(self.stages.backward(dx))

    def forward_features(self, x) -> dict[int, np.ndarray]:
        """Feature maps by output stride {2, 4, 8, 16, 32}: the outputs of stages 0-4 (the last
        one before v1's final 1x1 conv). Inference only: computed under no_grad."""
        x = check_input(x).astype(self.dtype, copy=False)
        feats = {}
        with no_grad():
            x = self.stem.forward(x)
            for stride, stage in zip((2, 4, 8, 16, 32), self.stages):
                x = stage.forward(x)
                feats[stride] = x
        return feats

    def extra_repr(self):
        return f"{self.name!r}, {self.num_parameters():,} parameters"
