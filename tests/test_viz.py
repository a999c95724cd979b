"""npvit.viz and `npvit scoremap`: captured attention is the layers' own (recomputed in NumPy and
in PyTorch/timm), capturing leaves the logits bit for bit, the pixel shuffle puts every score at
its pixel, and the command draws the expected figure or fails with one clear line."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import npvit
from npvit import viz
from npvit.cli import main
from npvit.viz import figures

V1, V2 = "mobilevit_xxs", "mobilevitv2_050"


def _images(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def _softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _record_inputs(model):
    """Wrap every attention module's forward (test-only) so its input is kept, in call order."""
    inputs = []
    for _, block in viz.attention_blocks(model):
        for layer in block.transformer:
            attn = layer.attn
            forward = attn.forward

            def recording(x, attn=attn, forward=forward):
                inputs.append((attn, x))
                return forward(x)
            attn.forward = recording
    return inputs


# --- capture ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(64, 64), (70, 90)])
def test_context_scores_equal_those_recomputed_from_the_layer_input(hw):
    model = npvit.create_model(V2, dtype=np.float64, seed=1).eval()
    inputs = _record_inputs(model)
    with viz.capture(model) as records:
        model(_images((2, 3, *hw), dtype=np.float64))
    assert [r.kind for r in records] == ["context_scores"] * 9          # depths 2 + 4 + 3
    assert [r.stride for r in records] == [8] * 2 + [16] * 4 + [32] * 3
    assert len(inputs) == len(records)
    for r, (attn, x) in zip(records, inputs):
        b, d, p, n = x.shape
        assert r.weights.shape == (b, 1, p, n) and r.grid[0] * r.grid[1] == n
        # c_s = softmax over N of the query row of the 1x1 qkv projection (row 0)
        w, bias = attn.qkv_proj.weight.data[0, :, 0, 0], attn.qkv_proj.bias.data[0]
        expected = _softmax(np.einsum("c,bcpn->bpn", w, x)[:, None] + bias)
        np.testing.assert_allclose(r.weights, expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(r.weights.sum(axis=-1), 1.0, rtol=1e-12)


def test_attention_weights_equal_those_recomputed_from_the_layer_input():
    model = npvit.create_model(V1, dtype=np.float64, seed=1).eval()
    inputs = _record_inputs(model)
    with viz.capture(model) as records:
        model(_images((1, 3, 64, 80), dtype=np.float64))
    assert [r.kind for r in records] == ["attention"] * 9
    for r, (attn, x) in zip(records, inputs):
        bp, n, d = x.shape
        h = attn.num_heads
        qkv = x @ attn.qkv.weight.data.T + attn.qkv.bias.data                # (B*P, N, 3d)
        q, k = (qkv[..., i * d:(i + 1) * d].reshape(bp, n, h, d // h).transpose(0, 2, 1, 3)
                for i in range(2))
        expected = _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h))
        assert r.weights.shape == (bp, h, n, n) and r.grid[0] * r.grid[1] == n
        np.testing.assert_allclose(r.weights, expected, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(r.weights.sum(axis=-1), 1.0, rtol=1e-12)


def _timm_context_scores(torch, ref, x):
    """Every LinearSelfAttention's context scores in timm, from a forward hook on its qkv_proj."""
    from timm.models.mobilevit import LinearSelfAttention
    scores, hooks = [], []
    for m in ref.modules():
        if isinstance(m, LinearSelfAttention):
            hooks.append(m.qkv_proj.register_forward_hook(
                lambda mod, inp, out: scores.append(torch.softmax(out[:, :1], dim=-1).numpy())))
    with torch.no_grad():
        logits = ref(torch.from_numpy(x)).numpy()
    for hook in hooks:
        hook.remove()
    return logits, scores


def _timm_attention(torch, ref, x):
    """Every v1 Attention's weights in timm, from a forward hook on its fused qkv Linear."""
    from timm.layers import Attention
    weights, hooks = [], []

    def hook(mod, inp, out, attn):
        bp, n, _ = out.shape
        q, k, _ = out.reshape(bp, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        weights.append(torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1).numpy())
    for m in ref.modules():
        if isinstance(m, Attention):
            hooks.append(m.qkv.register_forward_hook(lambda mod, i, o, m=m: hook(mod, i, o, m)))
    with torch.no_grad():
        ref(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return weights


@pytest.mark.parametrize("hw", [(64, 64), (66, 98)])
def test_context_scores_equal_timm(torch, hw):
    from timm_reference import npvit_twin, random_timm_model
    ref = random_timm_model(V2, dtype="float64")
    x = _images((1, 3, *hw), dtype=np.float64)
    _, expected = _timm_context_scores(torch, ref, x)
    _, records = viz.run_with_capture(npvit_twin(ref, V2, dtype=np.float64), x)
    assert len(records) == len(expected) == 9
    for r, e in zip(records, expected):
        assert r.weights.shape == e.shape
        np.testing.assert_allclose(r.weights, e, rtol=1e-9, atol=1e-12)


def test_attention_weights_equal_timm(torch):
    from timm_reference import npvit_twin, random_timm_model
    ref = random_timm_model(V1, dtype="float64")
    x = _images((1, 3, 64, 96), dtype=np.float64)
    expected = _timm_attention(torch, ref, x)
    _, records = viz.run_with_capture(npvit_twin(ref, V1, dtype=np.float64), x)
    assert len(records) == len(expected) == 9
    for r, e in zip(records, expected):
        assert r.weights.shape == e.shape
        np.testing.assert_allclose(r.weights, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", [V1, V2])
def test_capturing_does_not_change_the_logits(name):
    model = npvit.create_model(name, seed=0).eval()
    x = _images((1, 3, 72, 64))
    plain = model(x)
    with viz.capture(model) as records:
        captured = model(x)
    assert len(records) == 9 and np.array_equal(plain, captured)
    # run_with_capture runs eval under no_grad (an inference path of its own): compare with the
    # same forward without capturing
    with npvit.nn.no_grad():
        plain = model(x)
    logits, _ = viz.run_with_capture(model, x)
    assert np.array_equal(plain, logits)


def test_capture_refuses_to_report_without_a_forward():
    model = npvit.create_model(V2, seed=0).eval()
    model(_images((1, 3, 64, 64)))        # earlier weights must not leak into the records
    with pytest.raises(npvit.errors.NpvitError, match="no forward"):
        with viz.capture(model):
            pass


def test_run_with_capture_restores_training_mode():
    model = npvit.create_model(V2, seed=0)
    assert model.training
    viz.run_with_capture(model, _images((1, 3, 64, 64)))
    assert all(m.training for m in model.modules())


# --- the map steps ------------------------------------------------------------------------------
def test_pixel_shuffle_on_a_hand_built_example():
    # One row of two patches; scores[p, n] for pixel positions p = (0,0), (0,1), (1,0), (1,1).
    scores = np.array([[1, 2],
                       [3, 4],
                       [5, 6],
                       [7, 8]], dtype=float)[None]          # (1, P=4, N=2)
    expected = np.array([[1, 3, 2, 4],                       # patch 0: top row (p0, p1), patch 1
                         [5, 7, 6, 8]], dtype=float)         # bottom row (p2, p3)
    assert np.array_equal(viz.pixel_shuffle(scores, (1, 2))[0], expected)


@given(n_h=st.integers(1, 6), n_w=st.integers(1, 6))
def test_pixel_shuffle_puts_every_position_at_its_pixel(n_h, n_w):
    # Build scores from a known map M: position (a, b) of patch (i, j) reads M[2i + a, 2j + b].
    known = np.arange(4 * n_h * n_w, dtype=float).reshape(2 * n_h, 2 * n_w)
    scores = np.empty((1, 4, n_h * n_w))
    for a in range(2):
        for b in range(2):
            for i in range(n_h):
                for j in range(n_w):
                    scores[0, 2 * a + b, i * n_w + j] = known[2 * i + a, 2 * j + b]
    assert np.array_equal(viz.pixel_shuffle(scores, (n_h, n_w))[0], known)


def test_pixel_shuffle_equals_torch_pixel_shuffle(torch, rng):
    # ml-cvnets: (1, 1, P, N) -> (1, P, h, w) -> F.pixel_shuffle(., 2)
    scores = rng.random((1, 4, 3 * 5))
    expected = torch.nn.functional.pixel_shuffle(torch.from_numpy(scores.reshape(1, 4, 3, 5)), 2)
    assert np.array_equal(viz.pixel_shuffle(scores, (3, 5)), expected[0].numpy())


def test_pixel_shuffle_rejects_a_grid_that_does_not_fit():
    with pytest.raises(npvit.errors.NpvitError, match="do not fit"):
        viz.pixel_shuffle(np.zeros((1, 4, 6)), (2, 2))


@given(h=st.integers(1, 9), w=st.integers(1, 9), out_h=st.integers(1, 40), out_w=st.integers(1, 40))
def test_upsample_nearest_equals_torch(h, w, out_h, out_w):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(h * 100 + w).random((h, w))
    expected = torch.nn.functional.interpolate(torch.from_numpy(values)[None, None],
                                               size=(out_h, out_w), mode="nearest")[0, 0].numpy()
    assert np.array_equal(viz.upsample_nearest(values, (out_h, out_w)), expected)


def test_min_max_normalise_spans_zero_to_one_and_constant_maps_are_zero(rng):
    m = viz.min_max_normalise(rng.random((5, 7)) * 1e-4 + 3.0)
    assert m.min() == 0.0 and m.max() == 1.0
    assert not viz.min_max_normalise(np.full((3, 3), 0.25)).any()


def test_colorize_is_jet():
    import matplotlib
    rgb = viz.colorize(np.array([[0.0, 0.5, 1.0]]))
    assert rgb.shape == (1, 3, 3)
    assert np.array_equal(rgb, matplotlib.colormaps["jet"](np.array([[0.0, 0.5, 1.0]]))[..., :3])


# --- maps from a model --------------------------------------------------------------------------
def test_context_score_maps_one_per_block_or_per_layer():
    model = npvit.create_model(V2, seed=0)
    x = _images((3, 70, 90))
    maps = viz.context_score_maps(model, x)
    assert [(m.stride, m.layer, m.depth) for m in maps] == [(8, 1, 2), (16, 3, 4), (32, 2, 3)]
    _, records = viz.run_with_capture(model, x[None])
    for m, r in zip(maps, [r for r in records if r.layer == r.depth - 1]):
        assert m.values.shape == r.feature_size
        # each of the 4 pixel positions carries a distribution over the N patches
        assert np.isclose(m.values.sum(), 4.0)
        assert m.heatmap.shape == (70, 90) and m.heatmap.min() == 0.0 and m.heatmap.max() == 1.0
        np.testing.assert_array_equal(m.values, viz.pixel_shuffle(r.weights[0], r.grid)[0])
    assert len(viz.context_score_maps(model, x, per_layer=True)) == 9


def test_attention_maps_follow_the_query_patch():
    model = npvit.create_model(V1, seed=0)
    x = _images((1, 3, 64, 64))
    maps = viz.attention_maps(model, x, point=(5.0, 60.0))       # top-right corner
    _, records = viz.run_with_capture(model, x)
    last = [r for r in records if r.layer == r.depth - 1]
    for m, r in zip(maps, last):
        n_h, n_w = r.grid
        assert m.query == (0, n_w - 1)
        row = r.weights[:, :, m.query[1], :]                      # (P, h, N): query patch n = col
        np.testing.assert_array_equal(m.heads, viz.pixel_shuffle(row.transpose(1, 0, 2), r.grid))
        assert np.allclose(m.heads.sum(axis=(1, 2)), 4.0)         # 4 softmax rows per head
        assert np.isclose(m.received.sum(), 4.0)
        assert m.head_heatmaps.shape == (4, 64, 64) and m.received_heatmap.shape == (64, 64)


def test_maps_refuse_the_other_version():
    with pytest.raises(npvit.errors.NpvitError, match="attention_maps"):
        viz.context_score_maps(npvit.create_model(V1), _images((3, 64, 64)))
    with pytest.raises(npvit.errors.NpvitError, match="context_score_maps"):
        viz.attention_maps(npvit.create_model(V2), _images((3, 64, 64)))
    with pytest.raises(npvit.errors.NpvitError, match="one image"):
        viz.context_score_maps(npvit.create_model(V2), _images((2, 3, 64, 64)))


def test_query_patch_outside_the_input_is_refused():
    with pytest.raises(npvit.errors.NpvitError, match="outside"):
        viz.query_patch((64.0, 3.0), (64, 64), (4, 4))


# --- npvit scoremap -----------------------------------------------------------------------------
@pytest.fixture
def photo(tmp_path):
    """A noise photo with odd sides (no white pixels, so panels stand out from the background)."""
    pixels = np.random.default_rng(0).integers(20, 200, (75, 61, 3), dtype=np.uint8)
    path = tmp_path / "odd photo.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NPVIT_HOME", str(cache))
    return cache


def _panels_along(png, y):
    """Runs of non-white columns (at least 20 px wide) along row y of the PNG."""
    row = np.asarray(Image.open(png).convert("RGB"))[y]
    ink = (row < 245).any(axis=1).astype(int)
    edges = np.flatnonzero(np.diff(np.r_[0, ink, 0]))
    starts, ends = edges[::2], edges[1::2]
    return int(((ends - starts) >= 20).sum())


def _panel_row_centres(rows, cols):
    """Pixel y of the centre of each panel row, from the layout `figures._grid` asks for
    (header on top, 1% margin at the bottom, a title's height between rows)."""
    _, height = figures.figure_inches(rows, cols)
    top, bottom = figures.HEADER_INCHES, 0.01 * height
    hspace = figures.TITLE_INCHES / figures.PANEL_INCHES
    cell = (height - top - bottom) / (rows + hspace * (rows - 1))
    return [round((top + r * cell * (1 + hspace) + cell / 2) * figures.DPI) for r in range(rows)]


@pytest.mark.parametrize("size", ["64", "67"])
def test_scoremap_v2_writes_the_four_panel_figure(photo, empty_cache, tmp_path, capsys, size):
    out = tmp_path / "v2.png"
    assert main(["scoremap", str(photo), "--model", V2, "--size", size, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "RANDOM weights" in captured.err
    assert "4 panels" in captured.out
    assert Image.open(out).size == figures.figure_pixels(1, 4)
    assert [_panels_along(out, y) for y in _panel_row_centres(1, 4)] == [4]


def test_scoremap_v2_every_layer_and_overlay(photo, empty_cache, tmp_path, capsys):
    out = tmp_path / "all.png"
    assert main(["scoremap", str(photo), "--model", V2, "--size", "64", "--layer", "all",
                 "--overlay", "-o", str(out)]) == 0
    assert "12 panels" in capsys.readouterr().out          # 3 rows x (input + 2, 4, 3 layers)
    assert Image.open(out).size == figures.figure_pixels(3, 5)


def test_scoremap_v1_writes_the_attention_figure(photo, empty_cache, tmp_path, capsys):
    out = tmp_path / "v1.png"
    assert main(["scoremap", str(photo), "--model", V1, "--size", "65", "--query", "10", "50",
                 "-o", str(out)]) == 0
    assert "18 panels" in capsys.readouterr().out          # 3 rows x (input, 4 heads, received)
    assert Image.open(out).size == figures.figure_pixels(3, 6)
    assert [_panels_along(out, y) for y in _panel_row_centres(3, 6)] == [6, 6, 6]


def test_scoremap_uses_weights_when_given_or_cached(photo, empty_cache, tmp_path, capsys):
    from npvit.weights import save_npz
    state = npvit.create_model(V2, seed=3).state_dict()
    weights = save_npz(state, tmp_path / "mine.npz")
    assert main(["scoremap", str(photo), "--model", V2, "--size", "64", "--weights", str(weights),
                 "-o", str(tmp_path / "a.png")]) == 0
    save_npz(state, empty_cache / f"{V2}.npz")              # what `npvit download` leaves
    assert main(["scoremap", str(photo), "--model", V2, "--size", "64",
                 "-o", str(tmp_path / "b.png")]) == 0
    assert capsys.readouterr().err == ""                    # no random-weights notice
    below_title = round(figures.HEADER_INCHES * figures.DPI)   # the titles name the weights
    a, b = (np.asarray(Image.open(tmp_path / f))[below_title:] for f in ("a.png", "b.png"))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("argv, message", [
    (["--model", V2, "--query", "5", "5"], "--query .* MobileViTv2"),
    (["--model", "mobilevit_huge"], "unknown model"),
    (["--model", V1, "--size", "64", "--query", "64", "0"], "outside"),
    (["--model", V1, "--weights", "missing.npz"], "missing.npz"),
    (["--model", V2, "--size", "16"], "16"),
])
def test_scoremap_fails_with_one_clear_line(photo, empty_cache, tmp_path, capsys, argv, message):
    import re
    assert main(["scoremap", str(photo), "-o", str(tmp_path / "x.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npvit: error: ") and err.count("\n") == 1, err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_scoremap_names_a_missing_image_before_anything_else(empty_cache, tmp_path, capsys):
    assert main(["scoremap", str(tmp_path / "nope.jpg"), "--model", V2]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("npvit: error: ") and "nope.jpg" in err


def test_plain_inference_keeps_no_attention_maps_but_capture_does():
    # Memory: under no_grad a v1 model must not hold every layer's (B*P, h, N, N) map.
    model = npvit.create_model("mobilevit_xxs", seed=0).eval()
    x = np.random.default_rng(0).random((1, 3, 64, 64)).astype(np.float32)
    layers = [layer for _, block in viz.attention_blocks(model) for layer in block.transformer]
    with npvit.nn.no_grad():
        model(x)
    assert all(layer.attn.last_attention is None for layer in layers)
    with npvit.nn.no_grad(), viz.capture(model) as records:
        model(x)
    assert len(records) == len(layers) and all(not layer.attn.record for layer in layers)


def test_capture_sees_every_image_of_a_batch():
    # Inference normally cuts a batch into pieces; while capturing, the layers must see all.
    model = npvit.create_model("mobilevitv2_050", seed=0).eval()
    x = np.random.default_rng(1).random((3, 3, 64, 64)).astype(np.float32)
    with npvit.nn.no_grad(), viz.capture(model) as records:
        model(x)
    assert all(r.weights.shape[0] == 3 for r in records)
    assert model.inference_chunk_bytes == npvit.models.network.BLOCK_BYTES   # restored
