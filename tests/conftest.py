"""Shared test set-up: hypothesis profiles and the PyTorch reference (skipped when absent)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI gets few examples to stay well inside its time, the same ones on every run (derandomize:
# a finite-difference check whose noise meets its tolerance on one rare draw cannot make a CI
# run fail by chance); `HYPOTHESIS_PROFILE=thorough` locally.
settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def torch():
    """The torch module, or skip the test where the PyTorch reference is not installed."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def no_proxy(monkeypatch):
    """Talk to 127.0.0.1 directly, whatever proxy the environment names."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(no_proxy):
    """A running `local_http.LocalServer`: put bytes in ``server.files[path]``, fetch
    ``server.url + path``; ``server.requests`` lists every GET."""
    from local_http import LocalServer
    s = LocalServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def restore_threads():
    """npvit's commands call npvit.set_num_threads (--threads, default every CPU), which changes
    process-wide state: after each test, shut its pool, lift its BLAS limit and restore Python's
    switch interval, so every test starts from the library's default (no pool, BLAS as the
    environment set it)."""
    from npvit import threads
    yield
    if threads._pool is not None:
        threads._pool.shutdown()
    if threads._blas_limit is not None:
        threads._blas_limit.restore_original_limits()
    threads._set_switch_interval(pool=False)
    threads._pool = threads._blas_limit = threads._num_threads = None


@pytest.fixture
def imagenet_folder(tmp_path, monkeypatch):
    """(folder of 6 PNGs named by two ImageNet wnids, random mobilevitv2_050 weights), with
    NPVIT_HOME in tmp_path: for `npvit eval` runs."""
    from PIL import Image
    import npvit
    from npvit.weights import save_npz
    monkeypatch.setenv("NPVIT_HOME", str(tmp_path / "cache"))
    weights = save_npz(npvit.create_model("mobilevitv2_050", seed=0).state_dict(), tmp_path / "w.npz")
    rng = np.random.default_rng(5)
    folder = tmp_path / "val"
    folder.mkdir()
    for i, wnid in enumerate(["n01440764", "n01443537"] * 3):
        Image.fromarray((rng.random((36, 40, 3)) * 255).astype(np.uint8)).save(
            folder / f"{wnid}_{i}.png")
    return folder, weights
