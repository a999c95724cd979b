"""The inference fast paths give the same numbers as the plain path they replace.

* ``F.fold_batchnorm``: conv with the folded weights == conv followed by eval-mode BatchNorm;
* ``ConvNormAct`` in eval under ``no_grad()`` (folded) == eval with gradients on (conv, BN);
* whole models: ``no_grad()`` inference == the plain eval forward;
* in-place SiLU, softmax and batch norm == their out-of-place versions (and the backward from
  the in-place cache is the same);
* multi-head attention with ``need_weights=False`` (the weights normalised after the product
  with v) == the plain path that normalises them first;
* ``npvit.set_num_threads(2)`` (images of a batch in a thread pool, BLAS on one thread each) ==
  one thread, bit for bit, for a model's batch and for ``npvit predict --threads``.
Bound: relative to the output's scale, 1e-10 in float64 and 1e-5 in float32.
"""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit
import npvit.functional as F
from npvit.nn import ConvNormAct, no_grad

DTYPES = st.sampled_from([np.float32, np.float64])
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def assert_same(got, expected, dtype):
    assert got.dtype == expected.dtype == dtype
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got.astype(np.float64) - expected).max()) <= TOLERANCE[dtype] * scale


def random_batchnorm(rng, c, dtype):
    """gamma, beta, running mean and variance, none of them an identity."""
    return (rng.uniform(0.5, 1.5, c).astype(dtype), rng.normal(0, 0.2, c).astype(dtype),
            rng.normal(0, 0.2, c).astype(dtype), rng.uniform(0.5, 1.5, c).astype(dtype))


@st.composite
def conv_bn_cases(draw):
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, c_in, c_out = 1, draw(st.integers(1, 5)), draw(st.integers(1, 5))
    elif kind == "grouped":
        groups = 2
        c_in, c_out = 2 * draw(st.integers(1, 3)), 2 * draw(st.integers(1, 3))
    else:
        groups = c_in = c_out = draw(st.integers(1, 6))
    k = draw(st.sampled_from([1, 3]))
    return dict(n=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out, groups=groups, k=k,
                dilation=draw(st.sampled_from([1, 1, 2, 6])),
                stride=draw(st.integers(1, 2)), hw=(draw(st.integers(3, 9)), draw(st.integers(3, 9))),
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)))


@given(conv_bn_cases(), DTYPES)
def test_folded_conv_equals_conv_then_eval_batchnorm(case, dtype):
    rng = np.random.default_rng(case["seed"])
    c_in, c_out, g, k = case["c_in"], case["c_out"], case["groups"], case["k"]
    x = rng.standard_normal((case["n"], c_in, *case["hw"])).astype(dtype)
    w = rng.standard_normal((c_out, c_in // g, k, k)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if case["bias"] else None
    gamma, beta, mean, var = random_batchnorm(rng, c_out, dtype)
    d = case["dilation"]
    conv, _ = F.conv2d_forward(x, w, b, case["stride"], d * (k // 2), g, d)
    expected, _ = F.batchnorm2d_forward(conv, gamma, beta, mean, var, training=False)
    w_folded, b_folded = F.fold_batchnorm(w, b, gamma, beta, mean, var)
    assert w_folded.dtype == b_folded.dtype == dtype
    got, _ = F.conv2d_forward(x, w_folded, b_folded, case["stride"], d * (k // 2), g, d)
    assert_same(got, expected, dtype)


@given(conv_bn_cases(), DTYPES, st.sampled_from([True, False, "relu"]))
def test_conv_norm_act_inference_path_equals_the_plain_eval_path(case, dtype, act):
    rng = np.random.default_rng(case["seed"])
    layer = ConvNormAct(case["c_in"], case["c_out"], case["k"], case["stride"], case["groups"],
                        act=act, dilation=case["dilation"], dtype=dtype)
    bn = layer.bn
    bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var = random_batchnorm(
        rng, case["c_out"], dtype)
    layer.eval()
    x = rng.standard_normal((case["n"], case["c_in"], *case["hw"])).astype(dtype)
    plain = layer.forward(x)                     # gradients enabled: conv, then BatchNorm
    with no_grad():
        folded = layer.forward(x)                # BatchNorm folded into the conv
    assert_same(folded, plain, dtype)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_inference_under_no_grad_equals_the_plain_eval_forward(name, dtype):
    model = npvit.create_model(name, dtype=dtype)
    rng = np.random.default_rng(0)
    for m in model.modules():                    # random BN statistics, so folding does something
        if isinstance(m, npvit.nn.BatchNorm2d):
            m.weight.data, m.bias.data, m.running_mean, m.running_var = random_batchnorm(
                rng, m.weight.shape[0], dtype)
    model.eval()
    x = rng.random((2, 3, 64, 64)).astype(dtype)
    plain = model(x)
    with no_grad():
        fast = model(x)
    assert_same(fast, plain, dtype)


@given(st.integers(0, 2**32 - 1), DTYPES)
def test_in_place_silu_equals_out_of_place_forward_and_backward(seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 4, 5)) * 30).astype(dtype)      # reaches exp's overflow range
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, cache = F.silu_forward(x)
    dx = F.silu_backward(dy, cache)
    x_owned = x.copy()
    y_in_place, cache_in_place = F.silu_forward(x_owned, inplace=True)
    assert y_in_place is x_owned                 # written over its input, no new array
    assert_same(y_in_place, y, dtype)
    assert_same(F.silu_backward(dy, cache_in_place), dx, dtype)


@given(st.integers(0, 2**32 - 1), st.booleans(), DTYPES)
def test_in_place_batchnorm_equals_out_of_place_forward_and_backward(seed, training, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 4, 5, 2)) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta, mean, var = random_batchnorm(rng, 4, dtype)
    y, cache = F.batchnorm2d_forward(x, gamma, beta, mean.copy(), var.copy(), training)
    grads = F.batchnorm2d_backward(dy, cache)
    x_owned = x.copy()
    y_in_place, cache_in_place = F.batchnorm2d_forward(x_owned, gamma, beta, mean.copy(),
                                                       var.copy(), training, inplace=True)
    assert cache_in_place[0] is x_owned          # centred over its input, no new array
    assert_same(y_in_place, y, dtype)
    for got, expected in zip(F.batchnorm2d_backward(dy, cache_in_place), grads):
        assert_same(got, expected, dtype)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2), DTYPES)
def test_in_place_softmax_equals_out_of_place(seed, axis, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 4, 5)) * 10).astype(dtype)
    y, _ = F.softmax_forward(x, axis)
    x_owned = x.copy()
    y_in_place, _ = F.softmax_forward(x_owned, axis, inplace=True)
    assert y_in_place is x_owned
    assert_same(y_in_place, y, dtype)


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.sampled_from([1, 2, 4]), DTYPES)
def test_attention_without_weights_equals_the_plain_path(seed, tokens, heads, dtype):
    rng = np.random.default_rng(seed)
    d = 4 * heads
    x = (rng.standard_normal((2, tokens, d)) * 3).astype(dtype)   # scores of +-tens: the shift matters
    params = [rng.standard_normal(shape).astype(dtype)
              for shape in ((3 * d, d), (3 * d,), (d, d), (d,))]
    plain, plain_cache = F.multi_head_attention_forward(x, *params, heads)
    fast, fast_cache = F.multi_head_attention_forward(x, *params, heads, need_weights=False)
    assert fast_cache["attention"] is None and plain_cache["attention"].shape == (2, heads, tokens, tokens)
    assert_same(fast, plain, dtype)


def test_a_batch_on_two_threads_equals_one_thread(restore_threads):
    model = npvit.create_model("mobilevitv2_050").eval()
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    with no_grad():
        assert npvit.set_num_threads(1) == 1
        one = model(x)
        assert npvit.set_num_threads(2) == npvit.get_num_threads() == 2
        two = model(x)
    assert np.array_equal(one, two)


def test_predict_with_two_threads_prints_what_one_thread_prints(tmp_path, capsys, restore_threads):
    from PIL import Image
    from npvit.cli import main
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(paths[-1])
    (tmp_path / "bad.png").write_text("not an image")
    paths.insert(1, str(tmp_path / "bad.png"))
    outputs = []
    for threads in ("1", "2"):
        args = ["predict", *paths, "--size", "32", "--topk", "2", "--json", "--threads", threads]
        assert main(args) == 1                    # one unusable image: exit code 1, others done
        out, err = capsys.readouterr()
        assert err.count("npvit: error:") == 1 and "bad.png" in err
        outputs.append([json.loads(line) for line in out.splitlines()])
    assert [r["image"] for r in outputs[0]] == [paths[0], paths[2], paths[3]]
    assert outputs[0] == outputs[1]


@given(st.integers(0, 2**32 - 1), st.integers(1, 70), DTYPES)
def test_norm_means_as_matrix_vector_products_equal_np_mean(seed, width, dtype):
    """Layer and group norm take their last-axis means as x @ (1/D): the same standardisation as
    np.mean's (offset and scaled inputs, so the centring matters)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 3, width)) * 5 + 3).astype(dtype)
    gamma, beta = rng.standard_normal(width).astype(dtype), rng.standard_normal(width).astype(dtype)
    mean = x.mean(axis=-1, keepdims=True)
    plain_hat = (x - mean) / np.sqrt(np.square(x - mean).mean(axis=-1, keepdims=True) + 1e-5)
    y, _ = F.layernorm_forward(x, gamma, beta)
    assert_same(y, plain_hat * gamma + beta, dtype)
    xg = x.reshape(2, 3, width, 1)                # 3 channels, one group over (C, width)
    flat = xg.reshape(2, -1)
    m = flat.mean(axis=-1, keepdims=True)
    plain_g = ((flat - m) / np.sqrt(np.square(flat - m).mean(axis=-1, keepdims=True) + 1e-5))
    gamma_c, beta_c = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    y_g, _ = F.groupnorm_forward(xg, 1, gamma_c, beta_c)
    assert_same(y_g, plain_g.reshape(xg.shape) * gamma_c.reshape(1, 3, 1, 1)
                + beta_c.reshape(1, 3, 1, 1), dtype)


def test_no_grad_applies_to_its_own_thread_only():
    """Threads of npvit.set_num_threads enter and leave no_grad at different times: one
    thread's block must not turn gradients off (or back on) in another."""
    import threading
    from npvit.nn import is_grad_enabled
    seen = []
    with no_grad():
        worker = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        worker.start()
        worker.join()
        assert not is_grad_enabled()
    assert seen == [True] and is_grad_enabled()


def test_eval_with_two_threads_reports_what_one_thread_reports(imagenet_folder, capsys,
                                                               restore_threads):
    """Decoding in the pool ahead of the forwards (and the forwards' images in the pool) changes
    nothing: same accuracy, same skipped image, same JSON."""
    from npvit.cli import main
    folder, weights = imagenet_folder
    (folder / "n01440764_bad.png").write_text("not an image")
    outputs = []
    for threads in ("1", "2"):
        assert main(["eval", str(folder), "--weights", str(weights), "--size", "32",
                     "--batch-size", "4", "--json", "--threads", threads]) == 1   # one skipped
        out, err = capsys.readouterr()
        assert err.count("npvit: error:") == 1 and "n01440764_bad.png" in err
        result = json.loads(out)
        assert result.pop("threads") == int(threads) and result.pop("images_per_second") > 0
        outputs.append(result)
    assert outputs[0] == outputs[1] and outputs[0]["images"] == 6
