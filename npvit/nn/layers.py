"""The basic layers: thin Modules that hold parameters and call the functional ops.

Each forward keeps the functional op's cache; each backward hands it back, accumulates the
parameter gradients and returns dL/dx. Shapes are those of the functional ops.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .init import generator, uniform_fan_in
from .module import Module, Parameter, is_grad_enabled


class Conv2d(Module):
    """x (N, C_in, H, W) -> (N, C_out, H_out, W_out); weight (C_out, C_in/groups, k, k)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, dilation=1, dtype=np.float32):
        super().__init__()
        k = kernel_size
        fan_in = in_channels // groups * k * k
        self.stride, self.padding, self.groups = stride, padding, groups
        self.dilation = dilation
        self.weight = Parameter(uniform_fan_in((out_channels, in_channels // groups, k, k), fan_in, dtype))
        self.bias = Parameter(uniform_fan_in((out_channels,), fan_in, dtype)) if bias else None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y, cache = F.conv2d_forward(x, self.weight.data, b, self.stride, self.padding, self.groups,
                                    self.dilation)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dw, db = F.conv2d_backward(dy, self.pop_cache())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        dilated = f", d={self.dilation}" if self.dilation != 1 else ""
        return (f"{i * self.groups}, {o}, k={k}, s={self.stride}, p={self.padding}, "
                f"g={self.groups}{dilated}")


class Linear(Module):
    """x (..., in) -> (..., out); weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.weight = Parameter(uniform_fan_in((out_features, in_features), in_features, dtype))
        self.bias = Parameter(uniform_fan_in((out_features,), in_features, dtype)) if bias else None

    def forward(self, x):
        y, cache = F.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dw, db = F.linear_backward(dy, self.pop_cache())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


class BatchNorm2d(Module):
    """x (N, C, H, W). Train: batch statistics, running averages updated; eval: running stats.
    inplace=True centres x in place (its cache then holds x itself): use it only where x is a
    fresh array nobody else keeps, as the conv output in ConvNormAct."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32, inplace=False):
        super().__init__()
        self.eps, self.momentum, self.inplace = eps, momentum, inplace
        self.weight = Parameter(np.ones(num_features, dtype))
        self.bias = Parameter(np.zeros(num_features, dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked += 1     # in place, so it stays a 0-d int64 array
        y, cache = F.batchnorm2d_forward(x, self.weight.data, self.bias.data, self.running_mean,
                                         self.running_var, self.training, self.momentum, self.eps,
                                         self.inplace)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dg, db = F.batchnorm2d_backward(dy, self.pop_cache())
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.weight.shape[0]}"


class LayerNorm(Module):
    """Normalises the last axis: x (..., D)."""

    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(np.ones(dim, dtype))
        self.bias = Parameter(np.zeros(dim, dtype))

    def forward(self, x):
        y, cache = F.layernorm_forward(x, self.weight.data, self.bias.data, self.eps)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dg, db = F.layernorm_backward(dy, self.pop_cache())
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.weight.shape[0]}"


class GroupNorm(Module):
    """x (N, C, *spatial), statistics per sample and group. GroupNorm(1, C) is MobileViTv2's
    "LayerNorm2D" (timm's GroupNorm1)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.weight = Parameter(np.ones(num_channels, dtype))
        self.bias = Parameter(np.zeros(num_channels, dtype))

    def forward(self, x):
        y, cache = F.groupnorm_forward(x, self.num_groups, self.weight.data, self.bias.data, self.eps)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        dx, dg, db = F.groupnorm_backward(dy, self.pop_cache())
        self.weight.accumulate(dg)
        self.bias.accumulate(db)
        return dx

    def extra_repr(self):
        return f"{self.num_groups}, {self.weight.shape[0]}"


class _Elementwise(Module):
    """An activation: forward/backward are a functional pair with no parameters."""

    fwd = bwd = None

    def forward(self, x):
        y, cache = type(self).fwd(x)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        return type(self).bwd(dy, self.pop_cache())


class SiLU(Module):
    """y = x * sigmoid(x). inplace=True overwrites the input with the output: use it only where
    the input is a fresh array nobody else keeps (the output of the layer just before), as in
    ConvNormAct and the MLPs. Its backward needs only y and 1 + tanh(x/2), so in-place is safe in
    training too."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x, halved=False):
        """halved=True: x holds x/2 (ConvNormAct's inference path, see F.silu_forward)."""
        y, cache = F.silu_forward(x, self.inplace, halved)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        return F.silu_backward(dy, self.pop_cache())

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class ReLU(_Elementwise):
    fwd, bwd = staticmethod(F.relu_forward), staticmethod(F.relu_backward)


class GELU(_Elementwise):
    fwd, bwd = staticmethod(F.gelu_forward), staticmethod(F.gelu_backward)


class Dropout(Module):
    """Inverted dropout with probability p in training; identity in eval."""

    def __init__(self, p=0.0, rng: np.random.Generator | None = None):
        super().__init__()
        self.p = p
        self.rng = rng if rng is not None else generator()

    def forward(self, x):
        y, mask = F.dropout_forward(x, self.p, self.training, self.rng)
        self.save_cache(("mask", mask))
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self.pop_cache()[1])

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Channel dropout (torch's Dropout2d): in training whole (sample, channel) planes are
    zeroed with probability p; identity in eval. The dense-prediction heads use it."""

    def forward(self, x):
        y, mask = F.dropout2d_forward(x, self.p, self.training, self.rng)
        self.save_cache(("mask", mask))
        return y


class GlobalAvgPool(Module):
    """(N, C, H, W) -> (N, C)."""

    def forward(self, x):
        y, cache = F.global_avg_pool_forward(x)
        self.save_cache(cache)
        return y

    def backward(self, dy):
        return F.global_avg_pool_backward(dy, self.pop_cache())


class ConvNormAct(Module):
    """conv (no bias) -> BatchNorm -> optional activation; timm's ConvNormAct, whose keys are
    ``conv.weight`` and ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.

    Which path runs:
    * training, or eval with gradients enabled: conv, then BatchNorm, as two layers (training
      needs the batch statistics, and both layers' parameters get their own gradients);
    * eval under ``no_grad()`` (inference): the BatchNorm is folded into the convolution
      (``F.fold_batchnorm``): one conv with scaled weights and a bias, no BatchNorm pass over
      the feature map. The folded weights are recomputed on every call (a few kB of arithmetic
      against megabytes of feature map), so they can never go stale after weights change.
    tests/test_fast_paths.py checks that both paths give the same output.

    Padding is ``dilation * (kernel_size // 2)``, so the output keeps the input's size at
    stride 1 (ml-cvnets' ConvLayer). ``act``: True for SiLU (the backbones), "relu" for the
    dense-prediction heads (ml-cvnets builds them with ReLU), False for none.
    """

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, groups=1, act=True,
                 dilation=1, dtype=np.float32):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride,
                           dilation * (kernel_size // 2), groups, bias=False, dilation=dilation,
                           dtype=dtype)
        # the conv's output is a fresh array only the BatchNorm sees, so BN centres it in place
        # (one feature-map allocation less; training step A/B: xxs 0.96, v2 0.99)
        self.bn = BatchNorm2d(out_channels, dtype=dtype, inplace=True)
        if act == "relu":
            self.act = ReLU()
        else:                                             # the input is always a fresh array
            self.act = SiLU(inplace=True) if act else None

    def forward(self, x):
        if self.training or is_grad_enabled():
            x = self.bn.forward(self.conv.forward(x))
        elif isinstance(self.act, SiLU):
            return self.act.forward(self.folded_conv_forward(x), True)   # it gave x/2
        else:
            x = self.folded_conv_forward(x)
        return self.act.forward(x) if self.act is not None else x

    def folded_conv_forward(self, x):
        """conv with the (eval-mode) BatchNorm folded in; keeps no cache (inference only).
        Before a SiLU it returns half the output: SiLU computes from x/2 (F.silu_forward), and
        the 1/2 folded into the weights here saves that pass over the feature map."""
        conv, bn = self.conv, self.bn
        w, b = F.fold_batchnorm(conv.weight.data, None, bn.weight.data, bn.bias.data,
                                bn.running_mean, bn.running_var, bn.eps)
        if isinstance(self.act, SiLU):
            w *= 0.5                      # fresh arrays; halving is exact in floating point
            b *= 0.5
        y, _ = F.conv2d_forward(x, w, b, conv.stride, conv.padding, conv.groups, conv.dilation)
        return y

    def backward(self, dy):
        if self.act is not None:
            dy = self.act.backward(dy)
        return self.conv.backward(self.bn.backward(dy))
