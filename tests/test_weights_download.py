"""Download and cache, against an HTTP server on 127.0.0.1 started by the test and serving an
ml-cvnets-layout checkpoint the test wrote (these machines have no internet)."""
import dataclasses
import hashlib
import socket

import numpy as np
import pytest

from npvit.cli import main as npvit_main
from npvit.errors import NpvitError
from npvit.models import create_model
from npvit.weights import OFFICIAL, load_pretrained, pretrained_path
from official_layouts import cvnets_state_dict

NAME = "mobilevit_xxs"


@pytest.fixture
def official_file(torch, tmp_path_factory):
    """(bytes of an ml-cvnets-layout mobilevit_xxs checkpoint, its npvit state dict)."""
    state = create_model(NAME, seed=1).state_dict()
    path = tmp_path_factory.mktemp("official") / "mobilevit_xxs.pt"
    torch.save(cvnets_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}), path)
    return path.read_bytes(), state


def _serve_as_official(monkeypatch, server, body, **changes):
    server.files["/files/mobilevit_xxs.pt"] = body
    entry = dataclasses.replace(OFFICIAL[NAME], url=server.url + "/files/mobilevit_xxs.pt", **changes)
    monkeypatch.setitem(OFFICIAL, NAME, entry)
    return entry


def test_download_verified_then_cache_hit(monkeypatch, server, official_file, tmp_path):
    body, state = official_file
    _serve_as_official(monkeypatch, server, body,
                       sha256=hashlib.sha256(body).hexdigest(), bytes=len(body))
    cache = tmp_path / "cache"
    npz = pretrained_path(NAME, cache, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == ["mobilevit_xxs.npz", "mobilevit_xxs.pt"]
    assert len(server.requests) == 1
    # second call: the converted file is reused, nothing is fetched
    assert pretrained_path(NAME, cache) == npz
    assert len(server.requests) == 1
    # the .npz gone but the download kept: converted again from the cached file, not re-fetched
    npz.unlink()
    loaded = load_pretrained(NAME, True, cache)
    assert len(server.requests) == 1
    assert list(loaded) == list(state)
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])


def test_progress_bar_is_shown(monkeypatch, server, official_file, tmp_path, capsys):
    _serve_as_official(monkeypatch, server, official_file[0])
    pretrained_path(NAME, tmp_path)
    err = capsys.readouterr().err
    assert "mobilevit_xxs.pt" in err and "100%" in err


def test_create_model_pretrained_uses_npvit_home(monkeypatch, server, official_file, tmp_path):
    body, state = official_file
    _serve_as_official(monkeypatch, server, body)
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "home"))
    model = create_model(NAME, pretrained=True)
    assert (tmp_path / "home" / "mobilevit_xxs.npz").is_file()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_cli_download(monkeypatch, server, official_file, tmp_path, capsys):
    _serve_as_official(monkeypatch, server, official_file[0])
    assert npvit_main(["download", NAME, "--dir", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "mobilevit_xxs.npz")


def test_sha256_mismatch_is_rejected_and_nothing_is_cached(monkeypatch, server, official_file, tmp_path):
    _serve_as_official(monkeypatch, server, official_file[0], sha256="ab" * 32)
    with pytest.raises(NpvitError, match=r"sha256 [0-9a-f]{64}, expected (ab){32}; the file was "
                                         r"discarded") as e:
        pretrained_path(NAME, tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_transfer_leaves_no_file(monkeypatch, server, official_file, tmp_path):
    body = official_file[0]
    _serve_as_official(monkeypatch, server, body)
    server.cut_short.add("/files/mobilevit_xxs.pt")
    with pytest.raises(NpvitError, match=rf"interrupted after {len(body) // 2} of {len(body)} bytes"):
        pretrained_path(NAME, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_error_says_what_to_fetch_and_how_to_pass_it(monkeypatch, tmp_path):
    with socket.socket() as s:              # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mobilevit_xxs.pt"
    monkeypatch.setitem(OFFICIAL, NAME, dataclasses.replace(OFFICIAL[NAME], url=url))
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "cache"))
    with pytest.raises(NpvitError) as e:
        create_model(NAME, pretrained=True)
    message = str(e.value)
    assert "\n" not in message
    assert f"could not download {NAME} from {url}" in message
    assert f"curl -L -o mobilevit_xxs.pt {url}" in message
    assert "--weights mobilevit_xxs.pt" in message
    assert "pretrained='mobilevit_xxs.pt'" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_manifest_lists_the_ten_models_with_their_parameter_counts():
    from npvit.models import list_models
    assert list(OFFICIAL) == list_models()
    for name, entry in OFFICIAL.items():
        assert entry.params == create_model(name).num_parameters()
        assert entry.url.startswith("https://docs-assets.developer.apple.com/ml-research/models/")
        assert entry.url.endswith("/" + entry.file_name)


def test_repo_weights_manifest_is_the_package_manifest():
    """weights/manifest.json at the repository root links to the one in the package (the one
    a non-editable install carries)."""
    from pathlib import Path
    import npvit.weights
    packaged = Path(npvit.weights.__file__).with_name("manifest.json")
    at_root = Path(__file__).resolve().parents[1] / "weights" / "manifest.json"
    if not at_root.exists():
        pytest.skip("not running from a checkout")
    assert at_root.read_text() == packaged.read_text()
