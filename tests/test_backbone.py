"""The dense-prediction backbone (models/backbone.py) against timm: keys, stage outputs and every
gradient at output stride 32 (timm itself) and 16 / 8 (timm with ml-cvnets' dilations)."""
import numpy as np
import pytest

import npvit
from npvit.models.backbone import VARIANTS, MobileViTBackbone

SMALL = ["mobilevit_xxs", "mobilevitv2_050"]


def _images(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).random(shape).astype(dtype)


@pytest.mark.parametrize("name", VARIANTS)
def test_keys_are_the_classifiers_without_head_and_final_conv(name):
    ours = MobileViTBackbone(name).state_dict()
    classifier = npvit.create_model(name).state_dict()
    expected = {k: v.shape for k, v in classifier.items() if k.startswith(("stem.", "stages."))}
    assert {k: v.shape for k, v in ours.items()} == expected
    assert list(ours) == list(expected)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", SMALL)
def test_channels_and_feature_sizes(name, output_stride):
    model = MobileViTBackbone(name, output_stride).eval()
    feats = model(_images((1, 3, 64, 128), dtype=np.float32))
    assert [f.shape[1] for f in feats] == model.channels
    strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    assert [f.shape[2:] for f in feats] == [(64 // s, 128 // s) for s in strides]
    assert all(f.dtype == np.float32 for f in feats)


def test_bad_output_stride_is_one_clear_error():
    with pytest.raises(npvit.errors.NpvitError, match="output stride"):
        MobileViTBackbone("mobilevit_xxs", output_stride=4)


def _twins(torch, name, output_stride, seed):
    from dense_reference import dilate_timm_backbone
    from timm_reference import numpy_state_dict, random_timm_model
    ref = random_timm_model(name, seed=seed, dtype="float64")
    dilate_timm_backbone(ref, output_stride, 1 if name.startswith("mobilevit_") else 2)
    model = MobileViTBackbone(name, output_stride, dtype=np.float64)
    state = {k: v for k, v in numpy_state_dict(ref).items() if k.startswith(("stem.", "stages."))}
    model.load_state_dict(state)
    return ref, model


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("name", SMALL)
def test_stage_outputs_and_every_gradient_equal_timm(torch, name, output_stride):
    # 66x98: odd maps at every level from stride 4 on, so both resize rules run in dilated stages.
    from dense_reference import timm_stage_outputs
    from timm_reference import relative_error
    ref, model = _twins(torch, name, output_stride, seed=output_stride)
    ref.eval(), model.eval()
    x = _images((2, 3, 66, 98), seed=1)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    feats_t = timm_stage_outputs(ref, xt)
    feats = model(x)
    rng = np.random.default_rng(2)
    # Detection reads stages 3 and 4, segmentation 4 (and 3 for the aux head); stage 1 also gets
    # a gradient here so a sum of several levels is checked; stages 0 and 2 get None.
    dys = [None, rng.standard_normal(feats[1].shape), None,
           rng.standard_normal(feats[3].shape), rng.standard_normal(feats[4].shape)]
    for f, f_t in zip(feats, feats_t):
        assert f.shape == tuple(f_t.shape)
        assert relative_error(f, f_t.detach().numpy()) <= 1e-9
    sum((f_t * torch.from_numpy(dy)).sum() for f_t, dy in zip(feats_t, dys) if dy is not None).backward()
    dx = model.backward(dys)
    assert relative_error(dx, xt.grad.numpy()) <= 1e-7
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}
    ours = dict(model.named_parameters())
    assert sorted(ours) == sorted(ref_grads)
    for k, g_ref in ref_grads.items():
        assert relative_error(ours[k].grad, g_ref) <= 1e-7, k


def test_stages_no_gradient_reaches_get_zero_grads_and_float32_matches(torch):
    from dense_reference import timm_stage_outputs
    ref, model = _twins(torch, "mobilevitv2_050", 16, seed=7)
    model.astype(np.float32).eval()
    ref = ref.float().eval()
    x = _images((2, 3, 64, 96), seed=3, dtype=np.float32)
    with torch.no_grad():
        feats_t = timm_stage_outputs(ref, torch.from_numpy(x))
    feats = model(x)
    for f, f_t in zip(feats, feats_t):
        assert f.dtype == np.float32
        assert np.abs(f - f_t.numpy()).max() <= 1e-4
    model.backward([None, None, np.ones_like(feats[2]), None, None])
    for k, p in model.named_parameters():
        if k.startswith(("stages.3.", "stages.4.")):
            assert p.grad is not None and not p.grad.any(), k
        else:
            assert p.grad is not None, k
