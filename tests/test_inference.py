"""npvit.inference: where load_model takes its weights from, classify against timm + torch's
softmax, top_k's ordering, and the one-line errors for bad arrays and bad weights."""
import dataclasses

import numpy as np
import pytest

import npvit
from npvit.errors import NpvitError
from npvit.inference import (DEFAULT_MODEL, RANDOM_WEIGHTS, classify, load_model, pipeline_for,
                             predict_logits, top_k)
from npvit.weights import OFFICIAL, save_npz
from official_layouts import cvnets_state_dict
from timm_reference import numpy_state_dict, random_timm_model

V1, V2 = "mobilevit_xxs", "mobilevitv2_050"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NPVIT_HOME", str(cache))
    return cache


@pytest.fixture
def timm_v2(torch):
    return random_timm_model(V2, seed=5)


def test_classify_equals_timm_and_torch_softmax(torch, timm_v2, tmp_path, empty_cache):
    weights = save_npz(numpy_state_dict(timm_v2), tmp_path / "w.npz")
    model, source = load_model(V2, weights)
    assert source == f"weights {weights} (timm/npvit layout)" and not model.training
    x = np.random.default_rng(0).random((3, 3, 64, 80), dtype=np.float32)
    with torch.no_grad():
        logits = timm_v2(torch.from_numpy(x))
        expected = torch.softmax(logits.double(), dim=1).numpy()
    assert np.abs(predict_logits(model, x) - logits.numpy()).max() <= 1e-4
    probs = classify(model, x)
    assert probs.dtype == np.float32 and probs.shape == (3, 1000)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert np.abs(probs - expected).max() <= 1e-6


def test_official_layout_file_is_detected_without_a_model_name(torch, tmp_path, empty_cache):
    timm_model = random_timm_model(V1, seed=6)
    torch.save(cvnets_state_dict(timm_model.state_dict()), tmp_path / "mobilevit_xxs.pt")
    model, source = load_model(weights=tmp_path / "mobilevit_xxs.pt")
    assert model.name == V1 and "ml-cvnets layout" in source
    for key, value in numpy_state_dict(timm_model).items():
        assert np.array_equal(model.state_dict()[key], value), key


def test_a_checkpoint_of_another_variant_is_refused_in_one_line(tmp_path, empty_cache):
    weights = save_npz(npvit.create_model(V1).state_dict(), tmp_path / "xxs.npz")
    with pytest.raises(NpvitError) as info:
        load_model(V2, weights)
    assert "holds mobilevit_xxs weights, not mobilevitv2_050" in str(info.value) and "\n" not in str(info.value)


def test_official_weights_come_from_the_cache(empty_cache):
    state = npvit.create_model(V2, seed=1).state_dict()
    save_npz(state, empty_cache / f"{V2}.npz")
    model, source = load_model(V2)
    assert source == f"official weights ({empty_cache / f'{V2}.npz'})"
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_cached_official_checkpoint_is_used_without_network(torch, empty_cache, monkeypatch):
    timm_model = random_timm_model(V1, seed=7)
    empty_cache.mkdir()
    torch.save(cvnets_state_dict(timm_model.state_dict()), empty_cache / OFFICIAL[V1].file_name)
    unreachable = dataclasses.replace(OFFICIAL[V1], url="http://127.0.0.1:9/nothing.pt")
    monkeypatch.setitem(OFFICIAL, V1, unreachable)
    model, source = load_model(V1, download=True)
    assert source.startswith("official weights") and source.endswith("mobilevit_xxs.pt)")
    assert np.array_equal(model.state_dict()["head.fc.weight"],
                          numpy_state_dict(timm_model)["head.fc.weight"])


def test_without_weights_it_says_how_to_get_them_or_falls_back_to_random(empty_cache):
    with pytest.raises(NpvitError) as info:
        load_model(V2)
    message = str(info.value)
    assert f"npvit download {V2}" in message and "--weights" in message and "\n" not in message
    a, source = load_model(fallback_random=True, seed=3)
    b, _ = load_model(fallback_random=True, seed=3)
    assert a.name == DEFAULT_MODEL and source == RANDOM_WEIGHTS
    assert all(np.array_equal(b.state_dict()[k], v) for k, v in a.state_dict().items())


def test_download_offline_is_one_line_naming_the_url(empty_cache, monkeypatch):
    unreachable = dataclasses.replace(OFFICIAL[V2], url="http://127.0.0.1:9/mobilevitv2-0.5.pt")
    monkeypatch.setitem(OFFICIAL, V2, unreachable)
    with pytest.raises(NpvitError) as info:
        load_model(V2, download=True, fallback_random=True)
    assert unreachable.url in str(info.value) and "\n" not in str(info.value)


def test_unknown_model_is_refused(empty_cache):
    with pytest.raises(NpvitError, match="unknown model 'mobilevit_huge'"):
        load_model("mobilevit_huge", fallback_random=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_classify_refuses_nan_and_inf_with_a_value_error(empty_cache, bad):
    model, _ = load_model(V2, fallback_random=True)
    x = np.full((1, 3, 32, 32), 0.5, np.float32)
    x[0, 1, 7, 9] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        classify(model, x)


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 64, 64), (1, 3, 31, 64)])
def test_classify_refuses_arrays_of_the_wrong_shape(empty_cache, shape):
    model, _ = load_model(V2, fallback_random=True)
    with pytest.raises(ValueError):
        classify(model, np.zeros(shape, np.float32))


def test_classify_refuses_a_model_in_training_mode(empty_cache):
    model, _ = load_model(V2, fallback_random=True)
    with pytest.raises(NpvitError, match="model.eval"):
        classify(model.train(), np.zeros((2, 3, 32, 32), np.float32))


def test_top_k_is_sorted_and_names_the_classes(rng):
    probs = rng.dirichlet(np.ones(1000)).astype(np.float32)
    rows = top_k(probs, 5)
    order = np.argsort(-probs)
    classes = npvit.data.imagenet_classes()
    assert [r.index for r in rows] == list(order[:5]) and [r.rank for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.wnid == classes[r.index].wnid and r.label == classes[r.index].name
               and r.prob == float(probs[r.index]) for r in rows)
    assert len(top_k(probs, 5000)) == 1000


def test_top_k_orders_ties_by_class_index():
    probs = np.zeros(1000, np.float32)
    probs[[900, 12, 400]] = 0.25
    assert [r.index for r in top_k(probs, 4)] == [12, 400, 900, 0]


@pytest.mark.parametrize("probs, k", [(np.zeros((2, 1000)), 1), (np.zeros(10), 1), (np.zeros(1000), 0)])
def test_top_k_refuses_bad_arguments(probs, k):
    with pytest.raises(NpvitError):
        top_k(probs, k)


def test_pipeline_for_the_preprocess_option():
    assert pipeline_for(V1) == pipeline_for(V1, None) == "cvnets-v1"
    assert pipeline_for(V2, "cvnets") == "cvnets-v2"
    assert pipeline_for(V2, "hf") == "hf" and pipeline_for(V1, "cvnets-v2") == "cvnets-v2"
    with pytest.raises(NpvitError, match="unknown preprocessing"):
        pipeline_for(V2, "imagenet")
