"""The warm-up cosine schedule: ml-cvnets' formula, and torch.optim.lr_scheduler's equivalents."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvit.errors import NpvitError
from npvit.nn import Parameter
from npvit.train import SGD, WarmupCosineSchedule

torch = pytest.importorskip("torch")


def optimizer():
    return SGD([("w", Parameter(np.zeros(2)))], lr=123.0)


def cvnets_cosine(t, max_lr, min_lr, warmup_init_lr, warmup, total):
    """ml-cvnets CosineScheduler.get_lr, iteration based, written out independently."""
    if t < warmup:
        return warmup_init_lr + t * (max_lr - warmup_init_lr) / warmup
    period = total - warmup + 1
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / period))


def lrs_of(sched, opt, n):
    """The lr each of n optimisation steps uses, read from the optimiser as a loop would."""
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return np.array(out)


schedules = st.fixed_dictionaries({
    "total": st.integers(2, 60), "warmup_frac": st.floats(0.0, 0.9),
    "max_lr": st.floats(1e-4, 1.0), "min_frac": st.floats(0.0, 0.5),
    "init_frac": st.floats(0.0, 0.5),
})


def build(s):
    total = s["total"]
    warmup = min(int(s["warmup_frac"] * total), total - 1)
    return total, warmup, s["max_lr"], s["max_lr"] * s["min_frac"], s["max_lr"] * s["init_frac"]


@given(schedules)
def test_schedule_equals_the_ml_cvnets_formula(s):
    total, warmup, max_lr, min_lr, init_lr = build(s)
    opt = optimizer()
    sched = WarmupCosineSchedule(opt, max_lr, total, warmup, warmup_init_lr=init_lr, min_lr=min_lr)
    expected = [cvnets_cosine(t, max_lr, min_lr, init_lr, warmup, total) for t in range(total)]
    np.testing.assert_allclose(lrs_of(sched, opt, total), expected, rtol=1e-15)


@given(schedules)
def test_schedule_equals_torch_linear_then_cosine_annealing(s):
    total, warmup, max_lr, min_lr, init_lr = build(s)
    init_lr = max(init_lr, 1e-6 * max_lr)        # torch's LinearLR needs start_factor > 0
    opt = optimizer()
    sched = WarmupCosineSchedule(opt, max_lr, total, warmup, warmup_init_lr=init_lr, min_lr=min_lr)

    ref_opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=max_lr)
    lrs = torch.optim.lr_scheduler
    if warmup:
        ref_sched = lrs.SequentialLR(ref_opt, [
            lrs.LinearLR(ref_opt, init_lr / max_lr, 1.0, total_iters=warmup),
            lrs.CosineAnnealingLR(ref_opt, T_max=total - warmup + 1, eta_min=min_lr)],
            milestones=[warmup])
    else:
        ref_sched = lrs.CosineAnnealingLR(ref_opt, T_max=total + 1, eta_min=min_lr)
    ref = []
    for _ in range(total):
        ref.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref_sched.step()
    # torch updates the lr recursively (each step from the last), so allow rounding drift
    np.testing.assert_allclose(lrs_of(sched, opt, total), ref, rtol=1e-9, atol=1e-15 * max_lr)


def test_schedule_shape():
    opt = optimizer()
    sched = WarmupCosineSchedule(opt, max_lr=0.1, total_steps=100, warmup_steps=10,
                                 warmup_init_lr=0.001, min_lr=0.01)
    lr = lrs_of(sched, opt, 100)
    assert lr[0] == 0.001 and lr[10] == 0.1
    assert np.all(np.diff(lr[:11]) > 0) and np.all(np.diff(lr[10:]) < 0)
    # ml-cvnets' period = total - warmup + 1: the last step stays above min_lr, which the
    # cosine would reach two steps later
    assert lr[-1] > 0.01 and sched.lr_at(101) == pytest.approx(0.01, rel=1e-15)


def test_state_dict_restores_the_position():
    opt = optimizer()
    sched = WarmupCosineSchedule(opt, 0.1, 20, 5)
    for _ in range(7):
        sched.step()
    other_opt = optimizer()
    other = WarmupCosineSchedule(other_opt, 0.1, 20, 5)
    other.load_state_dict(sched.state_dict())
    assert other_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == sched.lr_at(7)


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(NpvitError, match="warm-up"):
        WarmupCosineSchedule(optimizer(), 0.1, total_steps=10, warmup_steps=10)
