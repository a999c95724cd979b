"""How the zoo's units grow with the number of tokens k, proven on the code that runs: the
operation counter (npvit.opcount) reads the sizes off the arrays each unit uses, tracemalloc
sees every NumPy allocation. Small widths so k up to 2^14 stays cheap."""
import numpy as np
import pytest

from npvit import functional as F
from npvit.bench.attention_zoo import builds_kxk, grid
from counting import arrays, counted, peak_bytes

D, HEADS, KEY, M, WINDOW = 8, 2, 4, 5, 7


def lookup(rng, k):
    x, z, *params = arrays(rng, (1, k, D), (1, M, D), (D, D), (D,), (2 * D, D), (2 * D,), (D, D), (D,),
                           (D, D), (D,), (D, D), (D,))
    return lambda: F.lookup_cross_attention_forward(x, z, *params, num_heads=HEADS)


def tinyvit(rng, k):
    """k = 49 * n tokens as a 7 x 7n map: n windows of 7 x 7, no padding."""
    x, *params = arrays(rng, (1, WINDOW, k // WINDOW, D), (D,), (D,), (HEADS * 3 * KEY, D),
                        (HEADS * 3 * KEY,), (D, HEADS * KEY), (D,), (HEADS, WINDOW * WINDOW))
    index = F.relative_position_index(WINDOW, WINDOW)

    def run():
        windows, _ = F.window_partition_forward(x, WINDOW)
        y, _ = F.tinyvit_attention_forward(windows, *params, index, HEADS, KEY, KEY)
        return F.window_merge_forward(y, x.shape[1:3], WINDOW)
    return run


def efficientformer(rng, k):
    h, w = grid(k)
    params = arrays(rng, (1, k, D), (HEADS * 3 * KEY, D), (HEADS * 3 * KEY,), (D, HEADS * KEY), (D,),
                    (HEADS, h * w))
    index = F.relative_position_index(h, w)
    return lambda: F.biased_attention_forward(*params, index, HEADS, KEY, KEY)


def cascaded(rng, k):
    h, w = grid(k)
    dv = D // HEADS                                     # the cascade needs dv = D / h
    conv_bn = lambda c_out, c_in, kernel: (*arrays(rng, (c_out, c_in, kernel, kernel), (c_out,), (c_out,)),
                                           np.zeros(c_out, np.float32), np.ones(c_out, np.float32))
    qkvs = [conv_bn(2 * KEY + dv, dv, 1) for _ in range(HEADS)]
    dws = [conv_bn(KEY, 1, 3) for _ in range(HEADS)]
    x, table = arrays(rng, (1, D, h, w), (HEADS, h * w))
    index = F.relative_position_index(h, w)
    return lambda: F.cascaded_group_attention_forward(x, qkvs, dws, conv_bn(D, D, 1), table, index, KEY, dv)


def cascaded_in_windows(rng, k):
    """EfficientViT's use of the unit: k = 49 * n tokens as a 7 x 7n map, n windows of 7 x 7."""
    dv = D // HEADS
    conv_bn = lambda c_out, c_in, kernel: (*arrays(rng, (c_out, c_in, kernel, kernel), (c_out,), (c_out,)),
                                           np.zeros(c_out, np.float32), np.ones(c_out, np.float32))
    qkvs = [conv_bn(2 * KEY + dv, dv, 1) for _ in range(HEADS)]
    dws = [conv_bn(KEY, 1, 3) for _ in range(HEADS)]
    x, table = arrays(rng, (1, WINDOW, k // WINDOW, D), (HEADS, WINDOW * WINDOW))
    index = F.relative_position_index(WINDOW, WINDOW)

    def run():
        windows, _ = F.window_partition_forward(x, WINDOW)
        maps = np.ascontiguousarray(windows.reshape(-1, WINDOW, WINDOW, D).transpose(0, 3, 1, 2))
        return F.cascaded_group_attention_forward(maps, qkvs, dws, conv_bn(D, D, 1), table, index, KEY, dv)
    return run


def mpc(kind):
    def make(rng, k):
        params = arrays(rng, (1, k, D), (3 * D, D), (3 * D,), (D, D), (D,))
        return lambda: F.mpc_attention_forward(*params, num_heads=HEADS, kind=kind)
    make.__name__ = f"mpc_{kind}"
    return make


def work(c):
    return c.macs + c.elementwise


def test_lookup_cross_attention_work_is_affine_in_k_and_memory_linear():
    """c(k) = a k + b: the M compressed tokens' own projections are the constant b, so on
    k, 2k, 4k the increments double; the largest array grows exactly in proportion to k."""
    counters = [counted(lookup, 2 ** e) for e in range(8, 15)]
    for a, b, c in zip(counters, counters[1:], counters[2:]):
        assert work(c) - work(b) == 2 * (work(b) - work(a)) > 0     # on k, 2k, 4k
        assert c.macs - b.macs == 2 * (b.macs - a.macs) > 0
    for a, b in zip(counters, counters[1:]):
        assert b.largest.nbytes == 2 * a.largest.nbytes
    assert all(not builds_kxk(c, 2 ** e) for c, e in zip(counters, range(8, 15)))


@pytest.mark.parametrize("unit", [tinyvit, cascaded_in_windows], ids=["TinyViT", "cascaded-group-7x7"])
def test_window_attention_does_exactly_twice_the_work_per_doubling(unit):
    """TinyViT, and cascaded group attention as EfficientViT runs it, on k = 49 * 2^j tokens:
    the number of 7 x 7 windows doubles, nothing else."""
    counters = [counted(unit, 49 * 2 ** j) for j in range(2, 9)]        # k = 196 ... 12544
    for a, b in zip(counters, counters[1:]):
        assert b.macs == 2 * a.macs and b.elementwise == 2 * a.elementwise
        assert b.largest.nbytes == 2 * a.largest.nbytes
    for c, j in zip(counters, range(2, 9)):
        k = 49 * 2 ** j
        assert not builds_kxk(c, k)
        # the attention weights are (windows * h, 49, 49): fixed-size blocks, never k x k
        assert max(op.shape[-1] for op in c.ops if op.kind == "softmax") == 49


@pytest.mark.parametrize("unit", [efficientformer, mpc("relu"), mpc("scaling"), cascaded],
                         ids=["EfficientFormer", "MPC-relu", "MPC-scaling", "cascaded-group"])
def test_global_units_are_quadratic_and_build_k_by_k(unit):
    """EfficientFormer, MPCViT's variants and cascaded group attention (global over its input
    map; EfficientViT keeps it cheap by running it in 7x7 windows) hold (k x k) weights: work
    is a quadratic polynomial in k, so the ratio per doubling climbs towards 4."""
    es = range(7, 12)                                   # 2^11: 32 MB per k x k array here
    counters = [counted(unit, 2 ** e) for e in es]
    ratios = [work(b) / work(a) for a, b in zip(counters, counters[1:])]
    assert all(r1 < r2 < 4 for r1, r2 in zip(ratios, ratios[1:])), ratios
    assert ratios[-1] > 3.5, ratios
    # exactly a k^2 + b k + c with a > 0: a quadratic through the five counted points
    ks = np.array([2.0 ** e for e in es])
    works = np.array([work(c) for c in counters], dtype=np.float64)
    coeffs = np.polyfit(ks, works, 2)
    np.testing.assert_allclose(np.polyval(coeffs, ks), works, rtol=1e-9)
    assert coeffs[0] > 0
    for c, e in zip(counters, es):
        assert builds_kxk(c, 2 ** e)
        assert c.largest.shape[-2:] == (2 ** e, 2 ** e)


def test_which_operations_are_batched_matrix_products():
    """Fig. 1 (left): products of two activations, not weight projections."""
    kinds = {name: counted(unit, 256).by_kind().get("matmul", 0)
             for name, unit in [("lookup", lookup), ("efficientformer", efficientformer),
                                ("mpc", mpc("relu")), ("cascaded", cascaded)]}
    kinds["tinyvit"] = counted(tinyvit, 196).by_kind().get("matmul", 0)
    assert kinds == {"lookup": 3, "efficientformer": 2, "mpc": 2, "cascaded": 2 * HEADS, "tinyvit": 2}


@pytest.mark.parametrize("unit, k1", [(lookup, 2 ** 13), (tinyvit, 49 * 2 ** 7)], ids=["LookupViT", "TinyViT"])
def test_linear_units_peak_memory_is_linear_and_far_below_k_by_k(unit, k1):
    rng = np.random.default_rng(0)
    k2 = 2 * k1
    peak1, peak2 = peak_bytes(unit(rng, k1)), peak_bytes(unit(rng, k2))
    assert peak2 < 2.2 * peak1
    assert peak2 < k2 * k2 * 4 / 50                     # one k x k float32 array: 50x more
    # and tracemalloc does see the k x k weights of a global unit
    assert peak_bytes(mpc("scaling")(rng, 2 ** 11)) > HEADS * (2 ** 11) ** 2 * 4
