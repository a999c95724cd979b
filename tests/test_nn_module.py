"""npvit.nn.Module and the basic layers: state_dict naming and order (PyTorch's), strict
loading, train/eval, gradient accumulation, zero_grad and no_grad; and a small network of
every basic layer against the same network in torch.nn, forward and backward."""
import copy
from collections import OrderedDict

import numpy as np
import pytest

from npvit import nn
from npvit.errors import NpvitError
from op_reference import assert_close


def ours_net(dtype=np.float32):
    """Every basic layer once; the attribute names give the state_dict keys."""
    return nn.Sequential(
        nn.ConvNormAct(3, 8, 3, stride=2, dtype=dtype),                  # 0.conv, 0.bn
        nn.Conv2d(8, 8, 3, padding=1, groups=8, dtype=dtype),            # 1: depthwise
        nn.GroupNorm(2, 8, dtype=dtype),                                 # 2
        nn.GELU(),                                                       # 3
        nn.Conv2d(8, 6, 1, bias=False, dtype=dtype),                     # 4: pointwise
        nn.BatchNorm2d(6, dtype=dtype),                                  # 5
        nn.ReLU(),                                                       # 6
        nn.Dropout(0.0),                                                 # 7
        nn.GlobalAvgPool(),                                              # 8
        nn.LayerNorm(6, dtype=dtype),                                    # 9
        nn.Linear(6, 5, dtype=dtype),                                    # 10
    )


def torch_net(torch):
    tnn = torch.nn

    class GlobalAvgPool(tnn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    # Same structure as ours_net: timm's ConvNormAct is conv / bn (/ act) too. (Layer 4 has no
    # bias: before a training-mode BatchNorm its gradient is 0 up to rounding, nothing to compare.)
    conv_norm_act = tnn.Sequential(OrderedDict(
        conv=tnn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), bn=tnn.BatchNorm2d(8),
        act=tnn.SiLU()))
    return tnn.Sequential(
        conv_norm_act, tnn.Conv2d(8, 8, 3, padding=1, groups=8), tnn.GroupNorm(2, 8), tnn.GELU(),
        tnn.Conv2d(8, 6, 1, bias=False), tnn.BatchNorm2d(6), tnn.ReLU(), tnn.Dropout(0.0), GlobalAvgPool(),
        tnn.LayerNorm(6), tnn.Linear(6, 5))


def _randomise(torch, net):
    """Non-trivial norm affines and running statistics, so loading them is visible."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith(("weight", "bias")) and t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
    return net


# --- naming and loading from PyTorch ------------------------------------------------------------
def test_state_dict_keys_order_and_shapes_equal_torch(torch):
    ours, ref = ours_net().state_dict(), torch_net(torch).state_dict()
    assert list(ours) == list(ref)
    for k in ref:
        assert ours[k].shape == tuple(ref[k].shape), k
    assert [n for n, _ in ours_net().named_parameters()] == \
        [n for n, _ in torch_net(torch).named_parameters()]
    assert ours_net().num_parameters() == sum(p.numel() for p in torch_net(torch).parameters())


def test_network_of_basic_layers_matches_torch_forward_and_backward(torch):
    """Load torch's weights, then one training step and one eval pass in float64: outputs,
    dL/dx, every parameter gradient and the updated BatchNorm buffers agree to 1e-10."""
    torch.manual_seed(0)
    ref = _randomise(torch, torch_net(torch).double())
    ours = ours_net().astype(np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 9, 8))
    dy = rng.standard_normal((3, 5))
    y = ours(x)
    dx = ours.backward(dy)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    f64 = np.float64
    assert_close(y, yt.detach().numpy(), f64, "train y")
    assert_close(dx, xt.grad.numpy(), f64, "dx")
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, ref_params[name].grad.numpy(), f64, f"grad {name}")
    ref_state = ref.state_dict()
    for name, v in ours.state_dict().items():
        assert_close(v, ref_state[name].numpy(), f64, f"after the step: {name}")

    ours.eval()
    ref.eval()
    x = rng.standard_normal((2, 3, 7, 10))
    assert_close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), f64, "eval y")


def test_state_dict_values_are_arrays_even_after_training():
    net = nn.BatchNorm2d(3)
    net(np.ones((2, 3, 2, 2), np.float32))
    for k, v in net.state_dict().items():
        assert isinstance(v, np.ndarray), (k, type(v))
    assert net.state_dict()["num_batches_tracked"].dtype == np.int64


# --- load_state_dict ----------------------------------------------------------------------------
def _snapshot(module):
    return {k: np.array(v, copy=True) for k, v in module.state_dict().items()}


def _assert_state_equal(module, snapshot):
    state = module.state_dict()
    assert list(state) == list(snapshot)
    for k in snapshot:
        np.testing.assert_array_equal(state[k], snapshot[k], err_msg=k)


def test_strict_load_lists_every_problem_in_one_error_and_loads_nothing():
    net = ours_net()
    before = _snapshot(net)
    sd = {k: np.full(v.shape, 7.0) for k, v in before.items()}   # all valid new values ...
    del sd["2.weight"]                                               # ... one missing,
    sd["10.extra"] = np.zeros(3)                                     # one unexpected,
    sd["4.weight"] = np.zeros((6, 8, 3, 3))                          # one mis-shaped
    with pytest.raises(NpvitError) as err:       # a ValueError the CLI shows as one line
        net.load_state_dict(sd)
    msg = str(err.value)
    for expected in ["missing", "2.weight", "unexpected", "10.extra", "4.weight",
                     "(6, 8, 1, 1)", "(6, 8, 3, 3)"]:
        assert expected in msg, (expected, msg)
    _assert_state_equal(net, before)                # nothing was loaded, not even valid keys


def test_non_strict_load_skips_missing_and_unexpected_but_not_mis_shaped():
    net = ours_net()
    before = _snapshot(net)
    net.load_state_dict({"10.bias": np.arange(5.0), "not.a.key": np.zeros(2)}, strict=False)
    np.testing.assert_array_equal(net.state_dict()["10.bias"], np.arange(5.0))
    np.testing.assert_array_equal(net.state_dict()["10.weight"], before["10.weight"])
    with pytest.raises(ValueError, match="mis-shaped"):
        net.load_state_dict({"10.bias": np.zeros(4)}, strict=False)


def test_load_casts_to_the_model_dtype_and_copies():
    net = ours_net(np.float32)
    sd = {k: np.array(v, dtype=np.float64) for k, v in ours_net(np.float32).state_dict().items()}
    sd = {k: (v + 1 if v.dtype.kind == "f" else v) for k, v in sd.items()}
    net.load_state_dict(sd)
    for k, v in net.state_dict().items():
        expected = np.int64 if k.endswith("num_batches_tracked") else np.float32
        assert v.dtype == expected, k
    sd["10.bias"][:] = 123.0                        # the model holds its own copy
    assert not np.any(net.state_dict()["10.bias"] == 123.0)


def test_files_without_num_batches_tracked_load_strictly():
    net = ours_net()
    sd = {k: v for k, v in _snapshot(net).items() if not k.endswith("num_batches_tracked")}
    net.load_state_dict(sd, strict=True)


# --- modes, gradients, no_grad ------------------------------------------------------------------
def test_train_and_eval_reach_every_module():
    net = ours_net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())


def test_eval_mode_changes_batchnorm_and_dropout_behaviour(rng):
    net = nn.Sequential(nn.BatchNorm2d(2, dtype=np.float64), nn.Dropout(0.5))
    x = rng.standard_normal((4, 2, 3, 3)) * 3 + 1
    net.eval()
    before = _snapshot(net)
    y = net(x)
    _assert_state_equal(net, before)                # eval: running stats untouched ...
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5))   # ... and used (mean 0, var 1); no dropout
    net.train()
    net(x)
    assert int(net.state_dict()["0.num_batches_tracked"]) == 1


def _loss_grads(net, x, dy):
    net(x)
    net.backward(dy)
    return {n: p.grad.copy() for n, p in net.named_parameters()}


def test_gradients_accumulate_over_backward_calls_until_zero_grad(rng):
    net = ours_net(np.float64)
    x, dy = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 5))
    once = _loss_grads(net, x, dy)
    twice = _loss_grads(net, x, dy)                 # no zero_grad in between: sums
    for name in once:
        np.testing.assert_allclose(twice[name], 2 * once[name], rtol=1e-12, atol=1e-15)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    again = _loss_grads(net, x, dy)
    for name in once:
        np.testing.assert_allclose(again[name], once[name], rtol=1e-12, atol=1e-15)
        assert again[name].dtype == np.float64


def test_gradient_dtype_follows_the_parameter(rng):
    net = ours_net(np.float32)
    net(rng.standard_normal((1, 3, 6, 6)).astype(np.float32))
    net.backward(np.ones((1, 5), np.float32))
    assert all(p.grad.dtype == np.float32 for p in net.parameters())


def test_no_grad_keeps_no_caches_and_backward_raises(rng):
    net = ours_net()
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        y = net(x)
        assert all(m._cache is None for m in net.modules())
    assert nn.is_grad_enabled()
    with pytest.raises(RuntimeError, match="no_grad"):
        net.backward(np.ones_like(y))
    net(x)                                          # outside no_grad the caches are back
    net.backward(np.ones_like(y))


def test_no_grad_restores_the_previous_state_after_an_error():
    with pytest.raises(KeyError):
        with nn.no_grad():
            with nn.no_grad():
                pass
            assert not nn.is_grad_enabled()         # nested exit does not re-enable
            raise KeyError("boom")
    assert nn.is_grad_enabled()


def test_backward_needs_its_own_forward(rng):
    layer = nn.Linear(3, 2)
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((1, 2), np.float32))
    layer(rng.standard_normal((1, 3)).astype(np.float32))
    layer.backward(np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError):               # the cache was freed by the first backward
        layer.backward(np.ones((1, 2), np.float32))


def test_astype_casts_floats_and_keeps_the_counter_integer():
    net = ours_net(np.float32).astype(np.float64)
    assert net.dtype == np.float64
    for k, v in net.state_dict().items():
        assert v.dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64), k


def test_deepcopy_gives_an_independent_module():
    net = ours_net()
    twin = copy.deepcopy(net)
    twin.state_dict()["10.bias"][:] = 5.0
    assert not np.any(net.state_dict()["10.bias"] == 5.0)
