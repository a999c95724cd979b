"""conv2d (dense, grouped, depthwise; any kernel, stride, padding, dilation, bias) against finite
differences and torch.nn.functional.conv2d. Tolerances: tests/op_reference.py."""
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit.functional as F
from op_reference import assert_close, case_rng, gradcheck_pair, torch_forward_backward, with_torch


@dataclass
class ConvCase:
    n: int
    c_in: int
    c_out: int
    groups: int
    kernel: tuple
    stride: tuple
    padding: tuple
    hw: tuple
    bias: bool
    seed: int
    dilation: tuple = (1, 1)

    def arrays(self, dtype):
        rng = case_rng(self.seed)
        x = rng.standard_normal((self.n, self.c_in, *self.hw)).astype(dtype)
        w = rng.standard_normal((self.c_out, self.c_in // self.groups, *self.kernel)).astype(dtype)
        b = rng.standard_normal(self.c_out).astype(dtype) if self.bias else None
        return x, w, b


def _channels(draw):
    """(groups, c_in, c_out) of a dense, grouped or depthwise conv."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise", "depthwise x2"]))
    if kind == "dense":
        return 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if kind == "grouped":
        groups = draw(st.integers(2, 3))
        return groups, groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    # one input channel per group; "x2" = channel multiplier 2 (takes the GEMM path)
    groups = draw(st.integers(1, 5))
    return groups, groups, groups * (2 if kind == "depthwise x2" else 1)


@st.composite
def conv_cases(draw):
    groups, c_in, c_out = _channels(draw)
    kh = draw(st.sampled_from([1, 2, 3, 5]))
    kw = draw(st.one_of(st.just(kh), st.sampled_from([1, 2, 3, 5])))   # mostly square
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = draw(st.sampled_from([(1, 1), (1, 1), (2, 2), (3, 1), (2, 3)]))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    # smallest input with at least one output pixel: H + 2 * pad >= dilation * (k - 1) + 1
    min_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(min_h, max(min_h, 9))), draw(st.integers(min_w, max(min_w, 9)))
    return ConvCase(draw(st.integers(1, 3)), c_in, c_out, groups, (kh, kw), stride, padding,
                    (h, w), draw(st.booleans()), draw(st.integers(0, 2**32 - 1)), dilation)


@st.composite
def atrous_cases(draw):
    """ASPP-like 3x3 convs with padding = rate, rates up to 36 on maps smaller than the rate,
    so the outer taps fall wholly in the zero padding (dense, grouped and depthwise)."""
    groups, c_in, c_out = _channels(draw)
    rate = draw(st.sampled_from([4, 6, 12, 18, 36]))
    hw = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    return ConvCase(draw(st.integers(1, 2)), c_in, c_out, groups, (3, 3), (1, 1), (rate, rate),
                    hw, draw(st.booleans()), draw(st.integers(0, 2**32 - 1)), (rate, rate))


# Each code path named in conv.py at least once, whatever hypothesis draws.
FIXED_CASES = {
    "pointwise 1x1 (no im2col copy)": ConvCase(2, 4, 6, 1, (1, 1), (1, 1), (0, 0), (5, 3), True, 1),
    "pointwise 1x1 stride 2": ConvCase(2, 3, 5, 1, (1, 1), (2, 2), (0, 0), (5, 6), False, 2),
    "dense 3x3 stride 2 pad 1": ConvCase(2, 3, 4, 1, (3, 3), (2, 2), (1, 1), (7, 6), True, 3),
    "dense 5x5 pad 2 non-square": ConvCase(1, 2, 3, 1, (5, 5), (1, 1), (2, 2), (6, 9), True, 4),
    "dense 2x2 stride 2 (even kernel)": ConvCase(2, 3, 2, 1, (2, 2), (2, 2), (0, 0), (6, 5), True, 5),
    "grouped 3x3, 2 groups": ConvCase(2, 4, 6, 2, (3, 3), (1, 1), (1, 1), (5, 5), True, 6),
    "depthwise 3x3 stride 2": ConvCase(2, 4, 4, 4, (3, 3), (2, 2), (1, 1), (7, 8), True, 7),
    "depthwise 5x5 no bias": ConvCase(1, 3, 3, 3, (5, 5), (1, 1), (2, 2), (6, 5), False, 8),
    "depthwise multiplier 2": ConvCase(2, 3, 6, 3, (3, 3), (1, 2), (1, 0), (5, 6), True, 9),
    "non-square kernel 1x3": ConvCase(2, 2, 3, 1, (1, 3), (1, 1), (0, 1), (4, 5), True, 10),
    "dense dilated 3x3 rate 2": ConvCase(2, 3, 4, 1, (3, 3), (1, 1), (2, 2), (6, 7), True, 11, (2, 2)),
    "dense rate 36 on 5x6 (outer taps in padding)":
        ConvCase(2, 3, 2, 1, (3, 3), (1, 1), (36, 36), (5, 6), False, 12, (36, 36)),
    "depthwise dilated 3x3 rate 4": ConvCase(2, 4, 4, 4, (3, 3), (1, 1), (4, 4), (9, 7), True, 13, (4, 4)),
    "depthwise dilated stride 2": ConvCase(1, 3, 3, 3, (3, 3), (2, 2), (2, 2), (8, 9), False, 14, (2, 2)),
    "depthwise rate 18 on 3x4": ConvCase(2, 5, 5, 5, (3, 3), (1, 1), (18, 18), (3, 4), True, 15, (18, 18)),
    "grouped dilated, unequal rates": ConvCase(1, 4, 2, 2, (3, 3), (1, 2), (1, 3), (6, 8), True, 16, (2, 3)),
}


def _ours(case, x, w, b):
    return F.conv2d_forward(x, w, b, case.stride, case.padding, case.groups, case.dilation)


def _check_gradients(case):
    x, w, b = case.arrays(np.float64)
    inputs = dict(x=x, w=w) if b is None else dict(x=x, w=w, b=b)
    gradcheck_pair(lambda **kw: _ours(case, kw["x"], kw["w"], kw.get("b")), F.conv2d_backward,
                   inputs, ["x", "w", "b"])


def _check_against_torch(torch, case, dtype):
    x, w, b = case.arrays(dtype)
    y, cache = _ours(case, x, w, b)
    assert y.dtype == dtype
    dy = np.random.default_rng(case.seed + 1).standard_normal(y.shape).astype(dtype)
    dx, dw, db = F.conv2d_backward(dy, cache)
    inputs = dict(x=x, w=w) if b is None else dict(x=x, w=w, b=b)
    y_ref, g_ref = torch_forward_backward(
        torch, lambda x, w, b=None: torch.nn.functional.conv2d(
            x, w, b, stride=case.stride, padding=case.padding, groups=case.groups,
            dilation=case.dilation), inputs, dy)
    assert_close(y, y_ref, dtype, "conv2d y")
    assert_close(dx, g_ref["x"], dtype, "conv2d dx")
    assert_close(dw, g_ref["w"], dtype, "conv2d dw")
    if b is None:
        assert db is None
    else:
        # db is a sum over N * H_out * W_out values of dy that can cancel to nearly 0: both
        # libraries' rounding is relative to the summed magnitudes, so that is the scale.
        summed = float(np.abs(dy).sum(axis=(0, 2, 3)).max())
        assert_close(db, g_ref["b"], dtype, "conv2d db", scale=summed)
    assert dx.dtype == dw.dtype == dtype


@given(conv_cases())
def test_conv2d_backward_matches_finite_differences(case):
    _check_gradients(case)


@with_torch
@given(conv_cases(), st.sampled_from([np.float64, np.float32]))
def test_conv2d_matches_torch(torch, case, dtype):
    _check_against_torch(torch, case, dtype)


@given(atrous_cases())
def test_atrous_conv2d_backward_matches_finite_differences(case):
    _check_gradients(case)


@with_torch
@given(atrous_cases(), st.sampled_from([np.float64, np.float32]))
def test_atrous_conv2d_matches_torch(torch, case, dtype):
    _check_against_torch(torch, case, dtype)


@pytest.mark.parametrize("name", list(FIXED_CASES))
def test_conv2d_code_paths(torch, name):
    case = FIXED_CASES[name]
    _check_gradients(case)
    for dtype in (np.float64, np.float32):
        _check_against_torch(torch, case, dtype)


def test_conv2d_rejects_channels_that_do_not_fit_the_groups():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError, match="groups=2"):
        F.conv2d_forward(x, np.zeros((4, 3, 3, 3)), None, 1, 1, 2)


def test_col2im_is_the_adjoint_of_im2col(rng):
    # <im2col(x), c> == <x, col2im(c)>: what makes the GEMM backward correct.
    x = rng.standard_normal((2, 3, 7, 6))
    for k, stride, pad, dil in [(3, 1, 1, 1), (3, 2, 0, 1), (2, 2, 1, 1), (1, 1, 0, 1),
                                (5, 2, 2, 1), (3, 1, 3, 3), (3, 2, 9, 9)]:
        cols, _, _ = F.im2col(x, k, k, stride, pad, dil)
        c = rng.standard_normal(cols.shape)
        lhs = np.sum(cols * c)
        rhs = np.sum(x * F.col2im(c, x.shape, k, k, stride, pad, dil))
        assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 3)])
def test_depthwise_result_does_not_depend_on_the_cache_block_size(monkeypatch, stride, dilation):
    # The depthwise tap loops run over blocks of (sample, channel) planes; every element sees
    # the same operations in the same order, so any block size gives bit-identical results.
    from npvit.functional import cache_blocks
    from npvit.functional import conv as conv_module
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 9, 7)).astype(np.float32)
    w = rng.standard_normal((5, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    dy_shape = conv_module.conv2d_forward(x, w, b, stride, dilation, 5, dilation)[0].shape
    dy = rng.standard_normal(dy_shape).astype(np.float32)

    def run():
        y, cache = conv_module.conv2d_forward(x, w, b, stride, dilation, 5, dilation)
        return (y, *conv_module.conv2d_backward(dy, cache))

    whole = run()
    monkeypatch.setattr(cache_blocks, "BLOCK_BYTES", 1)      # one plane per block: 15 blocks
    assert len(cache_blocks.blocks(15, 100)) == 15
    for got, ref in zip(run(), whole):
        np.testing.assert_array_equal(got, ref)
