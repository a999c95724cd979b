"""Modules: parameters, gradients and state around the functional ops."""
from .init import manual_seed
from .layers import (GELU, BatchNorm2d, Conv2d, ConvNormAct, Dropout, GlobalAvgPool, GroupNorm,
                     LayerNorm, Linear, ReLU, SiLU)
from .module import Identity, Module, Parameter, Sequential, is_grad_enabled, no_grad
