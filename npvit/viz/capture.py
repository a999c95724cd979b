"""Capture every attention layer's weights during one forward pass, without touching the math.

The attention modules already keep a reference to what their last forward computed
(``SeparableSelfAttention.last_context_scores``, ``MultiHeadAttention.last_attention``) and each
MobileViT block keeps the patch grid it unfolded (``last_grid``). `capture` only reads those
attributes, so the forward inside it is the ordinary forward, bit for bit:

    with npvit.viz.capture(model) as records:
        logits = model(x)
    records[0].weights     # v2: context scores (B, 1, P, N); v1: attention (B*P, h, N, N)

On entry it clears the attributes, so every record provably comes from the forward run inside
the ``with`` block (a layer that did not run raises instead of returning stale weights).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import NpvitError
from ..nn.blocks import MobileViTBlock, MobileViTBlockV2

# The nominal output stride of stage i of a MobileViTNet: the stem and stages 1-4 halve the size.
STAGE_STRIDES = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class AttentionRecord:
    """The attention of one transformer layer in one forward pass.

    kind "context_scores" (MobileViTv2, separable attention): weights (B, 1, P, N), for each of
        the P pixel positions a softmax over the N patches.
    kind "attention" (MobileViT v1, multi-head attention): weights (B*P, h, N, N), row
        [b*P + p, head, query] is a softmax over the N key patches.
    P = patch_size[0] * patch_size[1] pixel positions; N = grid[0] * grid[1] patches, in
    row-major order over the (n_h, n_w) grid, as `npvit.functional.unfold_v2` / ``unfold_v1``
    lay them out.
    """
    stage: int                      # index in model.stages (2, 3, 4 in MobileViT)
    stride: int                     # the stage's nominal output stride (8, 16, 32)
    layer: int                      # index of the layer in the block's transformer
    depth: int                      # number of layers in that block
    kind: str                       # "context_scores" or "attention"
    weights: np.ndarray
    grid: tuple[int, int]           # (n_h, n_w)
    patch_size: tuple[int, int]     # (p_h, p_w) = (2, 2)

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the feature map the block unfolded (after any resize to a multiple of 2)."""
        return self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1]


def attention_blocks(model):
    """(stage index, block) for every MobileViT / MobileViTv2 block of a MobileViTNet."""
    for stage_index, stage in enumerate(model.stages):
        for block in stage:
            if isinstance(block, (MobileViTBlock, MobileViTBlockV2)):
                yield stage_index, block


def _attention_of(layer):
    """(kind, attribute name) of a v1 or v2 transformer layer's attention module."""
    if hasattr(layer.attn, "last_context_scores"):
        return "context_scores", "last_context_scores"
    return "attention", "last_attention"


@contextmanager
def capture(model):
    """Context manager yielding a list that, when the ``with`` block ends, holds one
    `AttentionRecord` per transformer layer (model order) of the last forward run inside it."""
    blocks = list(attention_blocks(model))
    layers = [layer for _, block in blocks for layer in block.transformer]
    for _, block in blocks:
        block.last_grid = None
    for layer in layers:
        setattr(layer.attn, _attention_of(layer)[1], None)
        layer.attn.record = True          # keep the weights even under no_grad
    records: list[AttentionRecord] = []
    # Every layer must see the whole batch in one pass, so that its kept weights cover all images.
    chunk, model.inference_chunk_bytes = model.inference_chunk_bytes, None
    try:
        yield records
    finally:
        model.inference_chunk_bytes = chunk
        for layer in layers:
            layer.attn.record = False
    for stage_index, block in blocks:
        if block.last_grid is None:
            raise NpvitError("capture: no forward pass of the model ran inside the with block")
        for i, layer in enumerate(block.transformer):
            kind, attribute = _attention_of(layer)
            # A copy: the module's array may be reused by a later forward or backward.
            weights = np.array(getattr(layer.attn, attribute), copy=True)
            records.append(AttentionRecord(
                stage=stage_index, stride=STAGE_STRIDES[stage_index], layer=i,
                depth=len(block.transformer), kind=kind, weights=weights, grid=block.last_grid,
                patch_size=tuple(block.patch_size)))
