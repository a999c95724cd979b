"""The share of attention inside an object's box (npvit/viz/mass.py), on cases whose answer is
known: hand-built records, a brute-force count, and real models made to attend evenly."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import npvit
from npvit.errors import NpvitError
from npvit.viz import (BoxMass, box_area_share, box_masses, mass_in_box, mean_share,
                       score_mass_in_box)
from npvit.viz.capture import AttentionRecord


def _v2_record(scores, grid, stride=8):
    """A context-score record (1, 1, 4, N) from per-pixel-position scores (4, N)."""
    return AttentionRecord(stage=2, stride=stride, layer=0, depth=1, kind="context_scores",
                           weights=np.asarray(scores, np.float64)[None, None], grid=grid,
                           patch_size=(2, 2))


def test_all_mass_on_one_patch_inside_or_outside_the_box():
    # a 4x4 patch grid on a 64x64 input: feature map 8x8, each cell 8x8 input pixels;
    # patch (1, 2) holds the four cells rows 2-3, cols 4-5 = input x 32..48, y 16..32
    scores = np.zeros((4, 16))
    scores[:, 1 * 4 + 2] = 1.0                      # every pixel position: all on patch (1, 2)
    record = _v2_record(scores, (4, 4))
    assert box_masses([record], (64, 64), [32, 16, 48, 32])[0].share == pytest.approx(1.0)
    assert box_masses([record], (64, 64), [0, 0, 32, 16])[0].share == pytest.approx(0.0)
    # half of the patch's width: half its mass
    assert box_masses([record], (64, 64), [40, 0, 64, 64])[0].share == pytest.approx(0.5)


def test_even_attention_gives_the_box_area_share():
    box, size = [5.5, 3, 41, 60.25], (64, 48)
    uniform = _v2_record(np.full((4, 12), 1 / 12), (3, 4))
    assert box_masses([uniform], size, box)[0].share == pytest.approx(box_area_share(box, size))
    assert box_area_share(box, size) == pytest.approx((41 - 5.5) * (60.25 - 3) / (64 * 48))


def test_v1_received_attention():
    # (P, h, N, N) attention: every query, in every head, attends only to key patch 3
    n = 4
    attention = np.zeros((4, 2, n, n))
    attention[..., 3] = 1.0
    record = AttentionRecord(stage=2, stride=8, layer=0, depth=1, kind="attention",
                             weights=attention, grid=(2, 2), patch_size=(2, 2))
    # patch 3 = grid (1, 1) = the bottom-right quarter of the input
    assert box_masses([record], (32, 32), [16, 16, 32, 32])[0].share == pytest.approx(1.0)
    assert box_masses([record], (32, 32), [0, 0, 16, 32])[0].share == pytest.approx(0.0)


@given(h=st.integers(1, 6), w=st.integers(1, 6), seed=st.integers(0, 10**6),
       corners=st.lists(st.integers(0, 60), min_size=4, max_size=4))
def test_mass_in_box_equals_a_brute_force_count(h, w, seed, corners):
    # a 60x60 input and an h x w map: on a grid 60h x 60w fine, both the cells (60 x 60 fine
    # pixels each) and the input pixels (h x w fine pixels each) are whole blocks, so the mass
    # inside a box of whole input pixels is a plain sum
    values = np.random.default_rng(seed).random((h, w)) + 0.01
    x0, x1 = sorted(corners[:2])
    y0, y1 = sorted(corners[2:])
    if x1 == x0 or y1 == y0:
        return
    fine = np.kron(values / (60 * 60), np.ones((60, 60)))            # (60h, 60w)
    # input pixel u spans fine columns u*w .. (u+1)*w
    inside = fine[y0 * h:y1 * h, x0 * w:x1 * w].sum() / fine.sum()
    assert mass_in_box(values, (60, 60), [x0, y0, x1, y1]) == pytest.approx(inside, rel=1e-9)


@pytest.mark.parametrize("name", ["mobilevitv2_050", "mobilevit_xxs"])
def test_a_model_made_to_attend_evenly_measures_the_box_area_share(name):
    # v2: query-score row of qkv_proj zeroed -> every context score is 1/N;
    # v1: query and key rows of qkv zeroed -> every attention row is uniform
    model = npvit.create_model(name, num_classes=3, seed=0).eval()
    for _, module in model.named_modules():
        if type(module).__name__ == "SeparableSelfAttention":
            module.qkv_proj.weight.data[0] = 0
            module.qkv_proj.bias.data[0] = 0
        elif type(module).__name__ == "MultiHeadAttention":
            d = module.proj.weight.shape[0]
            module.qkv.weight.data[:2 * d] = 0
            module.qkv.bias.data[:2 * d] = 0
    x = np.random.default_rng(1).random((1, 3, 64, 64)).astype(np.float32)
    box = [10, 20, 50, 40]
    masses = score_mass_in_box(model, x, box)
    assert len(masses) == 9 and {m.stride for m in masses} == {8, 16, 32}
    assert [m.share for m in masses] == pytest.approx([box_area_share(box, (64, 64))] * 9)
    assert mean_share(masses) == pytest.approx(40 * 20 / (64 * 64))


def test_mean_share_leaves_out_single_patch_grids_and_picks_a_block():
    def mass(stride, patches, share):
        return BoxMass(stride, 0, 1, patches, share)
    masses = [mass(8, 16, 0.6), mass(8, 16, 0.4), mass(16, 4, 0.1), mass(32, 1, 0.25)]
    assert mean_share(masses) == pytest.approx((0.6 + 0.4 + 0.1) / 3)
    assert mean_share(masses, stride=8) == pytest.approx(0.5)
    with pytest.raises(NpvitError, match="output stride 32"):
        mean_share(masses, stride=32)


def test_bad_boxes_are_one_line():
    values = np.ones((2, 2))
    for box in ([0, 0, 0, 5], [5, 5, 2, 8], [0, 0, 70, 10], [0, 0, 1], [np.nan, 0, 1, 1]):
        with pytest.raises(NpvitError) as e:
            mass_in_box(values, (64, 64), box)
        assert "\n" not in str(e.value)
