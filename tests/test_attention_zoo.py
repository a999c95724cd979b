"""The efficient-attention zoo (EfficientViT, EfficientFormer, TinyViT, LookupViT, MPCViT)
against timm's modules where timm has them, against PyTorch references written here from the
papers where it does not, and against finite differences."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvit
from npvit import functional as F
from npvit.gradcheck import check_gradients, wrap_op
from npvit.gradcheck import relative_error as rel_err
from op_reference import with_torch

TOL = {np.float64: 1e-10, np.float32: 1e-5}
dtypes = st.sampled_from([np.float64, np.float32])


def randomise(torch, module, seed):
    """Random weights, attention biases and BatchNorm statistics (timm starts biases at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    return module


def gradient_errors(pairs, dtype, floor_always=False):
    """name -> (ours, reference) gradients -> name -> error. Where a gradient is a small
    difference of much larger terms, rounding is relative to those terms
    (op_reference.assert_close): in float32 sums over tokens cancel, and in training BatchNorm's
    batch statistics make some gradients zero in theory (a shift of a head's queries is
    normalised away). There, each error is scaled by at least the largest gradient of the unit;
    in float64 (eval) each gradient is compared on its own scale."""
    floor = 0.0
    if floor_always or dtype == np.float32:
        floor = max(np.abs(ref).max(initial=0.0) for _, ref in pairs.values())
    return {name: float(np.abs(np.asarray(a, np.float64) - ref).max(initial=0.0)
                        / max(np.abs(ref).max(initial=0.0), np.abs(a).max(initial=0.0), floor, 1e-12))
            for name, (a, ref) in pairs.items()}


def compare(torch, ours, theirs, x, dtype, rng, training=False):
    """Load theirs' state_dict into ours (1:1, strict), run forward and backward on both with
    the same upstream gradient, return the relative errors of y, dx and every parameter grad
    (and, in training, of the updated BatchNorm running statistics).

    The reference always runs in float64 on the same (float32-rounded, for float32) weights and
    inputs, so a float32 error is npvit's own rounding, not the sum of two libraries' roundings.
    """
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32).to(torch.float64)
    theirs.train(training)                # (timm's CascadedGroupAttention.train returns None)
    ours.astype(dtype).train(training)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = x.astype(dtype)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = theirs(xt)
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    (yt * torch.tensor(g.astype(np.float64))).sum().backward()
    y = ours.forward(x)
    dx = ours.backward(g)
    grads = dict(ours.named_parameters())
    assert set(grads) == {n for n, _ in theirs.named_parameters()}
    pairs = {"dx": (dx, xt.grad.numpy())}
    pairs.update({name: (grads[name].grad, p.grad.numpy()) for name, p in theirs.named_parameters()})
    errors = {"y": rel_err(y, yt.detach().numpy()), **gradient_errors(pairs, dtype, training)}
    if training:
        state = ours.state_dict()
        for name, b in theirs.state_dict().items():
            if "running" in name:
                errors[name] = rel_err(state[name], b.numpy())
    return errors


# --- against timm ----------------------------------------------------------------------------------
@with_torch
@given(st.sampled_from([1, 2, 4]), st.integers(1, 3), st.sampled_from([1, 2]), st.integers(1, 4),
       st.lists(st.sampled_from([1, 3, 5]), min_size=4, max_size=4), st.booleans(), dtypes,
       st.integers(0, 2**16))
def test_cascaded_group_attention_matches_timm(torch, heads, key_dim, ratio, resolution, kernels,
                                               training, dtype, seed):
    from timm.models.efficientvit_msra import CascadedGroupAttention
    if training:               # one channel per head: train-mode BatchNorm cancels its conv weight
        key_dim = max(key_dim, 2)
        # batch statistics of a few values amplify float32 rounding past 1e-5 (measured up to
        # 2e-5 in y): training mode is compared in float64, eval in both
        dtype = np.float64
    dim = heads * ratio * key_dim
    rng = np.random.default_rng(seed)
    theirs = randomise(torch, CascadedGroupAttention(dim, key_dim, heads, ratio, resolution, kernels), seed)
    ours = npvit.nn.CascadedGroupAttention(dim, key_dim, heads, ratio, resolution, kernels)
    assert np.array_equal(ours.attention_bias_idxs, theirs.attention_bias_idxs.numpy())
    # Batch 2 or more: at batch 1 (key_dim >= 2) torch 2.14.1's autograd of this module fails
    # its own torch.autograd.gradcheck (measured; npvit agrees with torch's finite differences
    # there), so batch 1 is checked against finite differences below. Training: batch
    # statistics over very few values (B * r * r) make float32 gradients ill-conditioned.
    b = 4 if training and resolution == 1 else 2
    errors = compare(torch, ours, theirs, rng.standard_normal((b, dim, resolution, resolution)),
                     dtype, rng, training)
    assert max(errors.values()) <= TOL[dtype], errors


@with_torch
@given(st.sampled_from([1, 2, 4]), st.integers(1, 4), st.sampled_from([1, 2, 4]),
       st.tuples(st.integers(1, 4), st.integers(1, 4)), dtypes, st.integers(0, 2**16))
def test_efficientformer_attention_matches_timm(torch, heads, key_dim, ratio, resolution, dtype, seed):
    from timm.models.efficientformer import Attention
    rows, cols = resolution
    dim = 3 * heads
    rng = np.random.default_rng(seed)
    theirs = randomise(torch, Attention(dim, key_dim, heads, ratio, resolution), seed)
    ours = npvit.nn.EfficientFormerAttention(dim, key_dim, heads, ratio, resolution)
    assert "attention_bias_idxs" in ours.state_dict()        # a persistent buffer, as in timm
    errors = compare(torch, ours, theirs, rng.standard_normal((2, rows * cols, dim)), dtype, rng)
    assert np.array_equal(ours.attention_bias_idxs, theirs.attention_bias_idxs.numpy())
    assert max(errors.values()) <= TOL[dtype], errors


@with_torch
@given(st.sampled_from([1, 2, 4]), st.integers(1, 4), st.sampled_from([1, 2]),
       st.tuples(st.integers(1, 4), st.integers(1, 4)), dtypes, st.integers(0, 2**16))
def test_tinyvit_attention_matches_timm(torch, heads, key_dim, ratio, resolution, dtype, seed):
    from timm.models.tiny_vit import Attention
    rows, cols = resolution
    dim = 4 * heads            # LayerNorm over 2 channels has a float32-ill-conditioned backward
    rng = np.random.default_rng(seed)
    theirs = randomise(torch, Attention(dim, key_dim, heads, ratio, resolution), seed)
    ours = npvit.nn.TinyViTAttention(dim, key_dim, heads, ratio, resolution)
    assert "attention_bias_idxs" not in ours.state_dict()    # non-persistent in timm
    assert np.array_equal(ours.attention_bias_idxs, theirs.attention_bias_idxs.numpy())
    errors = compare(torch, ours, theirs, rng.standard_normal((3, rows * cols, dim)), dtype, rng)
    assert max(errors.values()) <= TOL[dtype], errors


def torch_tinyvit_window_attention(torch, attn, x, window):
    """TinyVitBlock's partition -> attention -> merge (timm's own code path, with padding)."""
    b, h, w, c = x.shape
    pad_b, pad_r = (window - h % window) % window, (window - w % window) % window
    x = torch.nn.functional.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    ph, pw = h + pad_b, w + pad_r
    nh, nw = ph // window, pw // window
    x = x.view(b, nh, window, nw, window, c).transpose(2, 3).reshape(b * nh * nw, window * window, c)
    x = attn(x)
    x = x.view(b, nh, nw, window, window, c).transpose(2, 3).reshape(b, ph, pw, c)
    return x[:, :h, :w]


@with_torch
@given(st.integers(1, 2), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), dtypes,
       st.integers(0, 2**16))
def test_window_attention_with_partition_and_merge_matches_timm_block(torch, b, h, w, window,
                                                                      dtype, seed):
    from timm.models.tiny_vit import Attention
    rng = np.random.default_rng(seed)
    dim, heads = 4, 2
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    theirs = randomise(torch, Attention(dim, 2, heads, 1, (window, window)), seed).to(tdtype)
    theirs.eval()
    ours = npvit.nn.TinyViTAttention(dim, 2, heads, 1, (window, window)).astype(dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((b, h, w, dim)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    windows, part_cache = F.window_partition_forward(x, window)
    y, merge_cache = F.window_merge_forward(ours.forward(windows), (h, w), window)
    dx = F.window_partition_backward(ours.backward(F.window_merge_backward(g, merge_cache)), part_cache)
    theirs = theirs.to(torch.float64)                     # the reference in float64, as compare()
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = torch_tinyvit_window_attention(torch, theirs, xt, window)
    (yt * torch.tensor(g.astype(np.float64))).sum().backward()
    assert rel_err(y, yt.detach().numpy()) <= TOL[dtype]
    assert rel_err(dx, xt.grad.numpy()) <= TOL[dtype]


@given(st.integers(1, 2), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.integers(1, 3))
def test_window_merge_inverts_partition_and_they_are_adjoint(b, h, w, window, c):
    rng = np.random.default_rng(h * 31 + w)
    x = rng.standard_normal((b, h, w, c))
    windows = F.window_partition(x, window)
    assert windows.shape[1:] == (window * window, c)
    np.testing.assert_array_equal(F.window_merge(windows, (h, w), window), x)
    u = rng.standard_normal(windows.shape)
    # <partition(x), u> == <x, merge(u)>: merge is partition's backward
    np.testing.assert_allclose((windows * u).sum(), (x * F.window_merge(u, (h, w), window)).sum(),
                               rtol=1e-12)


# --- against PyTorch references written from the papers -------------------------------------------
def torch_lookup_cross_attention(torch, x, z, w_q, b_q, w_kv, b_kv, w_zo, b_zo, w_zv, b_zv, w_xo,
                                 b_xo, heads, mixer=lambda t: t):
    """LookupViT (Koner et al. 2024): one score matrix S = q_z K_x^T / sqrt(d_h) per head;
    compressed tokens gather with softmax over the lookup tokens, are processed (``mixer``; in
    a LookupViT block self-attention and an MLP), and the lookup tokens read them back
    (projected) with the softmax of the same S over the compressed tokens."""
    lin = torch.nn.functional.linear
    b, k, d = x.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)
    merge = lambda t: t.transpose(1, 2).reshape(b, t.shape[2], d)
    q = split(lin(z, w_q, b_q))
    key, value = (split(t) for t in lin(x, w_kv, b_kv).chunk(2, dim=-1))
    s = q @ key.transpose(-1, -2) / (d // heads) ** 0.5                  # (B, h, M, k)
    z_out = mixer(lin(merge(torch.softmax(s, dim=-1) @ value), w_zo, b_zo))
    z_value = split(lin(z_out, w_zv, b_zv))
    x_out = lin(merge(torch.softmax(s, dim=-2).transpose(-1, -2) @ z_value), w_xo, b_xo)
    return x_out, z_out


LOOKUP_PARAMS = ["q.weight", "q.bias", "kv.weight", "kv.bias", "proj_compressed.weight",
                 "proj_compressed.bias", "value_compressed.weight", "value_compressed.bias",
                 "proj_lookup.weight", "proj_lookup.bias"]


@with_torch
@given(st.integers(1, 2), st.integers(2, 9), st.integers(2, 5), st.sampled_from([1, 2, 4]), st.booleans(),
       dtypes, st.integers(0, 2**16))
def test_lookup_cross_attention_matches_torch_reference(torch, b, k, m, heads, with_mixer, dtype, seed):
    rng = np.random.default_rng(seed)
    d = 2 * heads
    npvit.nn.manual_seed(seed)
    mixer = npvit.nn.Linear(d, d) if with_mixer else None     # stands in for a block's layers
    ours = npvit.nn.LookupCrossAttention(d, heads, num_compressed=m, compressed_mixer=mixer).astype(dtype)
    x = rng.standard_normal((b, k, d)).astype(dtype)
    z = rng.standard_normal((b, m, d)).astype(dtype)
    g_x, g_z = (rng.standard_normal(s).astype(dtype) for s in ((b, k, d), (b, m, d)))
    y = ours.forward(x, z)
    z_out = ours.last_compressed
    dx = ours.backward(g_x, g_z)
    params = dict(ours.named_parameters())
    names = LOOKUP_PARAMS + (["compressed_mixer.weight", "compressed_mixer.bias"] if with_mixer else [])
    assert set(params) == set(names) | {"compressed_tokens"}
    f64 = lambda a, grad=True: torch.tensor(a.astype(np.float64), requires_grad=grad)  # as compare()
    tensors = [f64(params[n].data) for n in names]
    xt, zt = f64(x), f64(z)
    mix = (lambda t: torch.nn.functional.linear(t, *tensors[-2:])) if with_mixer else (lambda t: t)
    yt, zt_out = torch_lookup_cross_attention(torch, xt, zt, *tensors[:10], heads, mix)
    ((yt * f64(g_x, False)).sum() + (zt_out * f64(g_z, False)).sum()).backward()
    assert rel_err(y, yt.detach().numpy()) <= TOL[dtype]
    assert rel_err(z_out, zt_out.detach().numpy()) <= TOL[dtype]
    pairs = {"dx": (dx, xt.grad.numpy()), "dz": (ours.last_dz, zt.grad.numpy())}
    pairs.update({n: (params[n].grad, t.grad.numpy()) for n, t in zip(names, tensors)})
    errors = gradient_errors(pairs, dtype)
    assert max(errors.values()) <= TOL[dtype], errors


def test_lookup_cross_attention_uses_its_own_compressed_tokens_without_z(rng):
    att = npvit.nn.LookupCrossAttention(4, 2, num_compressed=3).astype(np.float64)
    x = rng.standard_normal((2, 5, 4))
    y = att.forward(x)
    z = np.broadcast_to(att.compressed_tokens.data, (2, 3, 4)).copy()
    att.backward(np.ones_like(y))
    grad_own = att.compressed_tokens.grad.copy()
    np.testing.assert_allclose(att.forward(x, z), y, rtol=0, atol=1e-14)
    att.backward(np.ones_like(y))
    np.testing.assert_allclose(att.last_dz.sum(axis=0), grad_own, rtol=1e-12, atol=1e-14)


def torch_mpc_attention(torch, x, w_qkv, w_proj, b_proj, heads, kind):
    """MPCViT (Zeng et al. 2023): s = q k^T / sqrt(d_h); softmax, ReLU softmax
    ReLU(s) / (sum ReLU(s) + 1e-5), or scaling attention s / k."""
    b, k, d = x.shape
    q, key, v = (t.reshape(b, k, heads, d // heads).transpose(1, 2)
                 for t in torch.nn.functional.linear(x, w_qkv).chunk(3, dim=-1))
    s = q @ key.transpose(-1, -2) / (d // heads) ** 0.5
    if kind == "softmax":
        a = torch.softmax(s, dim=-1)
    elif kind == "relu":
        a = torch.relu(s) / (torch.relu(s).sum(dim=-1, keepdim=True) + 1e-5)
    else:
        a = s / k
    return torch.nn.functional.linear((a @ v).transpose(1, 2).reshape(b, k, d), w_proj, b_proj)


@with_torch
@given(st.integers(1, 2), st.integers(1, 9), st.sampled_from([1, 2, 4]),
       st.sampled_from(["softmax", "relu", "scaling"]), dtypes, st.integers(0, 2**16))
def test_mpc_attention_matches_torch_reference(torch, b, k, heads, kind, dtype, seed):
    rng = np.random.default_rng(seed)
    d = 2 * heads
    npvit.nn.manual_seed(seed)
    ours = npvit.nn.MPCAttention(d, heads, kind=kind).astype(dtype)
    x = rng.standard_normal((b, k, d)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y = ours.forward(x)
    dx = ours.backward(g)
    names = ["qkv.weight", "proj.weight", "proj.bias"]
    params = dict(ours.named_parameters())
    assert set(params) == set(names)
    f64 = lambda a, grad=True: torch.tensor(a.astype(np.float64), requires_grad=grad)  # as compare()
    tensors = [f64(params[n].data) for n in names]
    xt = f64(x)
    yt = torch_mpc_attention(torch, xt, *tensors, heads, kind)
    (yt * f64(g, False)).sum().backward()
    assert rel_err(y, yt.detach().numpy()) <= TOL[dtype]
    pairs = {"dx": (dx, xt.grad.numpy())}
    pairs.update({n: (params[n].grad, t.grad.numpy()) for n, t in zip(names, tensors)})
    errors = gradient_errors(pairs, dtype)
    assert max(errors.values()) <= TOL[dtype], errors


@with_torch
@given(st.lists(st.sampled_from(["softmax", "relu", "scaling"]), min_size=4, max_size=4), dtypes,
       st.integers(0, 2**16))
def test_mpc_heterogeneous_heads_match_torch_reference(torch, kinds, dtype, seed):
    """A kind per head: each head as the single-kind torch reference computes it."""
    rng = np.random.default_rng(seed)
    d, heads, k = 8, 4, 6
    npvit.nn.manual_seed(seed)
    ours = npvit.nn.MPCAttention(d, heads, kind=kinds).astype(dtype)
    x = rng.standard_normal((2, k, d)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y = ours.forward(x)
    dx = ours.backward(g)
    f64 = lambda a: torch.tensor(a.astype(np.float64), requires_grad=True)
    xt = f64(x)
    w_qkv, w_proj, b_proj = (f64(ours.state_dict()[n]) for n in ("qkv.weight", "proj.weight", "proj.bias"))
    # head j alone: zero the other heads' output columns, so y = sum_j y_j - (h - 1) b_proj
    masks = [torch.zeros(d, dtype=torch.float64).index_fill_(0, torch.arange(j * 2, j * 2 + 2), 1.0)
             for j in range(heads)]
    yt = sum(torch_mpc_attention(torch, xt, w_qkv, w_proj * masks[j], b_proj, heads, kinds[j])
             for j in range(heads)) - (heads - 1) * b_proj
    (yt * torch.tensor(g.astype(np.float64))).sum().backward()
    assert rel_err(y, yt.detach().numpy()) <= TOL[dtype]
    errors = gradient_errors({"dx": (dx, xt.grad.numpy()),
                              "qkv.weight": (ours.qkv.weight.grad, w_qkv.grad.numpy()),
                              "proj.weight": (ours.proj.weight.grad, w_proj.grad.numpy())}, dtype)
    assert max(errors.values()) <= TOL[dtype], errors


def test_mpc_softmax_kind_is_multi_head_attention(rng):
    mha = npvit.nn.MultiHeadAttention(8, 2).astype(np.float64)
    mpc = npvit.nn.MPCAttention(8, 2, kind="softmax", qkv_bias=True).astype(np.float64)
    mpc.load_state_dict(mha.state_dict())
    x = rng.standard_normal((2, 6, 8))
    np.testing.assert_allclose(mpc.forward(x), mha.forward(x), rtol=1e-13, atol=1e-14)
    relu = npvit.nn.MPCAttention(8, 2, kind="relu").astype(np.float64)
    relu.forward(x)
    a = relu.last_attention                              # non-negative, rows sum to just below 1
    assert (a >= 0).all() and (a.sum(-1) <= 1).all()


# --- finite differences -----------------------------------------------------------------------------
def conv_bn(rng, c_out, c_in, kernel):
    return (rng.standard_normal((c_out, c_in, kernel, kernel)), rng.standard_normal(c_out),
            rng.standard_normal(c_out), 0.1 * rng.standard_normal(c_out), rng.random(c_out) + 0.5)


@pytest.mark.parametrize("training, batch", [(False, 1), (False, 2), (True, 2)])
def test_cascaded_group_attention_gradients(rng, training, batch):
    heads, key_dim, val_dim, r = 2, 2, 3, 3
    dim = heads * val_dim
    qkvs = [conv_bn(rng, 2 * key_dim + val_dim, val_dim, 1) for _ in range(heads)]
    dws = [conv_bn(rng, key_dim, 1, 3) for _ in range(heads)]
    proj = conv_bn(rng, dim, heads * val_dim, 1)
    # every trained array by name; the running statistics stay out (and are re-copied per call,
    # since a training forward updates them in place)
    arrays = {"x": rng.standard_normal((batch, dim, r, r)), "table": rng.standard_normal((heads, r * r))}
    for group, convs in (("qkv", qkvs), ("dw", dws), ("proj", [proj])):
        for i, (w, gamma, beta, _, _) in enumerate(convs):
            arrays.update({f"{group}{i}_w": w, f"{group}{i}_gamma": gamma, f"{group}{i}_beta": beta})
    index = F.relative_position_index(r, r)

    def forward(**a):
        unpack = lambda group, convs: [(a[f"{group}{i}_w"], a[f"{group}{i}_gamma"], a[f"{group}{i}_beta"],
                                        m.copy(), v.copy()) for i, (_, _, _, m, v) in enumerate(convs)]
        return F.cascaded_group_attention_forward(a["x"], unpack("qkv", qkvs), unpack("dw", dws),
                                                  unpack("proj", [proj])[0], a["table"], index,
                                                  key_dim, val_dim, training)

    def backward(dy, cache):
        dx, grads = F.cascaded_group_attention_backward(dy, cache)
        out = {"x": dx, "table": grads["attention_biases"]}
        for group, per in (("qkv", grads["qkvs"]), ("dw", grads["dws"]), ("proj", [grads["proj"]])):
            for i, (dw, dgamma, dbeta) in enumerate(per):
                out.update({f"{group}{i}_w": dw, f"{group}{i}_gamma": dgamma, f"{group}{i}_beta": dbeta})
        return tuple(out[n] for n in arrays)

    fwd, bwd = wrap_op(forward, backward, list(arrays))
    errors = check_gradients(fwd, bwd, arrays, max_coords=24)
    assert len(errors) == len(arrays) and max(errors.values()) < 1e-6, errors


def test_biased_and_tinyvit_attention_gradients(rng):
    heads, key_dim, val_dim, n, c = 2, 3, 2, 6, 4
    index = F.relative_position_index(2, 3)
    common = dict(w_qkv=rng.standard_normal((heads * (2 * key_dim + val_dim), c)),
                  b_qkv=rng.standard_normal(heads * (2 * key_dim + val_dim)),
                  w_proj=rng.standard_normal((c, heads * val_dim)), b_proj=rng.standard_normal(c),
                  attention_biases=rng.standard_normal((heads, 6)))
    names = ["w_qkv", "b_qkv", "w_proj", "b_proj", "attention_biases"]
    fwd, bwd = wrap_op(lambda **kw: F.biased_attention_forward(**kw, bias_index=index, num_heads=heads,
                                                               key_dim=key_dim, val_dim=val_dim),
                       F.biased_attention_backward, ["x", *names])
    errors = check_gradients(fwd, bwd, dict(x=rng.standard_normal((2, n, c)), **common))
    assert len(errors) == 6 and max(errors.values()) < 1e-7, errors
    fwd, bwd = wrap_op(lambda **kw: F.tinyvit_attention_forward(**kw, bias_index=index, num_heads=heads,
                                                                key_dim=key_dim, val_dim=val_dim),
                       F.tinyvit_attention_backward, ["x", "norm_weight", "norm_bias", *names])
    errors = check_gradients(fwd, bwd, dict(x=rng.standard_normal((2, n, c)),
                                            norm_weight=rng.standard_normal(c),
                                            norm_bias=rng.standard_normal(c), **common))
    assert len(errors) == 8 and max(errors.values()) < 1e-7, errors


def test_window_partition_and_merge_gradients(rng):
    fwd, bwd = wrap_op(lambda x: F.window_partition_forward(x, 3), F.window_partition_backward, ["x"])
    assert max(check_gradients(fwd, bwd, {"x": rng.standard_normal((1, 4, 5, 2))}).values()) < 1e-8
    fwd, bwd = wrap_op(lambda w: F.window_merge_forward(w, (4, 5), 3), F.window_merge_backward, ["w"])
    assert max(check_gradients(fwd, bwd, {"w": rng.standard_normal((4, 9, 2))}).values()) < 1e-8


def test_lookup_cross_attention_gradients(rng):
    b, k, m, d = 2, 7, 3, 4
    names = ["x", "z", "w_q", "b_q", "w_kv", "b_kv", "w_z_out", "b_z_out", "w_z_value", "b_z_value",
             "w_x_out", "b_x_out"]
    shapes = [(b, k, d), (b, m, d), (d, d), (d,), (2 * d, d), (2 * d,), (d, d), (d,), (d, d), (d,),
              (d, d), (d,)]
    inputs = {n: rng.standard_normal(s) for n, s in zip(names, shapes)}

    def forward(**kw):                                   # both outputs, as one array
        (x_out, z_out), cache = F.lookup_cross_attention_forward(**kw, num_heads=2)
        return np.concatenate([x_out, z_out], axis=1), cache

    def backward(dy, cache):
        return F.lookup_cross_attention_backward(dy[:, :k], dy[:, k:], cache)

    fwd, bwd = wrap_op(forward, backward, names)
    errors = check_gradients(fwd, bwd, inputs)
    assert len(errors) == 12 and max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("kind", ["softmax", "relu", "scaling", ("relu", "scaling")])
def test_mpc_attention_gradients(rng, kind):
    fwd, bwd = wrap_op(lambda **kw: F.mpc_attention_forward(**kw, num_heads=2, kind=kind),
                       F.mpc_attention_backward, ["x", "w_qkv", "b_qkv", "w_proj", "b_proj"])
    inputs = dict(x=rng.standard_normal((2, 5, 4)), w_qkv=rng.standard_normal((12, 4)),
                  b_qkv=rng.standard_normal(12), w_proj=rng.standard_normal((4, 4)),
                  b_proj=rng.standard_normal(4))
    errors = check_gradients(fwd, bwd, inputs)
    assert len(errors) == 5 and max(errors.values()) < 1e-7, errors


def test_modules_reject_bad_shapes_with_one_clear_error():
    with pytest.raises(npvit.errors.NpvitError, match="attn_ratio"):
        npvit.nn.CascadedGroupAttention(64, 16, 4, attn_ratio=2, resolution=4)
    with pytest.raises(npvit.errors.NpvitError, match="one kernel per head"):
        npvit.nn.CascadedGroupAttention(64, 2, 8, attn_ratio=4, resolution=4)
    with pytest.raises(npvit.errors.NpvitError, match=r"\(B, 16, 4, 4\)"):
        npvit.nn.CascadedGroupAttention(16, 1, 4, 4, 4).forward(np.zeros((1, 16, 5, 5), np.float32))
    with pytest.raises(npvit.errors.NpvitError, match="built for 49 tokens"):
        npvit.nn.EfficientFormerAttention(8, 2, 2).forward(np.zeros((1, 48, 8), np.float32))
    with pytest.raises(npvit.errors.NpvitError, match="kind must be one of"):
        npvit.nn.MPCAttention(8, 2, kind="sigmoid")
    with pytest.raises(npvit.errors.NpvitError, match="compressed tokens"):
        npvit.nn.LookupCrossAttention(8, 2).forward(np.zeros((2, 5, 8)), np.zeros((1, 3, 8)))


def test_the_attention_of_real_timm_models_loads_one_to_one(torch):
    """The attention modules inside timm's efficientvit_m0 and tiny_vit_5m_224 (randomised;
    efficientformer's is built from its class above): their state_dicts load strictly and the
    outputs and gradients agree."""
    import timm
    rng = np.random.default_rng(0)
    cases = [("efficientvit_m0", "CascadedGroupAttention"), ("tiny_vit_5m_224", "Attention")]
    for name, cls in cases:
        model = timm.create_model(name, pretrained=False)
        theirs = randomise(torch, next(m for m in model.modules() if type(m).__name__ == cls), 0)
        if name.startswith("efficientvit"):
            dim = theirs.qkvs[0].conv.in_channels * theirs.num_heads
            ours = npvit.nn.CascadedGroupAttention(dim, theirs.key_dim, theirs.num_heads, theirs.attn_ratio,
                                                   theirs.resolution, [d.conv.kernel_size[0] for d in theirs.dws])
            x = rng.standard_normal((2, dim, theirs.resolution, theirs.resolution))
        else:
            dim = theirs.qkv.in_features
            ours = npvit.nn.TinyViTAttention(dim, theirs.key_dim, theirs.num_heads, theirs.attn_ratio,
                                             theirs.resolution)
            x = rng.standard_normal((2, theirs.resolution[0] * theirs.resolution[1], dim))
        errors = compare(torch, ours, theirs, x, np.float64, rng)
        assert max(errors.values()) <= 1e-10, (name, errors)
