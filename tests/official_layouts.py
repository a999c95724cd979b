"""Write a timm-named state dict in the two foreign layouts npvit must read: the official
ml-cvnets checkpoints and the Hugging Face transformers port.

These are the INVERSE maps (timm -> foreign), written here independently of npvit's rename
rules (foreign -> timm) and in another style — one branch per module kind instead of regular
expressions — so that the end-to-end tests check npvit's rules against a second encoding of the
layouts rather than against themselves. test_weights_keymap.py checks both encodings against the
key listings dumped from ml-cvnets and transformers (../shared/reference) where present.
"""
from __future__ import annotations

import numpy as np

TRANSFORMER_DEPTHS = {2: 2, 3: 4, 4: 3}   # timm stage -> layers in its MobileViT block

_IR_CVNETS = {"conv1_1x1": "exp_1x1", "conv2_kxk": "conv_3x3", "conv3_1x1": "red_1x1"}
_IR_HF = {"conv1_1x1": "expand_1x1", "conv2_kxk": "conv_3x3", "conv3_1x1": "reduce_1x1"}


def _is_v1(keys) -> bool:
    return "final_conv.conv.weight" in keys


# --- ml-cvnets ----------------------------------------------------------------------------------
def _cvnets_unit(rest: list[str]) -> str:
    """ConvLayer of ml-cvnets: `block.conv.weight` or `block.norm.<param>`."""
    kind, param = rest
    return f"block.{'conv' if kind == 'conv' else 'norm'}.{param}"


def cvnets_key(key: str, v1: bool) -> str:
    p = key.split(".")
    if p[0] == "stem":
        return "conv_1." + _cvnets_unit(p[1:])
    if p[0] == "final_conv":
        return "conv_1x1_exp." + _cvnets_unit(p[1:])
    if p[0] == "head":
        return ("classifier.fc." if v1 else "classifier.1.") + p[-1]
    stage, unit, rest = int(p[1]), p[2], p[3:]
    layer = f"layer_{stage + 1}.{unit}."
    part = rest[0]
    if part in _IR_CVNETS:
        return layer + f"block.{_IR_CVNETS[part]}." + _cvnets_unit(rest[1:])
    if part == "conv_kxk":
        return layer + ("local_rep.conv_3x3." if v1 else "local_rep.0.") + _cvnets_unit(rest[1:])
    if part == "conv_1x1":
        return layer + ("local_rep.conv_1x1." if v1 else "local_rep.1.") + "block.conv." + rest[1]
    if part == "conv_proj":
        return layer + "conv_proj." + _cvnets_unit(rest[1:])
    if part == "conv_fusion":
        return layer + "fusion." + _cvnets_unit(rest[1:])
    if part == "norm":
        return layer + f"global_rep.{TRANSFORMER_DEPTHS[stage]}.{rest[1]}"
    assert part == "transformer", key
    t, sub = rest[1], ".".join(rest[2:])
    if v1:
        table = {"norm1": "pre_norm_mha.0", "attn.qkv": "pre_norm_mha.1.qkv_proj",
                 "attn.proj": "pre_norm_mha.1.out_proj", "norm2": "pre_norm_ffn.0",
                 "mlp.fc1": "pre_norm_ffn.1", "mlp.fc2": "pre_norm_ffn.4"}
    else:
        table = {"norm1": "pre_norm_attn.0", "attn.qkv_proj": "pre_norm_attn.1.qkv_proj.block.conv",
                 "attn.out_proj": "pre_norm_attn.1.out_proj.block.conv", "norm2": "pre_norm_ffn.0",
                 "mlp.fc1": "pre_norm_ffn.1.block.conv", "mlp.fc2": "pre_norm_ffn.3.block.conv"}
    module, param = sub.rsplit(".", 1)
    return layer + f"global_rep.{t}.{table[module]}.{param}"


def cvnets_state_dict(state: dict) -> dict:
    """timm-named {key: tensor} -> the same tensors under ml-cvnets names, same order."""
    v1 = _is_v1(state)
    return {cvnets_key(k, v1): v for k, v in state.items()}


# --- Hugging Face -------------------------------------------------------------------------------
def _hf_unit(rest: list[str]) -> str:
    kind, param = rest
    return f"{'convolution' if kind == 'conv' else 'normalization'}.{param}"


def hf_keys(key: str, v1: bool) -> list[tuple[str, slice | None]]:
    """[(hf_key, rows of the timm tensor it holds or None for all)] for one timm key."""
    base = "mobilevit." if v1 else "mobilevitv2."
    p = key.split(".")
    if p[0] == "stem":
        return [(base + "conv_stem." + _hf_unit(p[1:]), None)]
    if p[0] == "final_conv":
        return [(base + "conv_1x1_exp." + _hf_unit(p[1:]), None)]
    if p[0] == "head":
        return [("classifier." + p[-1], None)]
    stage, unit, rest = int(p[1]), int(p[2]), p[3:]
    enc = f"{base}encoder.layer.{stage}."
    part = rest[0]
    if part in _IR_HF:
        where = f"layer.{unit}." if stage < 2 else "downsampling_layer."
        return [(enc + where + f"{_IR_HF[part]}." + _hf_unit(rest[1:]), None)]
    if part in ("conv_kxk", "conv_proj", "conv_fusion"):
        name = {"conv_kxk": "conv_kxk", "conv_proj": "conv_projection", "conv_fusion": "fusion"}[part]
        return [(enc + f"{name}." + _hf_unit(rest[1:]), None)]
    if part == "conv_1x1":
        return [(enc + "conv_1x1.convolution." + rest[1], None)]
    if part == "norm":
        return [(enc + "layernorm." + rest[1], None)]
    assert part == "transformer", key
    layer = enc + f"transformer.layer.{rest[1]}."
    module, param = ".".join(rest[2:]).rsplit(".", 1)
    if v1 and module == "attn.qkv":
        return [(layer + f"attention.attention.{n}.{param}", i) for i, n in
                enumerate(("query", "key", "value"))]
    table = ({"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
              "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
             if v1 else
             {"norm1": "layernorm_before", "attn.qkv_proj": "attention.qkv_proj.convolution",
              "attn.out_proj": "attention.out_proj.convolution", "norm2": "layernorm_after",
              "mlp.fc1": "ffn.conv1.convolution", "mlp.fc2": "ffn.conv2.convolution"})
    return [(layer + f"{table[module]}.{param}", None)]


def hf_state_dict(state: dict) -> dict:
    """timm-named {key: tensor} -> HF-named; v1's fused qkv is split into query/key/value
    (each a third of the rows). Arrays or torch tensors both work (row slicing + copy)."""
    v1 = _is_v1(state)
    out = {}
    for k, v in state.items():
        for hf_key, third in hf_keys(k, v1):
            if third is None:
                out[hf_key] = v
            else:
                d = v.shape[0] // 3
                part = v[third * d:(third + 1) * d]
                out[hf_key] = part.clone() if hasattr(part, "clone") else np.array(part)
    return out
