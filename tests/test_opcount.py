"""The O(k) claims of the MobileViTv2 paper, proven on the code that runs: the operation counter
(npvit.opcount) reads sizes off the arrays each attention function actually uses, and
tracemalloc sees every NumPy allocation, including temporaries the counter is not told about."""
import numpy as np
import pytest

from npvit import functional as F
from counting import arrays, counted, peak_bytes
from npvit.opcount import count_ops

D, HEADS, PROJ = 8, 2, 16          # small width so k up to 2^14 stays cheap


def separable(rng, k, d=D):
    x, w_qkv, b_qkv, w_out, b_out = arrays(rng, (1, d, 1, k), (1 + 2 * d, d, 1, 1), (1 + 2 * d,),
                                           (d, d, 1, 1), (d,))
    return lambda: F.separable_attention_forward(x, w_qkv, b_qkv, w_out, b_out)


def linformer(rng, k, d=D):
    args = arrays(rng, (1, k, d), (3 * d, d), (3 * d,), (PROJ, k), (PROJ, k), (d, d), (d,))
    return lambda: F.linformer_attention_forward(*args, num_heads=HEADS)


def mha(rng, k, d=D):
    args = arrays(rng, (1, k, d), (3 * d, d), (3 * d,), (d, d), (d,))
    return lambda: F.multi_head_attention_forward(*args, num_heads=HEADS)


@pytest.mark.parametrize("unit", [separable, linformer])
def test_linear_units_do_exactly_twice_the_work_per_doubling_of_k(unit):
    counters = [counted(unit, 2 ** e) for e in range(8, 15)]
    for small, big in zip(counters, counters[1:]):
        assert big.macs == 2 * small.macs
        assert big.elementwise == 2 * small.elementwise
        assert big.largest.nbytes == 2 * small.largest.nbytes


def test_multi_head_attention_work_approaches_four_times_per_doubling():
    # stops at k = 2^12: MHA's (k x k) scores at 2^14 would need 2 GB here
    counters = [counted(mha, 2 ** e) for e in range(8, 13)]
    ratios = [(b.macs + b.elementwise) / (a.macs + a.elementwise) for a, b in zip(counters, counters[1:])]
    assert all(r1 < r2 < 4 for r1, r2 in zip(ratios, ratios[1:])), ratios
    assert ratios[-1] > 3.9, ratios
    for c in counters:
        k = c.ops[0].shape[1]
        assert c.largest.shape == (1, HEADS, k, k)


def test_separable_attention_never_holds_a_k_by_k_array():
    for e in range(8, 15):
        k = 2 ** e
        counter = counted(separable, k)
        assert all(op.shape.count(k) <= 1 for op in counter.ops), counter.table()
        # the biggest array is the 1x1 projection's output, (1 + 2d) numbers per token: O(k d)
        assert counter.largest.shape == (1, 1 + 2 * D, 1, k)


def test_only_multi_head_and_linformer_use_batched_matrix_products():
    """The paper's Fig. 1 (left): besides its two projections, separable attention is made of
    element-wise operations and one reduction."""
    kinds = counted(separable, 256).by_kind()
    assert "matmul" not in kinds and kinds["linear"] == 2
    assert counted(mha, 256).by_kind()["matmul"] == 2
    assert counted(linformer, 256).by_kind()["matmul"] == 4


def test_separable_attention_peak_memory_is_linear_in_k():
    rng = np.random.default_rng(0)
    k1, k2 = 2 ** 13, 2 ** 14
    peak1, peak2 = peak_bytes(separable(rng, k1)), peak_bytes(separable(rng, k2))
    assert peak2 < 2.2 * peak1
    # a single (k x k) float32 array would be 1 GiB at k2; the whole pass stays ~1000x below
    assert peak2 < k2 * k2 * 4 / 100
    # the same measurement does see MHA's k x k scores (so tracemalloc is watching NumPy)
    assert peak_bytes(mha(rng, 2 ** 11)) > HEADS * (2 ** 11) ** 2 * 4


def test_bytes_moved_are_each_input_read_once_and_the_output_written_once():
    """Multi-head attention with k tokens of width d: the counter's compulsory traffic of each
    kind of report, checked against the arrays' sizes computed here."""
    rng = np.random.default_rng(0)
    k, d = 64, D
    x, w_qkv, b_qkv, w_proj, b_proj = arrays(rng, (1, k, d), (3 * d, d), (3 * d,), (d, d), (d,))
    with count_ops() as counter:
        F.multi_head_attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, HEADS)
    ops = {op.name: op for op in counter.ops}
    item = 4
    qkv = ops["q, k, v = x W_qkv^T + b"]
    assert qkv.bytes_read == x.nbytes + w_qkv.nbytes + b_qkv.nbytes
    assert qkv.bytes_written == k * 3 * d * item
    scores = ops["scores = q k^T"]        # q (1, h, k, d/h) and k^T (1, h, d/h, k) -> (1, h, k, k)
    assert scores.bytes_read == 2 * k * d * item and scores.bytes_written == HEADS * k * k * item
    softmax = ops["softmax over keys"]
    assert softmax.bytes_read == softmax.bytes_written == HEADS * k * k * item
    assert counter.bytes_moved == sum(op.bytes_read + op.bytes_written for op in counter.ops)
    assert all(op.gb_per_s > 0 for op in counter.ops if op.seconds > 0)
