"""The PyTorch side of the model tests: timm models with every weight AND every BatchNorm
statistic randomised (so no layer is an identity), and their state dicts as NumPy arrays.
Import only inside tests that already required torch (e.g. through the ``torch`` fixture)."""
from __future__ import annotations

import numpy as np


def random_timm_model(name: str, seed: int = 0, dtype: str = "float32"):
    """timm.create_model(name) with random weights and randomised BN affine + running stats,
    in eval mode. The magnitudes keep activations O(1) through all the layers."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    randomise_norms(model, seed + 1)
    model = model.to(getattr(torch, dtype))
    return model.eval()


def randomise_norms(module, seed: int):
    """Give every BatchNorm2d in the torch ``module`` random affine parameters, running
    statistics and batch count, and every LayerNorm / GroupNorm random affine parameters, from
    a generator seeded with ``seed``: weights U[0.5, 1.5), biases and means N(0, 0.2^2),
    variances U[0.5, 1.5), so activations stay O(1) and no norm is an identity. In place;
    returns ``module``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            elif isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                c = m.weight.shape[0]
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return module


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def npvit_twin(timm_model, name: str, dtype=np.float32):
    """The npvit model of the same variant carrying exactly the timm model's weights."""
    import npvit

    model = npvit.create_model(name, dtype=dtype)
    model.load_state_dict(numpy_state_dict(timm_model))
    return model.eval()


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
