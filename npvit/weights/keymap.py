"""Rename a state dict from the official ml-cvnets layout or the Hugging Face transformers
layout to npvit's names (which are timm's).

Both maps are written as ordered rename RULES (regular expression -> replacement), applied one
after the other to every key, so a reader can follow one key through them. The layouts were
read from ml-cvnets (``cvnets/models/classification/mobilevit*.py``, the modules' attribute
names) and from transformers' ``convert_mlcvnets_to_pytorch.py`` scripts for MobileViT and
MobileViTV2; tests check the rules against key-by-key listings of both layouts.

Example, one v1 key through the ml-cvnets rules:
    layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight
    stages.2.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight     (layer_L -> stages.L-1)
    stages.2.1.transformer.0.pre_norm_mha.1.qkv_proj.weight    (global_rep.t -> transformer.t)
    stages.2.1.transformer.0.attn.qkv.weight                   (pre_norm_mha.1.qkv_proj -> attn.qkv)
No tensor changes shape, except in the HF layout, where v1 attention keeps query, key and value
as three (d, d) Linear layers that timm fuses into one (3d, d) ``qkv`` with rows [q | k | v].
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import NpvitError
from .reader import StoredTensor
from .keymap_segmentation import LAYOUT_NAMES as SEGMENTATION_LAYOUT_NAMES
from .keymap_segmentation import detect_segmentation_layout, segmentation_to_npvit_names

# --- ml-cvnets -> timm --------------------------------------------------------------------------
# ml-cvnets wraps every conv+norm(+act) unit as `<unit>.block.{conv,norm}`; inverted residuals
# keep their three units inside another `block` Sequential; the MobileViT block's pieces are
# `local_rep`, `global_rep` (transformer layers, then the final norm at index = depth),
# `conv_proj` and (v1) `fusion`. Transformer layers are pre-norm Sequentials
# [norm, attention, dropout] and [norm, fc1, act/dropout..., fc2, dropout].
CVNETS_RULES = [
    (r"^conv_1\.", "stem."),
    (r"^conv_1x1_exp\.", "final_conv."),                 # v1 only; an Identity in v2
    (r"^classifier\.(fc|1)\.", "head.fc."),              # v1 classifier.fc, v2 classifier.1
    (r"^layer_(\d)\.", lambda m: f"stages.{int(m[1]) - 1}."),
    # inverted residual: expand 1x1, depthwise 3x3, reduce 1x1
    (r"\.block\.exp_1x1\.", ".conv1_1x1."),
    (r"\.block\.conv_3x3\.", ".conv2_kxk."),
    (r"\.block\.red_1x1\.", ".conv3_1x1."),
    # MobileViT block: local representation (v1 names, v2 indices), fusion
    (r"\.local_rep\.(conv_3x3|0)\.", ".conv_kxk."),
    (r"\.local_rep\.(conv_1x1|1)\.", ".conv_1x1."),
    (r"\.fusion\.", ".conv_fusion."),
    # global representation: the entry with weights directly under its index is the final norm
    (r"\.global_rep\.\d+\.(weight|bias)$", r".norm.\1"),
    (r"\.global_rep\.(\d+)\.", r".transformer.\1."),
    # one transformer layer (v1: pre_norm_mha, LayerNorm; v2: pre_norm_attn, GroupNorm(1))
    (r"\.pre_norm_(mha|attn)\.0\.", ".norm1."),
    (r"\.pre_norm_mha\.1\.qkv_proj\.", ".attn.qkv."),
    (r"\.pre_norm_mha\.1\.out_proj\.", ".attn.proj."),
    (r"\.pre_norm_attn\.1\.", ".attn."),                 # v2 keeps qkv_proj / out_proj
    (r"\.pre_norm_ffn\.0\.", ".norm2."),
    (r"\.pre_norm_ffn\.1\.", ".mlp.fc1."),
    (r"\.pre_norm_ffn\.(3|4)\.", ".mlp.fc2."),           # v2: 3; v1: 4 (SiLU, Dropout before)
    # conv wrappers: units that are a bare conv in timm lose `.block.conv`, the rest keep conv/bn
    (r"\.(conv_1x1|qkv_proj|out_proj|fc1|fc2)\.block\.conv\.", r".\1."),
    (r"\.block\.conv\.", ".conv."),
    (r"\.block\.norm\.", ".bn."),
]

# --- Hugging Face transformers -> timm ----------------------------------------------------------
# MobileViT(V2)ForImageClassification: `mobilevit(v2).` + conv_stem, encoder.layer.i (i = timm
# stage; stages 0-1 hold `layer.j` inverted residuals, stages 2-4 a `downsampling_layer` and
# then the MobileViT block's parts directly), conv_1x1_exp (v1); `classifier` at the top.
# Conv units are `{convolution, normalization}`.
HF_RULES = [
    (r"^mobilevit(v2)?\.", ""),
    (r"^conv_stem\.", "stem."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.", "head.fc."),
    (r"^encoder\.layer\.(\d)\.layer\.(\d+)\.", r"stages.\1.\2."),
    (r"^encoder\.layer\.(\d)\.downsampling_layer\.", r"stages.\1.0."),
    (r"^encoder\.layer\.(\d)\.", r"stages.\1.1."),       # everything else is the MobileViT block
    # inverted residual
    (r"\.expand_1x1\.", ".conv1_1x1."),
    (r"\.conv_3x3\.", ".conv2_kxk."),
    (r"\.reduce_1x1\.", ".conv3_1x1."),
    # MobileViT block
    (r"\.conv_projection\.", ".conv_proj."),
    (r"\.fusion\.", ".conv_fusion."),
    (r"\.layernorm\.", ".norm."),
    (r"\.transformer\.layer\.(\d+)\.", r".transformer.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),    # v1
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),   # v1, fused by _fuse_qkv
    (r"\.attention\.", ".attn."),                        # v2: qkv_proj, out_proj
    (r"\.intermediate\.dense\.", ".mlp.fc1."),           # v1
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.ffn\.conv1\.", ".mlp.fc1."),                    # v2
    (r"\.ffn\.conv2\.", ".mlp.fc2."),
    (r"\.(conv_1x1|qkv_proj|out_proj|fc1|fc2)\.convolution\.", r".\1."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
]

RULES = {"cvnets": CVNETS_RULES, "hf": HF_RULES}
# How each key layout is named to people (convert/predict messages).
LAYOUT_NAMES = {"cvnets": "ml-cvnets", "hf": "Hugging Face", "timm": "timm/npvit",
                **SEGMENTATION_LAYOUT_NAMES}


def detect_layout(keys) -> str:
    """'timm' (= npvit), 'cvnets' (official ml-cvnets files) or 'hf' (transformers port); for
    segmentation checkpoints 'cvnets-seg' / 'hf-seg' (keymap_segmentation.py)."""
    keys = list(keys)
    segmentation = detect_segmentation_layout(keys)
    if segmentation is not None:
        return segmentation
    if any(k.startswith(("stem.", "stages.")) for k in keys):
        return "timm"
    if any(k.startswith(("conv_1.", "layer_1.")) for k in keys):
        return "cvnets"
    if any(k.startswith(("mobilevit.", "mobilevitv2.", "conv_stem.convolution.", "encoder.layer."))
           for k in keys):
        return "hf"
    raise NpvitError("the checkpoint's keys match no MobileViT layout npvit knows (timm, "
                     f"ml-cvnets, Hugging Face); first keys: {', '.join(keys[:4]) or 'none'}")


def rename_key(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def to_npvit_names(state: dict[str, np.ndarray], layout: str | None = None):
    """(layout, state dict with npvit/timm key names), same arrays, same order."""
    layout = layout or detect_layout(state)
    if layout == "timm":
        return layout, dict(state)
    if layout in SEGMENTATION_LAYOUT_NAMES:
        return layout, segmentation_to_npvit_names(state, layout)
    renamed = {}
    for key, value in state.items():
        new = rename_key(key, RULES[layout])
        if new in renamed:
            raise NpvitError(f"two {layout} keys map to the same npvit key {new} (second: {key})")
        renamed[new] = value
    return layout, _fuse_qkv(renamed) if layout == "hf" else renamed


def _concatenate(parts):
    """[q, k, v] stacked along rows: an array, or for tensors not yet read (a checkpoint still
    open) a StoredTensor that stacks them when it is read."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts, axis=0)
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    dtype = np.result_type(*(p.dtype for p in parts))
    load = lambda: np.concatenate([p if isinstance(p, np.ndarray) else p.load() for p in parts])
    views = [v for p in parts if isinstance(p, StoredTensor) for v in p.views]
    return StoredTensor(shape, dtype, load, views)


def _fuse_qkv(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace each ``X.attn.{query,key,value}.{weight,bias}`` triple by ``X.attn.qkv.*`` with
    rows [q | k | v] (timm's fused projection), where the query entry was."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"(.*\.attn\.)(query|key|value)\.(weight|bias)", key)
        if m is None:
            out[key] = value
        elif m[2] == "query":
            parts = [state.get(f"{m[1]}{p}.{m[3]}") for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise NpvitError(f"{key} has no matching key/value tensors to fuse into qkv")
            shapes = [tuple(p.shape) for p in parts]
            if len(shapes[0]) not in (1, 2) or len(set(shapes)) != 1:
                raise NpvitError(f"{m[1]}{{query,key,value}}.{m[3]} have shapes "
                                 f"{', '.join(map(str, shapes))}; they must be equal (d, d) "
                                 f"weights or (d,) biases to fuse into qkv")
            out[f"{m[1]}qkv.{m[3]}"] = _concatenate(parts)
        elif f"{m[1]}query.{m[3]}" not in state:
            raise NpvitError(f"{key} has no matching query tensor to fuse into qkv")
    return out
