"""MobileViT v1 and v2 against timm: parameter counts, logits at many sizes, every gradient."""
import numpy as np
import pytest

import npvit
from npvit.gradcheck import numeric_gradient

ALL = npvit.list_models()
SMALL = ["mobilevit_xxs", "mobilevitv2_050"]

# Published parameter counts of the official ImageNet-1k models (ml-cvnets model zoo / papers).
OFFICIAL_PARAMS = {
    "mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632,
    "mobilevitv2_050": 1_370_593, "mobilevitv2_075": 2_866_009, "mobilevitv2_100": 4_901_841,
    "mobilevitv2_125": 7_478_089, "mobilevitv2_150": 10_594_753, "mobilevitv2_175": 14_251_833,
    "mobilevitv2_200": 18_449_329,
}


def test_list_models_has_the_ten_variants():
    assert sorted(ALL) == sorted(OFFICIAL_PARAMS)


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_is_official(name):
    assert npvit.create_model(name).num_parameters() == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_keys_and_shapes_equal_timm(torch, name):
    import timm
    ref = timm.create_model(name).state_dict()
    ours = npvit.create_model(name).state_dict()
    assert list(ours) == list(ref)
    for k, v in ref.items():
        assert tuple(np.shape(ours[k])) == tuple(v.shape), k


def _images(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random(shape).astype(dtype)


@pytest.mark.parametrize("name", ALL)
def test_eval_logits_equal_timm_at_256_float32(torch, name):
    from timm_reference import npvit_twin, random_timm_model
    ref = random_timm_model(name)
    x = _images((1, 3, 256, 256))
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = npvit_twin(ref, name)(x)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("name", ALL)
def test_eval_logits_equal_timm_at_256_float64(torch, name):
    from timm_reference import npvit_twin, random_timm_model, relative_error
    ref = random_timm_model(name, dtype="float64")
    x = _images((1, 3, 256, 256), dtype=np.float64)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    got = npvit_twin(ref, name, np.float64)(x)
    assert relative_error(got, expected) <= 1e-9


# 224 and 250 make feature maps that are not multiples of the patch size (7x7, 25x25 ...):
# v1 resizes around the transformer, v2 resizes the block input (NOTES.md: timm == ml-cvnets).
@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("hw", [(224, 224), (320, 320), (192, 288), (250, 250), (33, 47)])
def test_eval_logits_equal_timm_at_other_sizes(torch, name, hw):
    from timm_reference import npvit_twin, random_timm_model, relative_error
    ref = random_timm_model(name, seed=3, dtype="float64")
    x = _images((2, 3) + hw, seed=1, dtype=np.float64)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    assert relative_error(npvit_twin(ref, name, np.float64)(x), expected) <= 1e-9


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_of_input_and_every_parameter_equal_timm(torch, name, mode):
    from timm_reference import npvit_twin, random_timm_model, relative_error
    ref = random_timm_model(name, seed=5, dtype="float64")
    model = npvit_twin(ref, name, np.float64)
    ref.train(mode == "train")
    model.train(mode == "train")
    x = _images((2, 3, 96, 128), seed=2, dtype=np.float64)   # 3x4 at output stride 32: resizes
    g = np.random.default_rng(3).standard_normal((2, 1000))

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits_t = ref(xt)
    (logits_t * torch.from_numpy(g)).sum().backward()

    logits = model(x)
    assert relative_error(logits, logits_t.detach().numpy()) <= 1e-9
    dx = model.backward(g)
    assert relative_error(dx, xt.grad.numpy()) <= 1e-7
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    ours = dict(model.named_parameters())
    assert sorted(ours) == sorted(ref_grads)
    # In train mode some gradients are exactly zero in exact arithmetic: a per-channel constant
    # (e.g. a BN bias) that reaches a training-mode BatchNorm only through convolutions is
    # removed again by that BatchNorm's batch mean. Both sides are then rounding noise, so for
    # those the property checked is "both vanish" at the scale of the whole gradient.
    scale = max(np.abs(g).max() for g in ref_grads.values())
    for k, g_ref in ref_grads.items():
        if np.abs(g_ref).max() <= 1e-12 * scale:
            assert np.abs(ours[k].grad).max() <= 1e-12 * scale, k
        else:
            assert relative_error(ours[k].grad, g_ref) <= 1e-7, k
    if mode == "train":   # the running statistics moved exactly as PyTorch's did
        ref_sd = ref.state_dict()
        for k, v in model.state_dict().items():
            if "running" in k:
                assert relative_error(v, ref_sd[k].numpy()) <= 1e-9, k


@pytest.mark.parametrize("name", SMALL)
def test_finite_difference_spot_check_through_the_whole_network(name):
    model = npvit.create_model(name, dtype=np.float64, seed=0).eval()
    x = _images((1, 3, 64, 64), seed=4, dtype=np.float64)
    g = np.random.default_rng(5).standard_normal((1, 1000))
    model.zero_grad()
    model(x)
    model.backward(g)
    params = dict(model.named_parameters())
    picks = [k for k in params if k.startswith("stem.conv")] + \
            [k for k in params if "transformer.0.attn" in k][:2] + ["head.fc.bias"]
    for k in picks:
        p = params[k]
        # h = 1e-5: central differences' rounding noise is ~eps |g . logits| / h (about 1e-8
        # absolute at h = 1e-6 through the whole network, the size of atol), their truncation
        # error ~h^2; 1e-5 keeps both near 1e-9
        num, idx = numeric_gradient(lambda: model(x), p.data, g, h=1e-5, max_coords=5)
        np.testing.assert_allclose(p.grad.reshape(-1)[idx], num, rtol=1e-5, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("name", SMALL)
def test_an_image_gets_the_same_logits_alone_and_in_a_batch(name):
    model = npvit.create_model(name, dtype=np.float64, seed=1).eval()
    batch = _images((3, 3, 96, 96), seed=6, dtype=np.float64)
    together = model(batch)
    for i in range(3):
        np.testing.assert_allclose(model(batch[i:i + 1])[0], together[i], rtol=1e-12, atol=1e-12)


def test_forward_features_gives_the_five_output_strides():
    model = npvit.create_model("mobilevitv2_050").eval()
    feats = model.forward_features(_images((1, 3, 256, 192)))
    assert sorted(feats) == [2, 4, 8, 16, 32]
    for s, f in feats.items():
        assert f.shape[2:] == (256 // s, 192 // s)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((1, 3, 31, 64), np.float32), "at least 32"),
    (np.zeros((1, 1, 64, 64), np.float32), "shape"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN"),
])
def test_bad_inputs_raise_value_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        npvit.create_model("mobilevit_xxs")(bad)


def test_pretrained_with_another_class_count_keeps_the_backbone_and_a_fresh_head(tmp_path):
    source = npvit.create_model("mobilevit_xxs", seed=0)
    path = tmp_path / "weights.npz"
    np.savez(path, **source.state_dict())
    same = npvit.create_model("mobilevit_xxs", pretrained=str(path))
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(same.state_dict()[k], v, err_msg=k)
    other = npvit.create_model("mobilevit_xxs", pretrained=str(path), num_classes=7)
    assert other.head.fc.weight.shape == (7, 320)
    for k, v in source.state_dict().items():
        if not k.startswith("head.fc."):
            np.testing.assert_array_equal(other.state_dict()[k], v, err_msg=k)


def test_a_fine_tuned_checkpoint_with_its_own_class_count_loads_whole(tmp_path):
    tuned = npvit.create_model("mobilevitv2_050", num_classes=7, seed=2)
    path = tmp_path / "tuned.npz"
    np.savez(path, **tuned.state_dict())
    again = npvit.create_model("mobilevitv2_050", num_classes=7, pretrained=str(path))
    for k, v in tuned.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)
