"""The segmentation releases (models/segmentation.py) against PyTorch: v1 DeepLabv3 against Hugging
Face's MobileViTForSemanticSegmentation (== ml-cvnets for v1, NOTES.md 4), v2 DeepLabv3 and
PSPNet against the torch.nn reference of tests/dense_reference.py (HF's v2 drops a dilation, so it
is no oracle). Logits float32 <= 1e-4 absolute, float64 <= 1e-9 relative; dx and every parameter
gradient float64 <= 1e-7 relative. Inputs 66x98 (odd maps at every dilated level), batch 2.
Also: parameter counts and key layouts against ../shared/reference/dense where present, and
predict()'s resize rules against ml-cvnets' evaluation written in torch."""
import csv
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit.models.segmentation import RELEASES
from npvit.weights.keymap import to_npvit_names

HERE = Path(__file__).resolve()
# ../shared beside the repository (from a worktree one level deeper: ../../shared)
DENSE = next((p / "shared" / "reference" / "dense" for p in HERE.parents[2:4]
              if (p / "shared" / "reference" / "dense").is_dir()), None)
needs_reference = pytest.mark.skipif(DENSE is None, reason="../shared/reference/dense is absent")

X_SHAPE = (2, 3, 66, 98)


def _x(dtype=np.float64, seed=1):
    return np.random.default_rng(seed).random(X_SHAPE).astype(dtype)


def _relative(a, b):
    from timm_reference import relative_error
    return relative_error(a, b)


# --- the registry, counts and key layouts --------------------------------------------------------
def test_every_release_is_listed_and_built_with_its_class_count():
    names = npvit.list_models(task="segmentation")
    assert names == list(RELEASES) and len(names) == 26
    assert set(names).isdisjoint(npvit.list_models())
    assert npvit.list_models("all") == [name for task in ("classification", "segmentation",
                                                          "detection")
                                         for name in npvit.list_models(task)]
    file_names = [npvit.weights.official(name).file_name for name in names]
    assert len(set(file_names)) == len(names)          # VOC and ADE20k files share URL names
    for name in names:
        entry = npvit.weights.official(name)
        assert entry.task == "segmentation" and entry.miou is not None
        assert entry.url.startswith("https://docs-assets.developer.apple.com/ml-research/models/")
        assert entry.url.endswith(entry.file_name.removeprefix("pascalvoc-").removeprefix("ade20k-"))


def _counts():
    return {r["model"]: r for r in csv.DictReader((DENSE / "counts.tsv").open(), delimiter="\t")}


def _counts_key(release):
    if release.code == "v0.1":
        return f"voc_deeplabv3_{release.backbone}_v01"
    if release.backbone == "mobilevit_s":
        return "voc_deeplabv3_mobilevitv1_s_v02"
    width = {"050": "0.5", "075": "0.75", "100": "1.0", "125": "1.25", "150": "1.5", "175": "1.75",
             "200": "2.0"}[release.backbone[-3:]]
    return f"{release.dataset}_{release.head}_mobilevitv2_{width}"


@needs_reference
@pytest.mark.parametrize("name", list(RELEASES))
def test_parameter_counts_url_and_miou_equal_the_zoo(name):
    row = _counts()[_counts_key(RELEASES[name])]
    model = npvit.create_model(name)
    aux = model.aux_head.num_parameters() if model.aux_head is not None else 0
    assert model.num_parameters() == int(row["params_total"])
    assert aux == int(row["params_aux_head"])
    assert model.num_parameters() - aux == int(row["params_without_aux"])
    assert len(model.state_dict()) == int(row["state_dict_entries"])
    entry = npvit.weights.official(name)
    assert entry.url == row["checkpoint_url"]
    assert entry.params == int(row["params_without_aux"]) and entry.miou == float(row["zoo_value"])


LISTINGS = {"seg_voc_deeplabv3_mobilevit_xxs_v01": "deeplabv3_mobilevit_xxs_voc",
            "seg_voc_deeplabv3_mobilevit_xs_v01": "deeplabv3_mobilevit_xs_voc",
            "seg_voc_deeplabv3_mobilevit_s_v01": "deeplabv3_mobilevit_s_voc",
            "seg_voc_deeplabv3_mobilevitv1_s_v02": "deeplabv3_mobilevit_s_voc_os8",
            "seg_voc_deeplabv3_mobilevitv2_050": "deeplabv3_mobilevitv2_050_voc",
            "seg_voc_deeplabv3_mobilevitv2_100": "deeplabv3_mobilevitv2_100_voc",
            "seg_voc_pspnet_mobilevitv2_050": "pspnet_mobilevitv2_050_voc",
            "seg_ade20k_deeplabv3_mobilevitv2_050": "deeplabv3_mobilevitv2_050_ade20k",
            "seg_ade20k_deeplabv3_mobilevitv2_100": "deeplabv3_mobilevitv2_100_ade20k",
            "seg_ade20k_pspnet_mobilevitv2_050": "pspnet_mobilevitv2_050_ade20k"}


@needs_reference
@pytest.mark.parametrize("listing", list(LISTINGS))
def test_every_official_key_converts_to_a_model_key_of_the_same_shape(listing):
    rows = [line.split("\t") for line in (DENSE / "cvnets" / f"{listing}.tsv").read_text().splitlines()[1:]]
    state = {key: np.zeros(() if shape == "-" else tuple(map(int, shape.split("x"))))
             for key, shape, *_ in rows}
    layout, renamed = to_npvit_names(state)
    assert layout == "cvnets-seg"
    expected = {k: np.shape(v) for k, v in npvit.create_model(LISTINGS[listing]).state_dict().items()}
    assert {k: np.shape(v) for k, v in renamed.items()} == expected


# --- v1 DeepLabv3 against Hugging Face ------------------------------------------------------------
HF_V1 = {"mobilevit_xxs": dict(hidden_sizes=(64, 80, 96), neck_hidden_sizes=(16, 16, 24, 48, 64, 80, 320),
                               expand_ratio=2.0),
         "mobilevit_s": dict(hidden_sizes=(144, 192, 240),
                             neck_hidden_sizes=(16, 32, 64, 96, 128, 160, 640), expand_ratio=4.0)}


def _hf_segmenter(torch, release, dtype):
    transformers = pytest.importorskip("transformers")
    from timm_reference import randomise_norms
    config = transformers.MobileViTConfig(
        **HF_V1[release.backbone], output_stride=release.output_stride, num_labels=21,
        aspp_out_channels=release.aspp_channels, atrous_rates=list(release.rates))
    torch.manual_seed(0)
    model = transformers.MobileViTForSemanticSegmentation(config)
    randomise_norms(model, 1)
    return model.to(getattr(torch, dtype)).eval()


def _npvit_from(torch_state: dict, name, dtype):
    layout, state = to_npvit_names({k: v.detach().numpy() for k, v in torch_state.items()})
    model = npvit.create_model(name, dtype=dtype)
    own = model.state_dict()
    model.load_state_dict({**{k: own[k] for k in own if k.startswith("aux_head.")}, **state})
    return layout, model.eval()


@pytest.mark.parametrize("name", ["deeplabv3_mobilevit_xxs_voc", "deeplabv3_mobilevit_s_voc_os8"])
def test_v1_deeplabv3_logits_equal_hugging_face(torch, name):
    release = RELEASES[name]
    for dtype, np_dtype in (("float64", np.float64), ("float32", np.float32)):
        hf = _hf_segmenter(torch, release, dtype)
        layout, model = _npvit_from(hf.state_dict(), name, np_dtype)
        assert layout == "hf-seg"
        x = _x(np_dtype)
        with torch.no_grad():
            expected = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
        got = model(x)
        assert got.shape == expected.shape and got.dtype == np_dtype
        if dtype == "float64":
            assert _relative(got, expected) <= 1e-9
        else:
            assert np.abs(got - expected).max() <= 1e-4


def test_v1_deeplabv3_gradients_equal_hugging_face(torch):
    name = "deeplabv3_mobilevit_xxs_voc"
    hf = _hf_segmenter(torch, RELEASES[name], "float64")
    _, model = _npvit_from(hf.state_dict(), name, np.float64)
    x = _x()
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits_t = hf(pixel_values=xt).logits
    g = np.random.default_rng(3).standard_normal(tuple(logits_t.shape))
    (logits_t * torch.from_numpy(g)).sum().backward()
    model(x)
    dx = model.backward(g)
    assert _relative(dx, xt.grad.numpy()) <= 1e-7
    _, expected = to_npvit_names({k: p.grad.numpy() for k, p in hf.named_parameters()}, "hf-seg")
    ours = dict(model.named_parameters())
    assert set(expected) == {k for k in ours if not k.startswith("aux_head.")}
    for k, g_ref in expected.items():
        assert _relative(ours[k].grad, g_ref) <= 1e-7, k


# --- v2 DeepLabv3 and PSPNet against the torch.nn reference ----------------------------------------
V2 = ["deeplabv3_mobilevitv2_050_voc", "pspnet_mobilevitv2_050_voc", "deeplabv3_mobilevitv2_050_ade20k",
      "pspnet_mobilevitv2_050_ade20k"]


def _reference_twins(name, dtype, seed=0):
    from dense_reference import official_state_dict, reference_segmenter
    ref = reference_segmenter(RELEASES[name], seed=seed, dtype=dtype)
    layout, model = _npvit_from(official_state_dict(ref), name,
                                np.float64 if dtype == "float64" else np.float32)
    assert layout == "cvnets-seg"
    return ref, model


@pytest.mark.parametrize("name", V2 + ["deeplabv3_mobilevit_xxs_voc"])
def test_logits_and_aux_logits_equal_the_reference(torch, name):
    for dtype in ("float64", "float32"):
        ref, model = _reference_twins(name, dtype)
        x = _x(model.dtype)
        with torch.no_grad():
            logits_t, aux_t = ref(torch.from_numpy(x))
        got = model(x)
        if dtype == "float64":
            assert _relative(got, logits_t.numpy()) <= 1e-9
        else:
            assert got.dtype == np.float32 and np.abs(got - logits_t.numpy()).max() <= 1e-4
        if aux_t is not None:
            _, aux = model.forward_with_aux(x)
            assert _relative(aux, aux_t.numpy()) <= (1e-9 if dtype == "float64" else 1e-5)


def _check_gradients(torch, ref, model, x, with_aux):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    logits_t, aux_t = ref(xt)
    rng = np.random.default_rng(4)
    g = rng.standard_normal(tuple(logits_t.shape))
    loss = (logits_t * torch.from_numpy(g)).sum()
    if with_aux:
        g_aux = rng.standard_normal(tuple(aux_t.shape))
        loss = loss + (aux_t * torch.from_numpy(g_aux)).sum()
        logits, aux = model.forward_with_aux(x)
        assert _relative(aux, aux_t.detach().numpy()) <= 1e-9
    else:
        g_aux, logits = None, model(x)
    assert _relative(logits, logits_t.detach().numpy()) <= 1e-9
    loss.backward()
    dx = model.backward(g, g_aux)
    assert _relative(dx, xt.grad.numpy()) <= 1e-7
    from dense_reference import official_state_dict
    grads = {k: p.grad.numpy() for k, p in ref.named_parameters() if p.grad is not None}
    _, expected = to_npvit_names(official_state_dict(ref, grads), "cvnets-seg")
    ours = dict(model.named_parameters())
    # zero-in-exact-arithmetic gradients (train-mode BN removes per-channel constants) are judged
    # against the largest gradient, as the classification tests do
    scale = max(np.abs(v).max() for v in expected.values())
    for k, g_ref in expected.items():
        if np.abs(g_ref).max() <= 1e-12 * scale:
            assert np.abs(ours[k].grad).max() <= 1e-12 * scale, k
        else:
            assert _relative(ours[k].grad, g_ref) <= 1e-7, k
    if not with_aux and model.aux_head is not None:
        assert all(p.grad is None for p in model.aux_head.parameters())
    return expected


@pytest.mark.parametrize("name", ["deeplabv3_mobilevitv2_050_voc", "pspnet_mobilevitv2_050_ade20k"])
def test_gradients_with_the_aux_head_equal_the_reference(torch, name):
    ref, model = _reference_twins(name, "float64", seed=5)
    expected = _check_gradients(torch, ref, model, _x(), with_aux=True)
    assert any(k.startswith("aux_head.") for k in expected)


def test_training_mode_gradients_and_statistics_equal_the_reference(torch):
    # Train mode: BatchNorm on batch statistics. Dropout is switched off on both sides (p = 0)
    # so the comparison is deterministic; everything else is the training computation.
    ref, model = _reference_twins("pspnet_mobilevitv2_050_voc", "float64", seed=6)
    ref.train()
    model.train()
    for m in ref.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.p = 0.0
    for m in model.modules():
        if isinstance(m, npvit.nn.Dropout):
            m.p = 0.0
    _check_gradients(torch, ref, model, _x(seed=7), with_aux=True)
    ours = model.state_dict()
    from dense_reference import official_state_dict
    _, theirs = to_npvit_names({k: v.numpy() for k, v in official_state_dict(ref).items()}, "cvnets-seg")
    for k, v in theirs.items():
        if "running" in k:
            assert _relative(ours[k], v) <= 1e-9, k


def test_backward_without_aux_leaves_the_aux_head_without_gradients(torch):
    ref, model = _reference_twins("deeplabv3_mobilevitv2_050_ade20k", "float64", seed=8)
    _check_gradients(torch, ref, model, _x(seed=9), with_aux=False)


# --- predict: ml-cvnets' evaluation resizes ------------------------------------------------------
def _torch_eval_masks(torch, model, x, size):
    """ml-cvnets' eval path around the network, in torch (engine/eval_segmentation.py)."""
    Fn = torch.nn.functional
    stride, v01 = model.output_stride, model.release.code == "v0.1"
    h, w = x.shape[2:]
    t = torch.from_numpy(x)
    fitted = (h // stride * stride, w // stride * stride)
    if fitted != (h, w):
        t = Fn.interpolate(t, size=fitted, mode="bilinear", align_corners=not v01)
    with npvit.nn.no_grad():
        logits = torch.from_numpy(model(t.numpy()))
    if v01:
        logits = Fn.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)
        logits = Fn.interpolate(logits, size=size, mode="nearest")
    else:
        logits = Fn.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return logits.argmax(1).numpy()


@pytest.mark.parametrize("name", ["deeplabv3_mobilevit_xxs_voc", "pspnet_mobilevitv2_050_ade20k"])
def test_predict_resizes_as_the_release_evaluates(torch, name):
    model = npvit.create_model(name, dtype=np.float64, seed=0).eval()
    x = _x(seed=11)[:1]
    for size in [(66, 98), (83, 131), (40, 37)]:
        masks = model.predict(x, size)
        assert masks.shape == (1, *size) and masks.dtype == np.int64
        np.testing.assert_array_equal(masks, _torch_eval_masks(torch, model, x, size))


def test_blocked_resize_argmax_equals_the_whole_resize():
    from npvit import functional as F
    from npvit.models.segmentation import resized_argmax
    logits = np.random.default_rng(0).standard_normal((2, 5, 7, 9))
    whole = F.resize_bilinear_forward(logits, (150, 40), align_corners=True)[0].argmax(axis=1)
    np.testing.assert_array_equal(resized_argmax(logits, (150, 40), True, rows_per_block=16), whole)


def test_predict_refuses_training_mode_and_bad_inputs():
    model = npvit.create_model("pspnet_mobilevitv2_050_voc")
    with pytest.raises(npvit.errors.NpvitError, match="training mode"):
        model.predict(_x(np.float32))
    with pytest.raises(npvit.errors.NpvitError, match="at least 32"):
        model.eval().predict(np.zeros((1, 3, 20, 64), np.float32))
    with pytest.raises(npvit.errors.NpvitError, match="drop_rate"):
        npvit.create_model("pspnet_mobilevitv2_050_voc", drop_rate=0.2)
