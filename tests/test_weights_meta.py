"""Model files that describe themselves (npvit/weights/meta.py): written atomically, read back
exactly, never mistaken for a weight, and every malformed description is one clear error."""
import json
import zipfile

import numpy as np
import pytest

from npvit.errors import NpvitError
from npvit.weights import (META_KEY, model_meta, read_checkpoint, read_model_meta,
                           write_model_npz)
from npvit.weights import meta as meta_module

STATE = {"head.fc.weight": np.arange(6, dtype=np.float32).reshape(3, 2),
         "head.fc.bias": np.zeros(3, np.float32), "bn.num_batches_tracked": np.array(7)}
META = model_meta("mobilevit_xxs", ["cat", "dog", "eel"], 96, "cvnets-v1")


def test_round_trip_keeps_weights_and_meta_apart(tmp_path):
    path = write_model_npz(tmp_path / "run" / "model.npz", STATE, META)
    assert read_model_meta(path) == META
    state = read_checkpoint(path)
    assert set(state) == set(STATE)               # npvit_meta is not a weight
    for k in STATE:
        np.testing.assert_array_equal(state[k], STATE[k])
        assert state[k].dtype == STATE[k].dtype
    # a plain .npz: readable everywhere, no pickle anywhere
    with np.load(path, allow_pickle=False) as npz:
        assert json.loads(str(npz[META_KEY])) == META
    assert [p.name for p in path.parent.iterdir()] == ["model.npz"]


def test_files_without_meta_give_none(tmp_path):
    np.savez(tmp_path / "plain.npz", **STATE)
    assert read_model_meta(tmp_path / "plain.npz") is None
    with zipfile.ZipFile(tmp_path / "torch.pt", "w") as z:   # a torch.save zip
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    assert read_model_meta(tmp_path / "torch.pt") is None
    (tmp_path / "w.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    assert read_model_meta(tmp_path / "w.safetensors") is None


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "format 2"),
    ({"task": "detection"}, "task"),
    ({"classes": ["a", "b"]}, "num_classes is 3"),
    ({"classes": ["a", "a", "b"]}, "not unique"),
    ({"classes": ["a", "b\nnpvit: fake line", "c"]}, "control characters"),
    ({"input_size": "96"}, "'input_size'"),
    ({"model": None}, "'model'"),
    ({"num_classes": True}, "'num_classes'"),
])
def test_malformed_meta_is_one_line(tmp_path, change, message):
    arrays = {**STATE, META_KEY: np.array(json.dumps({**META, **change}))}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(NpvitError, match=message) as e:
        read_model_meta(tmp_path / "bad.npz")
    assert "\n" not in str(e.value)
    with pytest.raises(NpvitError, match=message):
        write_model_npz(tmp_path / "out.npz", STATE, {**META, **change})


@pytest.mark.parametrize("entry, message", [
    (np.array("{not json"), "not valid JSON"),
    (np.array(["{}"]), "0-d unicode"),
    (np.array(3.0), "0-d unicode"),
    (np.array(json.dumps([1, 2])), "JSON object"),
])
def test_meta_that_is_not_a_json_object_is_one_line(tmp_path, entry, message):
    np.savez(tmp_path / "bad.npz", **STATE, **{META_KEY: entry})
    with pytest.raises(NpvitError, match=message):
        read_model_meta(tmp_path / "bad.npz")


def test_writer_refuses_what_would_not_read_back(tmp_path):
    with pytest.raises(NpvitError, match="3 outputs but the meta names 2"):
        write_model_npz(tmp_path / "m.npz", STATE, model_meta("mobilevit_xxs", "ab", 96, "hf"))
    with pytest.raises(NpvitError, match="reserved"):
        write_model_npz(tmp_path / "m.npz", {**STATE, META_KEY: np.zeros(1)}, META)
    with pytest.raises(NpvitError, match="not a numeric array"):
        write_model_npz(tmp_path / "m.npz", {**STATE, "x": np.array([{}], dtype=object)}, META)
    assert not list(tmp_path.iterdir())


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_model_npz(tmp_path / "model.npz", STATE, META)
    before = path.read_bytes()

    def savez_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(meta_module.np, "savez", savez_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_model_npz(path, STATE, {**META, "input_size": 128})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.npz"]
