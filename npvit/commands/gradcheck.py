"""``npvit gradcheck``: run every functional op forward and backward on small random float64
inputs and print how far its hand-written gradient is from centred finite differences."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..gradcheck import check_gradients, wrap_op
from .options import check_seed


def _op_cases(rng):
    """(name, forward(**inputs) -> y, backward(g) -> grads, inputs) for each op."""
    def r(*shape):
        return rng.standard_normal(shape)

    conv = lambda groups, stride: wrap_op(
        lambda x, w, b: F.conv2d_forward(x, w, b, stride, 1, groups), F.conv2d_backward, "xwb")
    yield ("conv2d 3x3 dense, stride 2", *conv(1, 2), dict(x=r(2, 3, 7, 6), w=r(4, 3, 3, 3), b=r(4)))
    yield ("conv2d 3x3 grouped (2)", *conv(2, 1), dict(x=r(2, 4, 5, 5), w=r(6, 2, 3, 3), b=r(6)))
    yield ("conv2d 3x3 depthwise", *conv(4, 1), dict(x=r(2, 4, 6, 5), w=r(4, 1, 3, 3), b=r(4)))
    yield ("linear", *wrap_op(F.linear_forward, F.linear_backward, "xwb"),
           dict(x=r(3, 5, 4), w=r(6, 4), b=r(6)))
    yield ("batch norm (train)", *wrap_op(
        lambda x, gamma, beta: F.batchnorm2d_forward(x, gamma, beta, np.zeros(3), np.ones(3), True),
        F.batchnorm2d_backward, ["x", "gamma", "beta"]), dict(x=r(4, 3, 3, 2), gamma=r(3), beta=r(3)))
    yield ("layer norm", *wrap_op(F.layernorm_forward, F.layernorm_backward, ["x", "gamma", "beta"]),
           dict(x=r(3, 4, 8), gamma=r(8), beta=r(8)))
    yield ("group norm (1 group)", *wrap_op(lambda x, gamma, beta: F.groupnorm_forward(x, 1, gamma, beta),
                                         F.groupnorm_backward, ["x", "gamma", "beta"]),
           dict(x=r(2, 4, 4, 3), gamma=r(4), beta=r(4)))
    yield ("silu", *wrap_op(F.silu_forward, F.silu_backward, "x"), dict(x=r(3, 7)))
    yield ("gelu", *wrap_op(F.gelu_forward, F.gelu_backward, "x"), dict(x=r(3, 7)))
    yield ("softmax", *wrap_op(F.softmax_forward, F.softmax_backward, "x"), dict(x=r(3, 7)))
    yield ("bilinear resize, align_corners=False", *wrap_op(
        lambda x: F.resize_bilinear_forward(x, (7, 5), False), F.resize_bilinear_backward, "x"),
        dict(x=r(1, 2, 4, 6)))
    yield ("bilinear resize, align_corners=True", *wrap_op(
        lambda x: F.resize_bilinear_forward(x, (7, 5), True), F.resize_bilinear_backward, "x"),
        dict(x=r(1, 2, 4, 6)))
    yield ("unfold v2 (patches)", *wrap_op(F.unfold_v2_forward, F.unfold_v2_backward, "x"),
           dict(x=r(2, 3, 4, 6)))


def run(args) -> int:
    rng = np.random.default_rng(check_seed(args.seed))
    worst = 0.0
    print(f"{'op':40s} {'input':>6s}  relative error vs centred finite differences")
    for name, forward, backward, inputs in _op_cases(rng):
        errors = check_gradients(forward, backward, inputs)
        for inp, err in errors.items():
            print(f"{name:40s} {inp:>6s}  {err:.2e}")
            worst = max(worst, err)
    ok = worst <= args.tol
    print(f"worst relative error {worst:.2e} (tolerance {args.tol:.0e}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def add_parser(sub):
    p = sub.add_parser("gradcheck", help="check every op's backward against finite differences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-6)
    p.set_defaults(func=run)
