"""Key maps: npvit's rename rules (ml-cvnets / Hugging Face -> timm) against the key listings
dumped from ml-cvnets and transformers (../shared/reference, where present) and against the
independent inverse maps in tests/official_layouts.py; model detection and strict checking."""
from pathlib import Path

import numpy as np
import pytest

from npvit.errors import NpvitError
from npvit.models import create_model, list_models
from npvit.weights import check_state, detect_layout, detect_model, to_npvit_names
from official_layouts import cvnets_state_dict, hf_keys, hf_state_dict

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
MODELS = list_models()


def _tsv(kind: str, name: str) -> list[list[str]]:
    path = REFERENCE / kind / f"{name}.tsv"
    if not path.is_file():
        pytest.skip(f"{path} absent (key listings dumped from ml-cvnets / transformers)")
    return [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()[1:]]


def _shape(text: str) -> tuple:
    return () if text == "-" else tuple(int(n) for n in text.split("x"))


def _zeros_like_model(name: str) -> dict:
    return {k: np.zeros(np.shape(v), np.asarray(v).dtype)
            for k, v in create_model(name).state_dict().items()}


@pytest.mark.parametrize("name", MODELS)
def test_cvnets_rules_match_dumped_listing(name):
    rows = _tsv("cvnets", name)
    state = {src: np.zeros(_shape(shape), np.float32) for src, _, shape in rows}
    layout, renamed = to_npvit_names(state)
    assert layout == "cvnets"
    assert list(renamed) == [timm for _, timm, _ in rows]
    # the test's own inverse map agrees with the dump too
    assert list(cvnets_state_dict({timm: 0 for _, timm, _ in rows})) == [src for src, _, _ in rows]
    check_state(renamed, name)                   # keys and shapes fit the npvit model


@pytest.mark.parametrize("name", MODELS)
def test_hf_rules_match_dumped_listing(name):
    rows = _tsv("hf", name)
    state = {hf: np.zeros(_shape(shape), np.float32) for hf, _, shape, _ in rows}
    layout, renamed = to_npvit_names(state)
    assert layout == "hf"
    assert set(renamed) == {timm for _, timm, _, _ in rows}
    check_state(renamed, name)
    # inverse map: every HF key and the rows of the fused tensor it carries
    expected = {hf: (timm, rows_) for hf, timm, _, rows_ in rows}
    v1 = name.startswith("mobilevit_")
    for _, timm, shape, _ in rows:
        for hf, third in hf_keys(timm, v1):
            assert expected[hf][0] == timm
            if third is not None:
                d = _shape(shape)[0]
                assert expected[hf][1] == f"rows {third * d}:{(third + 1) * d}"


def test_hf_query_key_value_are_fused_in_order(rng):
    """v1 HF attention: qkv rows are [query | key | value] (timm and ml-cvnets order)."""
    state = _zeros_like_model("mobilevit_xxs")
    key = "stages.2.1.transformer.0.attn.qkv.weight"
    state[key] = rng.standard_normal(state[key].shape).astype(np.float32)
    hf = hf_state_dict(state)
    prefix = "mobilevit.encoder.layer.2.transformer.layer.0.attention.attention."
    d = state[key].shape[1]
    np.testing.assert_array_equal(hf[prefix + "key.weight"], state[key][d:2 * d])
    _, back = to_npvit_names(hf)
    np.testing.assert_array_equal(back[key], state[key])
    assert list(back) == list(state)             # same keys, same (timm) order


@pytest.mark.parametrize("name", MODELS)
def test_detect_model_from_keys_and_shapes(name):
    state = _zeros_like_model(name)
    assert detect_model(state) == name
    assert detect_model(to_npvit_names(cvnets_state_dict(state))[1]) == name


def test_layouts_are_recognised():
    state = _zeros_like_model("mobilevitv2_050")
    assert detect_layout(state) == "timm"
    assert detect_layout(cvnets_state_dict(state)) == "cvnets"
    assert detect_layout(hf_state_dict(state)) == "hf"


def test_other_architecture_is_named_in_one_line():
    resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7)), "bn1.weight": np.zeros(64),
                   "layer1.0.conv1.weight": np.zeros((64, 64, 3, 3)), "fc.weight": np.zeros((1000, 512))}
    with pytest.raises(NpvitError, match=r"match no MobileViT layout.*conv1\.weight") as e:
        to_npvit_names(resnet_like)
    assert "\n" not in str(e.value)


def test_wrong_shape_missing_and_unexpected_are_listed_together():
    state = _zeros_like_model("mobilevit_xs")
    state["head.fc.weight"] = np.zeros((1000, 380), np.float32)   # wrong input width
    del state["stages.3.1.norm.bias"]
    state["stages.3.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(NpvitError) as e:
        check_state(state, "mobilevit_xs", source="x.pt")
    message = str(e.value)
    assert "\n" not in message
    assert "x.pt does not fit mobilevit_xs" in message
    assert "1 mis-shaped: head.fc.weight 1000x380 (model: 1000x384)" in message
    assert "1 missing: stages.3.1.norm.bias" in message
    assert "1 unexpected: stages.3.1.extra.weight" in message


def test_the_class_count_is_free_but_must_be_consistent():
    state = _zeros_like_model("mobilevit_xs")
    state["head.fc.weight"] = np.zeros((10, 384), np.float32)
    state["head.fc.bias"] = np.zeros(10, np.float32)
    check_state(state, "mobilevit_xs")             # a fine-tuned 10-class head fits
    state["head.fc.bias"] = np.zeros(1000, np.float32)
    with pytest.raises(NpvitError, match="head.fc.bias 1000 .head.fc.weight has 10 rows"):
        check_state(state, "mobilevit_xs")


def test_num_batches_tracked_is_optional():
    state = {k: v for k, v in _zeros_like_model("mobilevitv2_075").items()
             if not k.endswith("num_batches_tracked")}
    check_state(state, "mobilevitv2_075")
    assert detect_model(state) == "mobilevitv2_075"


def test_a_variant_with_one_wrong_tensor_is_still_detected_and_the_tensor_named():
    state = _zeros_like_model("mobilevitv2_125")
    state["stem.conv.weight"] = np.zeros((8, 3, 3, 3), np.float32)
    assert detect_model(state) == "mobilevitv2_125"
    with pytest.raises(NpvitError, match=r"mis-shaped: stem\.conv\.weight 8x3x3x3"):
        check_state(state, "mobilevitv2_125")
