"""The three attention units against PyTorch (timm's modules where timm has them), against
finite differences, and against the properties the MobileViTv2 paper relies on."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import softmax

import npvit
from npvit import functional as F
from npvit.gradcheck import check_gradients, wrap_op
from npvit.gradcheck import relative_error as rel_err
from op_reference import with_torch

TOL = {np.float64: 1e-10, np.float32: 1e-5}
dtypes = st.sampled_from([np.float64, np.float32])


def compare_with_torch(torch, ours, theirs, x, dtype, rng):
    """Load theirs' weights into ours, run both forward and backward with the same upstream
    gradient, and return the relative errors of y, dx and every parameter gradient."""
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    ours.astype(dtype).load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = x.astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y = ours.forward(x)
    dx = ours.backward(g)
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    (yt * torch.tensor(g)).sum().backward()
    errors = {"y": rel_err(y, yt.detach().numpy()), "dx": rel_err(dx, xt.grad.numpy())}
    grads = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        errors[name] = rel_err(grads[name].grad, p.grad.numpy())
    assert set(grads) == {n for n, _ in theirs.named_parameters()}
    return errors


@st.composite
def token_shapes(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 9)), heads * draw(st.integers(1, 4)), heads)


# --- against PyTorch -----------------------------------------------------------------------------
@with_torch
@given(token_shapes(), dtypes, st.integers(0, 2**16))
def test_multi_head_attention_matches_timm(torch, shape, dtype, seed):
    from timm.layers import Attention
    b, k, d, h = shape
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ours = npvit.nn.MultiHeadAttention(d, h).eval()
    errors = compare_with_torch(torch, ours, Attention(d, h, qkv_bias=True).eval(),
                                rng.standard_normal((b, k, d)), dtype, rng)
    assert max(errors.values()) <= TOL[dtype], errors


@with_torch
@given(st.integers(1, 2), st.integers(1, 6), st.integers(1, 4), st.integers(1, 7), dtypes,
       st.integers(0, 2**16))
def test_separable_attention_matches_timm(torch, b, d, p, n, dtype, seed):
    from timm.models.mobilevit import LinearSelfAttention
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ours = npvit.nn.SeparableSelfAttention(d).eval()
    errors = compare_with_torch(torch, ours, LinearSelfAttention(d).eval(),
                                rng.standard_normal((b, d, p, n)), dtype, rng)
    assert max(errors.values()) <= TOL[dtype], errors


def test_separable_attention_on_tokens_is_the_p_equals_1_layout(rng):
    att = npvit.nn.SeparableSelfAttention(6).astype(np.float64)
    tokens = rng.standard_normal((2, 5, 6))
    g = rng.standard_normal((2, 5, 6))
    y_tokens = att.forward(tokens)
    dx_tokens = att.backward(g)
    grads_tokens = {n: p.grad.copy() for n, p in att.named_parameters()}
    att.zero_grad()
    as_layout = lambda t: t.transpose(0, 2, 1)[:, :, None, :]
    y = att.forward(as_layout(tokens))
    dx = att.backward(as_layout(g))
    np.testing.assert_allclose(as_layout(y_tokens), y, rtol=0, atol=1e-14)
    np.testing.assert_allclose(as_layout(dx_tokens), dx, rtol=0, atol=1e-14)
    for n, p in att.named_parameters():
        np.testing.assert_allclose(grads_tokens[n], p.grad, rtol=0, atol=1e-13)


def torch_linformer(torch, x, w_qkv, b_qkv, e, f, w_proj, b_proj, heads):
    """Linformer written directly in PyTorch (timm has no Linformer)."""
    b, k, d = x.shape
    q, key, v = torch.nn.functional.linear(x, w_qkv, b_qkv).chunk(3, dim=-1)
    key, v = e @ key, f @ v                                           # (B, p, d)
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)
    q, key, v = split(q), split(key), split(v)
    attn = torch.softmax(q @ key.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, k, d)
    return torch.nn.functional.linear(out, w_proj, b_proj)


@with_torch
@given(token_shapes(), st.integers(1, 5), dtypes, st.integers(0, 2**16))
def test_linformer_matches_torch(torch, shape, p, dtype, seed):
    b, k, d, h = shape
    rng = np.random.default_rng(seed)
    npvit.nn.manual_seed(seed)       # PyTorch-style fan-in initialisation, as in the timm tests
    ours = npvit.nn.LinformerAttention(d, h, seq_len=k, proj_len=p).astype(dtype)
    x = rng.standard_normal((b, k, d)).astype(dtype)
    g = rng.standard_normal((b, k, d)).astype(dtype)
    y = ours.forward(x)
    dx = ours.backward(g)
    names = ["qkv.weight", "qkv.bias", "key_proj", "value_proj", "proj.weight", "proj.bias"]
    params = dict(ours.named_parameters())
    assert set(params) == set(names)
    tensors = [torch.tensor(params[n].data, requires_grad=True) for n in names]
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_linformer(torch, xt, *tensors, h)
    (yt * torch.tensor(g)).sum().backward()
    assert rel_err(y, yt.detach().numpy()) <= TOL[dtype]
    assert rel_err(dx, xt.grad.numpy()) <= TOL[dtype]
    for n, t in zip(names, tensors):
        assert rel_err(params[n].grad, t.grad.numpy()) <= TOL[dtype], n


# --- finite differences ----------------------------------------------------------------------------


def test_multi_head_attention_gradients_with_attention_dropout(rng):
    # a fresh generator with the same seed on every call, so every call drops the same weights
    fwd, bwd = wrap_op(
        lambda **kw: F.multi_head_attention_forward(**kw, num_heads=2, attn_drop=0.3, training=True,
                                                    rng=np.random.default_rng(7)),
        F.multi_head_attention_backward, ["x", "w_qkv", "b_qkv", "w_proj", "b_proj"])
    inputs = dict(x=rng.standard_normal((2, 5, 4)), w_qkv=rng.standard_normal((12, 4)),
                  b_qkv=rng.standard_normal(12), w_proj=rng.standard_normal((4, 4)),
                  b_proj=rng.standard_normal(4))
    errors = check_gradients(fwd, bwd, inputs)
    assert len(errors) == 5 and max(errors.values()) < 1e-7, errors


def test_linformer_gradients(rng):
    fwd, bwd = wrap_op(lambda **kw: F.linformer_attention_forward(**kw, num_heads=2),
                               F.linformer_attention_backward,
                               ["x", "w_qkv", "b_qkv", "e", "f", "w_proj", "b_proj"])
    inputs = dict(x=rng.standard_normal((2, 6, 4)), w_qkv=rng.standard_normal((12, 4)),
                  b_qkv=rng.standard_normal(12), e=rng.standard_normal((3, 6)),
                  f=rng.standard_normal((3, 6)), w_proj=rng.standard_normal((4, 4)),
                  b_proj=rng.standard_normal(4))
    errors = check_gradients(fwd, bwd, inputs)
    assert len(errors) == 7 and max(errors.values()) < 1e-7, errors


def test_separable_attention_gradients(rng):
    fwd, bwd = wrap_op(F.separable_attention_forward, F.separable_attention_backward,
                               ["x", "w_qkv", "b_qkv", "w_out", "b_out"])
    d = 3
    inputs = dict(x=rng.standard_normal((2, d, 2, 5)), w_qkv=rng.standard_normal((1 + 2 * d, d, 1, 1)),
                  b_qkv=rng.standard_normal(1 + 2 * d), w_out=rng.standard_normal((d, d, 1, 1)),
                  b_out=rng.standard_normal(d))
    errors = check_gradients(fwd, bwd, inputs)
    assert len(errors) == 5 and max(errors.values()) < 1e-7, errors


# --- properties -----------------------------------------------------------------------------------
separable_shapes = st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 3), st.integers(2, 9))


@given(separable_shapes, st.integers(0, 2**16))
def test_separable_attention_is_permutation_equivariant_and_its_context_invariant(shape, seed):
    """Permuting the N tokens permutes the output the same way and leaves c_v unchanged."""
    b, d, p, n = shape
    rng = np.random.default_rng(seed)
    params = (rng.standard_normal((1 + 2 * d, d, 1, 1)), rng.standard_normal(1 + 2 * d),
              rng.standard_normal((d, d, 1, 1)), rng.standard_normal(d))
    x = rng.standard_normal((b, d, p, n))
    perm = rng.permutation(n)
    y, cache = F.separable_attention_forward(x, *params)
    y_perm, cache_perm = F.separable_attention_forward(x[..., perm], *params)
    np.testing.assert_allclose(y_perm, y[..., perm], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache_perm["context_vector"], cache["context_vector"],
                               rtol=1e-12, atol=1e-12)
    # each of the P pixel positions is its own sequence: running one alone gives its output
    one = rng.integers(p)
    y_one, _ = F.separable_attention_forward(x[:, :, one:one + 1], *params)
    np.testing.assert_allclose(y_one, y[:, :, one:one + 1], rtol=1e-12, atol=1e-12)
    # the context scores are a distribution over the N tokens of each position
    cs = cache["context_scores"]
    assert cs.shape == (b, 1, p, n) and (cs >= 0).all()
    np.testing.assert_allclose(cs.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


@given(token_shapes(), st.integers(0, 2**16))
def test_attention_weights_are_distributions_over_keys(shape, seed):
    b, k, d, h = shape
    rng = np.random.default_rng(seed)
    mha = npvit.nn.MultiHeadAttention(d, h).astype(np.float64)
    mha.forward(rng.standard_normal((b, k, d)))
    assert mha.last_attention.shape == (b, h, k, k) and (mha.last_attention >= 0).all()
    np.testing.assert_allclose(mha.last_attention.sum(-1), 1.0, rtol=0, atol=1e-12)
    lin = npvit.nn.LinformerAttention(d, h, seq_len=k, proj_len=3).astype(np.float64)
    lin.forward(rng.standard_normal((b, k, d)))
    assert lin.last_attention.shape == (b, h, k, 3)
    np.testing.assert_allclose(lin.last_attention.sum(-1), 1.0, rtol=0, atol=1e-12)


@given(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**16))
def test_one_head_attention_is_the_textbook_formula(k, d, seed):
    """softmax(Q K^T / sqrt(d)) V, one token at a time, then the output projection."""
    rng = np.random.default_rng(seed)
    mha = npvit.nn.MultiHeadAttention(d, 1).astype(np.float64)
    x = rng.standard_normal((1, k, d))
    y = mha.forward(x)[0]
    w, bias = mha.qkv.weight.data, mha.qkv.bias.data
    Q, K, V = (x[0] @ w[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d] for i in range(3))
    for t in range(k):
        a = softmax(K @ Q[t] / np.sqrt(d))
        expected = (a @ V) @ mha.proj.weight.data.T + mha.proj.bias.data
        np.testing.assert_allclose(y[t], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mha.last_attention[0, 0, t], a, rtol=1e-12, atol=1e-14)


def test_modules_reject_wrong_shapes_with_one_clear_error():
    with pytest.raises(npvit.errors.NpvitError, match="divisible"):
        npvit.nn.MultiHeadAttention(10, 4)
    with pytest.raises(npvit.errors.NpvitError, match="built for 8 tokens"):
        npvit.nn.LinformerAttention(8, 2, seq_len=8, proj_len=4).forward(np.zeros((1, 9, 8), np.float32))
    with pytest.raises(npvit.errors.NpvitError, match=r"\(B, 8, P, N\)"):
        npvit.nn.SeparableSelfAttention(8).forward(np.zeros((1, 4, 2, 2), np.float32))
