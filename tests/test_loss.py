"""Label-smoothed cross-entropy and smooth L1: forward and backward equal PyTorch's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvit import functional as F
from npvit.errors import NpvitError

torch = pytest.importorskip("torch")


@given(n=st.integers(1, 8), c=st.integers(2, 12), smoothing=st.floats(0.0, 1.0),
       scale=st.sampled_from([0.1, 3.0, 300.0]), seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_equals_pytorch(n, c, smoothing, scale, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * scale          # 300: softmax far in saturation
    targets = rng.integers(0, c, n)

    loss, cache = F.cross_entropy_forward(logits, targets, label_smoothing=smoothing)
    dlogits = F.cross_entropy_backward(cache)

    z = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(z, torch.tensor(targets), label_smoothing=smoothing)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(dlogits, z.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_cross_entropy_is_finite_for_huge_float32_logits():
    # exp(1e4) overflows float32; the max-shifted log-softmax never forms it
    logits = np.array([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]], dtype=np.float32)
    loss, cache = F.cross_entropy_forward(logits, np.array([1, 2]), label_smoothing=0.1)
    dlogits = F.cross_entropy_backward(cache)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert dlogits.dtype == np.float32


def test_gradient_rows_sum_to_zero():
    # p and q are both distributions, so each row of p - q sums to 0
    rng = np.random.default_rng(1)
    _, cache = F.cross_entropy_forward(rng.standard_normal((5, 7)), rng.integers(0, 7, 5), 0.2)
    np.testing.assert_allclose(F.cross_entropy_backward(cache).sum(axis=1), 0.0, atol=1e-15)


@pytest.mark.parametrize("targets, match", [
    (np.array([0, 3]), r"\[0, 3\)"),
    (np.array([0, -1]), r"\[0, 3\)"),
    (np.array([0.0, 1.0]), "integer"),
    (np.array([0, 1, 2]), r"\(N, C\)"),
])
def test_bad_targets_give_one_clear_error(targets, match):
    with pytest.raises(NpvitError, match=match):
        F.cross_entropy_forward(np.zeros((2, 3)), targets)


@given(shape=st.sampled_from([(5,), (3, 4), (2, 7, 4)]), beta=st.sampled_from([1.0, 0.5]),
       seed=st.integers(0, 2**31 - 1))
def test_smooth_l1_equals_pytorch(shape, beta, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.normal(size=shape) * 2, rng.normal(size=shape)
    loss, cache = F.smooth_l1_forward(pred, target, beta)
    p = torch.tensor(pred, requires_grad=True)
    ref = torch.nn.functional.smooth_l1_loss(p, torch.tensor(target), reduction="sum", beta=beta)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(F.smooth_l1_backward(cache), p.grad.numpy(), rtol=1e-12, atol=1e-15)
