"""Optimisers, gradient clipping and the schedule step for step against torch.optim.

A small npvit stack (conv 3x3 -> BatchNorm -> SiLU -> conv 1x1 -> global pool -> linear) and the
same torch
stack start from identical float64 weights, see the same batches and the same label-smoothed
loss, and take 3 training steps; every parameter must then agree to 1e-8 relative.
"""
import numpy as np
import pytest

import npvit.nn as nn
from npvit import functional as F
from npvit.errors import NpvitError
from npvit.gradcheck import relative_error
from npvit.train import (SGD, AdamW, WarmupCosineSchedule, clip_grad_norm, load_checkpoint,
                         save_checkpoint, weight_decay_groups)

SMOOTHING = 0.1


def small_stack(seed):
    """npvit's stack, float64, with non-trivial BatchNorm affine parameters. The 3x3 conv has no
    bias, as in MobileViT: BatchNorm would cancel it, leaving it a gradient of pure rounding
    noise that Adam would blow up to full-size, random-sign steps."""
    nn.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                          nn.SiLU(), nn.Conv2d(6, 8, 1), nn.GlobalAvgPool(), nn.Linear(8, 5))
    model.astype(np.float64)
    rng = np.random.default_rng(seed)
    model[1].weight.data = rng.uniform(0.5, 1.5, 6)
    model[1].bias.data = rng.standard_normal(6) * 0.1
    return model


def torch_stack(torch, model):
    """The same stack in torch (index 4 pools and flattens, so the state_dict keys agree)."""
    tnn = torch.nn
    ref = tnn.Sequential(tnn.Conv2d(3, 6, 3, padding=1, bias=False), tnn.BatchNorm2d(6),
                         tnn.SiLU(), tnn.Conv2d(6, 8, 1),
                         tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten()),
                         tnn.Linear(8, 5)).double()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return ref


def batches(n_steps, seed=123):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 5, 4)) for _ in range(n_steps)]


def npvit_step(model, opt, x, y, sched=None, max_norm=None):
    loss, cache = F.cross_entropy_forward(model(x), y, label_smoothing=SMOOTHING)
    model.zero_grad()
    model.backward(F.cross_entropy_backward(cache))
    if max_norm is not None:
        clip_grad_norm(model.parameters(), max_norm)
    opt.step()
    if sched is not None:
        sched.step()
    return loss


def torch_step(torch, ref, opt, x, y, sched=None, max_norm=None):
    loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y),
                                             label_smoothing=SMOOTHING)
    opt.zero_grad()
    loss.backward()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    opt.step()
    if sched is not None:
        sched.step()
    return loss.item()


def torch_groups(ref, weight_decay, no_decay_bn_filter_bias):
    """ml-cvnets' parameter_list, written against torch: 1-D parameters get no decay."""
    groups = [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]
    for _, p in ref.named_parameters():
        groups[1 if no_decay_bn_filter_bias and p.ndim == 1 else 0]["params"].append(p)
    return [g for g in groups if g["params"]]


def assert_same_parameters(model, ref, rel=1e-8):
    theirs = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        err = relative_error(p.data, theirs[name].detach().numpy())
        assert err <= rel, f"{name}: relative error {err:.2e}"


OPTIMISERS = {
    # name: (npvit class, torch class name, hyper-parameters, weight decay, filter 1-D params)
    "sgd": (SGD, "SGD", {"lr": 0.1}, 0.0, False),
    "sgd_momentum": (SGD, "SGD", {"lr": 0.1, "momentum": 0.9}, 0.0, False),
    "sgd_nesterov": (SGD, "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, 0.0, False),
    "sgd_weight_decay": (SGD, "SGD", {"lr": 0.1, "momentum": 0.9}, 0.05, False),
    "sgd_nesterov_no_decay_1d": (SGD, "SGD", {"lr": 0.1, "momentum": 0.8, "nesterov": True},
                                 0.05, True),
    "adamw": (AdamW, "AdamW", {"lr": 0.01}, 0.05, False),
    "adamw_no_decay_1d": (AdamW, "AdamW", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6},
                          0.05, True),
}


@pytest.mark.parametrize("which", OPTIMISERS)
def test_three_training_steps_equal_torch_optim(torch, which):
    cls, torch_name, hyper, wd, filter_1d = OPTIMISERS[which]
    model = small_stack(seed=0)
    ref = torch_stack(torch, model)
    opt = cls(weight_decay_groups(model.named_parameters(), wd, filter_1d), **hyper)
    ref_opt = getattr(torch.optim, torch_name)(torch_groups(ref, wd, filter_1d), **hyper)
    for x, y in batches(3):
        loss = npvit_step(model, opt, x, y)
        ref_loss = torch_step(torch, ref, ref_opt, x, y)
        assert loss == pytest.approx(ref_loss, rel=1e-10)
    assert_same_parameters(model, ref)
    # the BatchNorm running statistics moved the same way too
    np.testing.assert_allclose(model[1].running_var, ref[1].running_var.numpy(), rtol=1e-10)


def test_adamw_with_warmup_cosine_and_clipping_equals_torch(torch):
    """The whole loop: AdamW, lr from the schedule, gradients clipped (max_norm small enough to
    bite), against AdamW + LinearLR/CosineAnnealingLR + clip_grad_norm_."""
    steps, warmup, max_lr, min_lr, init_lr = 5, 2, 0.01, 1e-4, 1e-3
    model = small_stack(seed=1)
    ref = torch_stack(torch, model)
    opt = AdamW(weight_decay_groups(model.named_parameters(), 0.05), lr=max_lr)
    sched = WarmupCosineSchedule(opt, max_lr, total_steps=steps, warmup_steps=warmup,
                                 warmup_init_lr=init_lr, min_lr=min_lr)
    ref_opt = torch.optim.AdamW(torch_groups(ref, 0.05, True), lr=max_lr)
    lrs = torch.optim.lr_scheduler
    ref_sched = lrs.SequentialLR(ref_opt, [
        lrs.LinearLR(ref_opt, start_factor=init_lr / max_lr, end_factor=1.0, total_iters=warmup),
        lrs.CosineAnnealingLR(ref_opt, T_max=sched.period, eta_min=min_lr)], milestones=[warmup])
    for x, y in batches(steps):
        npvit_step(model, opt, x, y, sched, max_norm=0.05)
        torch_step(torch, ref, ref_opt, x, y, ref_sched, max_norm=0.05)
    assert_same_parameters(model, ref)


def test_param_groups_put_exactly_the_1d_parameters_in_the_no_decay_group():
    model = small_stack(seed=0)
    with_decay, without_decay = weight_decay_groups(model.named_parameters(), weight_decay=0.05)
    assert [n for n, _ in with_decay["params"]] == ["0.weight", "3.weight", "5.weight"]
    assert [n for n, _ in without_decay["params"]] == ["1.weight", "1.bias", "3.bias", "5.bias"]
    assert (with_decay["weight_decay"], without_decay["weight_decay"]) == (0.05, 0.0)
    no_filter = weight_decay_groups(model.named_parameters(), 0.05, no_decay_bn_filter_bias=False)
    assert len(no_filter) == 1 and no_filter[0]["weight_decay"] == 0.05


def test_parameters_without_grad_are_left_alone():
    model = small_stack(seed=0)
    opt = AdamW(model.named_parameters(), lr=0.1)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    model[5].weight.grad = np.ones_like(model[5].weight.data)
    opt.step()
    for name, p in model.named_parameters():
        assert np.array_equal(p.data, before[name]) == (name != "5.weight"), name
    assert list(opt.state) == ["5.weight"]


@pytest.mark.parametrize("max_norm", [0.3, 1e3])
def test_clip_grad_norm_equals_torch(torch, max_norm):
    rng = np.random.default_rng(2)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    params = [nn.Parameter(rng.standard_normal(s)) for s in shapes]
    tensors = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for p, t in zip(params, tensors):
        p.grad = rng.standard_normal(p.shape)
        t.grad = torch.from_numpy(p.grad.copy())
    norm = clip_grad_norm(params, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    assert norm == pytest.approx(ref_norm.item(), rel=1e-14)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-14)
    total = np.sqrt(sum(np.sum(p.grad ** 2) for p in params))
    assert total <= max_norm * (1 + 1e-12) or total == pytest.approx(norm)


def test_clip_grad_norm_refuses_a_non_finite_norm():
    p = nn.Parameter(np.zeros(3))
    p.grad = np.array([1.0, np.nan, 0.0])
    with pytest.raises(NpvitError, match="diverged"):
        clip_grad_norm([p], 1.0)


# --- state save / load --------------------------------------------------------------------------

def make_run(kind, seed):
    model = small_stack(seed)
    groups = weight_decay_groups(model.named_parameters(), 0.05)
    opt = SGD(groups, lr=0.1, momentum=0.9, nesterov=True) if kind == "sgd" else AdamW(groups)
    sched = WarmupCosineSchedule(opt, max_lr=0.05, total_steps=6, warmup_steps=2)
    return model, opt, sched


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_resume_from_checkpoint_continues_identically(tmp_path, kind):
    data = batches(5, seed=7)
    model, opt, sched = make_run(kind, seed=0)
    for x, y in data[:2]:
        npvit_step(model, opt, x, y, sched)
    save_checkpoint(tmp_path / "ckpt.npz", model, opt, sched, epoch=2, best_top1=0.5)
    for x, y in data[2:]:
        npvit_step(model, opt, x, y, sched)

    resumed, resumed_opt, resumed_sched = make_run(kind, seed=99)     # different weights
    meta = load_checkpoint(tmp_path / "ckpt.npz", resumed, resumed_opt, resumed_sched)
    assert meta == {"epoch": 2, "best_top1": 0.5}
    for x, y in data[2:]:
        npvit_step(resumed, resumed_opt, x, y, resumed_sched)

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert np.array_equal(a, b), name
    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_optimizer_state_dict_round_trip_keeps_hyper_parameters():
    model, opt, _ = make_run("adamw", seed=0)
    x, y = batches(1)[0]
    npvit_step(model, opt, x, y)
    opt.param_groups[1]["lr"] = 0.123
    other = AdamW(weight_decay_groups(model.named_parameters(), 0.0), lr=1.0, betas=(0.5, 0.6))
    other.load_state_dict(opt.state_dict())
    for mine, theirs in zip(other.param_groups, opt.param_groups):
        assert {k: mine[k] for k in AdamW.defaults} == {k: theirs[k] for k in AdamW.defaults}
    for name, state in opt.state.items():
        for key, value in state.items():
            assert np.array_equal(other.state[name][key], value)


def test_loading_state_of_other_parameters_is_refused():
    model, opt, _ = make_run("sgd", seed=0)
    other_model = nn.Sequential(nn.Linear(3, 2)).astype(np.float64)
    other = SGD(weight_decay_groups(other_model.named_parameters(), 0.05), lr=0.1, momentum=0.9)
    with pytest.raises(NpvitError, match="other parameters"):
        other.load_state_dict(opt.state_dict())
    adamw = AdamW(weight_decay_groups(model.named_parameters(), 0.05))
    with pytest.raises(NpvitError, match="not written by AdamW"):
        adamw.load_state_dict(opt.state_dict())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint whole and no temporary file."""
    model, opt, sched = make_run("adamw", seed=0)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, opt, sched, epoch=1)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, sched, epoch=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
