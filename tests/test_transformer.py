"""The v1 and v2 transformer layers against timm's own blocks (same weights via load_state_dict,
forward and backward), and their backward — dropout included — against finite differences."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import npvit
from npvit.gradcheck import check_gradients
from op_reference import with_torch
from test_attention import TOL, compare_with_torch, dtypes


def randomise_norms(torch, module, seed):
    """timm initialises norms to the identity; random affine parameters make them count."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
    return module


def timm_v1_block(torch, dim, heads, mlp_ratio):
    """The block exactly as timm's MobileVitBlock builds it (TransformerBlock = vit Block)."""
    from timm.models.mobilevit import TransformerBlock
    return TransformerBlock(dim, mlp_ratio=mlp_ratio, num_heads=heads, qkv_bias=True,
                            act_layer=torch.nn.SiLU, norm_layer=torch.nn.LayerNorm)


@with_torch
@given(st.integers(1, 2), st.integers(1, 8), st.sampled_from([1, 2, 4]), st.integers(3, 4),
       st.sampled_from([1.0, 2.0]), dtypes, st.integers(0, 2**16))
def test_transformer_layer_matches_timm(torch, b, k, heads, head_dim, mlp_ratio, dtype, seed):
    # d >= 3: a LayerNorm over 1 or 2 features outputs constants (+-1), its gradient is ~0
    d = heads * head_dim
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    theirs = randomise_norms(torch, timm_v1_block(torch, d, heads, mlp_ratio), seed).eval()
    ours = npvit.nn.TransformerLayer(d, num_heads=heads, mlp_ratio=mlp_ratio).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    errors = compare_with_torch(torch, ours, theirs, rng.standard_normal((b, k, d)), dtype, rng)
    assert max(errors.values()) <= TOL[dtype], errors


@with_torch
@given(st.integers(1, 2), st.integers(3, 6), st.integers(1, 4), st.integers(1, 6),
       st.sampled_from([1.0, 2.0]), dtypes, st.integers(0, 2**16))
def test_linear_transformer_layer_matches_timm(torch, b, d, p, n, mlp_ratio, dtype, seed):
    from timm.models.mobilevit import LinearTransformerBlock
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    theirs = randomise_norms(torch, LinearTransformerBlock(d, mlp_ratio=mlp_ratio), seed).eval()
    ours = npvit.nn.LinearTransformerLayer(d, mlp_ratio=mlp_ratio).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    errors = compare_with_torch(torch, ours, theirs, rng.standard_normal((b, d, p, n)), dtype, rng)
    assert max(errors.values()) <= TOL[dtype], errors


def module_gradcheck(layer, x):
    """Finite differences on a Module, input and every parameter; in training mode every
    Dropout gets a freshly seeded generator before each forward so all calls drop the same."""
    dropouts = [m for m in layer.modules() if isinstance(m, npvit.nn.Dropout)]
    attns = [m for m in layer.modules() if isinstance(m, npvit.nn.MultiHeadAttention)]

    def forward(**inputs):
        for i, m in enumerate(dropouts + attns):
            m.rng = np.random.default_rng(i)
        return layer.forward(inputs["x"])

    def backward(g):
        layer.zero_grad()
        dx = layer.backward(g)
        return {"x": dx, **{n: p.grad for n, p in layer.named_parameters()}}

    # the parameters' own arrays are passed, so perturbing them perturbs the layer
    return check_gradients(forward, backward, {"x": x, **{n: p.data for n, p in layer.named_parameters()}})


def test_transformer_layer_gradients_with_dropout(rng):
    layer = npvit.nn.TransformerLayer(4, num_heads=2, drop=0.2, attn_drop=0.3).astype(np.float64).train()
    errors = module_gradcheck(layer, rng.standard_normal((2, 5, 4)))
    assert len(errors) == 13 and max(errors.values()) < 1e-7, errors


def test_linear_transformer_layer_gradients_with_dropout(rng):
    layer = npvit.nn.LinearTransformerLayer(3, drop=0.2).astype(np.float64).train()
    errors = module_gradcheck(layer, rng.standard_normal((2, 3, 2, 4)))
    assert len(errors) == 13 and max(errors.values()) < 1e-7, errors


def test_dropout_is_active_only_in_training(rng):
    layer = npvit.nn.TransformerLayer(8, num_heads=2, drop=0.5, attn_drop=0.5)
    x = rng.standard_normal((1, 6, 8)).astype(np.float32)
    assert not np.allclose(layer.train().forward(x), layer.train().forward(x))
    np.testing.assert_array_equal(layer.eval().forward(x), layer.eval().forward(x))
