"""Whole-model training steps against timm + torch.optim.

mobilevit_xxs and mobilevitv2_050 start from identical float64 weights (random, with randomised
BatchNorm statistics) and take 3 consecutive steps of npvit.train.train_step (forward,
label-smoothed cross-entropy, backward, optimiser update) in train mode, against the same steps
in PyTorch, on batches of two 64x96 images (the last stage's 2x3 map is resized to 2x4 in both
families, so every attention sees at least 2 patches). After every step the losses agree, and after the last one every parameter and every
BatchNorm running statistic does.
"""
import numpy as np
import pytest

from npvit.train import SGD, AdamW, train_step, weight_decay_groups

SMOOTHING = 0.1
STEPS = 3

OPTIMISERS = {
    # name: (npvit class, torch class name, hyper-parameters, weight decay on the >1-D params)
    "adamw": (AdamW, "AdamW", {"lr": 1e-3}, 0.05),
    "sgd_nesterov": (SGD, "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, 1e-4),
}


def torch_groups(ref, weight_decay):
    """ml-cvnets' rule in torch: 1-D parameters (norms, biases) get no weight decay."""
    groups = [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]
    for _, p in ref.named_parameters():
        groups[p.ndim == 1]["params"].append(p)
    return groups


@pytest.mark.parametrize("which", OPTIMISERS)
@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_three_training_steps_of_the_whole_model_equal_timm_and_torch_optim(torch, name, which):
    from timm_reference import npvit_twin, random_timm_model, relative_error

    cls, torch_name, hyper, wd = OPTIMISERS[which]
    ref = random_timm_model(name, seed=7, dtype="float64").train()
    model = npvit_twin(ref, name, np.float64).train()
    opt = cls(weight_decay_groups(model.named_parameters(), wd), **hyper)
    ref_opt = getattr(torch.optim, torch_name)(torch_groups(ref, wd), **hyper)

    rng = np.random.default_rng(0)
    # Entries whose true gradient is exactly 0 at every step; see below.
    vanishing = {k: np.ones(p.shape, bool) for k, p in model.named_parameters()}
    for _ in range(STEPS):
        x, y = rng.random((2, 3, 64, 96)), rng.integers(0, 1000, 2)
        loss, _ = train_step(model, x, y, opt, label_smoothing=SMOOTHING)

        ref_loss = torch.nn.functional.cross_entropy(
            ref(torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=SMOOTHING)
        ref_opt.zero_grad()
        ref_loss.backward()
        grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
        scale = max(np.abs(g).max() for g in grads.values())
        for k, g in grads.items():
            vanishing[k] &= np.abs(g) <= 1e-12 * scale
        ref_opt.step()
        assert loss == pytest.approx(ref_loss.item(), rel=1e-10)

    # Some gradient entries are exactly zero in exact arithmetic, in both implementations: a BN
    # bias (or any per-channel constant) that reaches a training-mode BatchNorm only through
    # convolutions is removed again by that BatchNorm's batch mean; a constant added to all of
    # v1's keys (the key rows of attn.qkv.bias) or to v2's query scores (row 0 of
    # qkv_proj.bias) cancels in the softmax. Both sides compute rounding noise there (~1e-17).
    # SGD turns noise into noise-sized steps; AdamW divides it by sqrt(v) + eps, and because
    # sqrt(v) ~ noise << eps = 1e-8 its steps stay tiny too (~lr * noise / eps) — but they are
    # noise, not something two implementations can agree on digit by digit. So for those
    # entries the two sides must agree to an absolute 1e-4 * lr, far below the lr-sized steps of
    # every other entry (weight decay, deterministic, still moves them identically on both
    # sides); every other entry must agree to 1e-8 relative.
    theirs = {k: p.detach().numpy() for k, p in ref.named_parameters()}
    assert any(m.any() for m in vanishing.values())       # the case does arise
    for k, p in model.named_parameters():
        learned = ~vanishing[k]
        if learned.any():
            assert relative_error(p.data[learned], theirs[k][learned]) <= 1e-8, k
        noise_moves = np.abs(p.data - theirs[k])[vanishing[k]]
        assert noise_moves.max(initial=0) <= 1e-4 * hyper["lr"], k
    ref_state = ref.state_dict()
    for k, v in model.state_dict().items():
        if "running" in k:
            assert relative_error(v, ref_state[k].numpy()) <= 1e-8, k
