"""Modules: parameters, gradients and state around the functional ops."""
from .attention import LinformerAttention, MultiHeadAttention, SeparableSelfAttention
from .attention_zoo import (CascadedGroupAttention, EfficientFormerAttention, LookupCrossAttention,
                            MPCAttention, TinyViTAttention)
from .init import manual_seed
from .layers import (GELU, BatchNorm2d, Conv2d, ConvNormAct, Dropout, Dropout2d, GlobalAvgPool,
                     GroupNorm, LayerNorm, Linear, ReLU, SiLU)
from .module import Identity, Module, Parameter, Sequential, is_grad_enabled, no_grad
from .transformer import ConvMlp, LinearTransformerLayer, Mlp, TransformerLayer
