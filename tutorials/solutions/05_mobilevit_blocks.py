"""Solutions to the exercises of tutorial 5, and the wrong answers their checkers must reject."""
import numpy as np


def prenorm_residual_backward(layer, dy):
    # forward: h = x + drop(attn(norm1(x)));  out = h + mlp(norm2(h))
    # backward, last line first: dh = dout + norm2'(mlp'(dout)); dx = dh + norm1'(attn'(drop'(dh)))
    dh = dy + layer.norm2.backward(layer.mlp.backward(dy))
    return dh + layer.norm1.backward(layer.attn.backward(layer.attn_out_drop.backward(dh)))


def prenorm_residual_backward_no_shortcut(layer, dy):
    """Wrong: only through the branches; the residuals' identity paths are missing."""
    dh = layer.norm2.backward(layer.mlp.backward(dy))
    return layer.norm1.backward(layer.attn.backward(layer.attn_out_drop.backward(dh)))


def input_sensitivity(module, x, row, col):
    module.zero_grad()
    out = module(x)
    g = np.zeros_like(out)
    g[0, :, row, col] = 1.0
    return np.abs(module.backward(g)).sum(axis=(0, 1))


def input_sensitivity_signed(module, x, row, col):
    """Wrong: sums the signed gradient over the channels, so contributions of opposite sign cancel."""
    module.zero_grad()
    out = module(x)
    g = np.zeros_like(out)
    g[0, :, row, col] = 1.0
    return np.abs(module.backward(g).sum(axis=(0, 1)))


WRONG_ANSWERS = {
    "prenorm_residual_backward": prenorm_residual_backward_no_shortcut,
    "input_sensitivity": input_sensitivity_signed,
}
