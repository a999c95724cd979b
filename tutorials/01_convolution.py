# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 1. Convolution as im2col + GEMM, and its backward
#
# Every MobileViT layer outside the transformer is a convolution: the 3x3 stem, the 1x1
# expansions and projections of the inverted residuals, their 3x3 *depthwise* convolutions,
# and the 1x1 convolutions that MobileViTv2 uses instead of linear layers. This tutorial
# derives how npvit computes a convolution and its gradients (`npvit/functional/conv.py`)
# and checks every step numerically.
#
# Notation (PyTorch's NCHW layout): input `x` (N, C_in, H, W), weight `W` (C_out, C_in, kh, kw),
# bias `b` (C_out,), stride `s`, zero padding `p`. The output has
# `H_out = (H + 2p - kh) // s + 1` rows (and the same rule for columns), and
#
# $$ y[n, o, a, b] = b_o + \sum_{c, i, j} W[o, c, i, j] \; x_{pad}[n, c, a s + i, b s + j]. $$
#
# (Deep-learning "convolution" is a cross-correlation: the kernel is not flipped.)

# %%
import numpy as np

import npvit
from npvit import functional as F
from npvit.gradcheck import relative_error
from tutorial_setup import FAST, optional_torch, plt, save_figure, skip_without_torch

rng = np.random.default_rng(0)

# %% [markdown]
# ## The definition, as loops
#
# Six nested loops are the most direct reading of the formula. They are far too slow for a
# network, but they are the reference everything below is checked against.


# %%
def conv2d_loops(x, w, b, stride, pad):
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, c_out, ho, wo))
    for s in range(n):
        for o in range(c_out):
            for a in range(ho):
                for bb in range(wo):
                    window = xp[s, :, a * stride:a * stride + kh, bb * stride:bb * stride + kw]
                    y[s, o, a, bb] = b[o] + np.sum(w[o] * window)
    return y


x = rng.standard_normal((2, 3, 7, 7))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
y_loops = conv2d_loops(x, w, b, stride=2, pad=1)
y_npvit, _ = F.conv2d_forward(x, w, b, stride=2, padding=1)
print("output shape", y_npvit.shape, "| max |loops - npvit|", np.abs(y_loops - y_npvit).max())
assert y_npvit.shape == (2, 4, 4, 4)
assert np.allclose(y_loops, y_npvit, atol=1e-12)

# %% [markdown]
# ## im2col: turn the convolution into one matrix product
#
# Look at the formula again: for a fixed output position (a, b), the sum over (c, i, j) is a
# dot product between row `o` of the weight, flattened to length `K = C_in kh kw`, and the
# input window under the kernel, flattened the same way. So copy every window into a column:
#
# * `cols` has shape (N, K, L) with `L = H_out W_out`; row `(c, i, j)` of `cols` is input
#   channel `c` shifted by kernel tap `(i, j)` (and subsampled by the stride);
# * then `y[n] = W.reshape(C_out, K) @ cols[n]` — one GEMM (general matrix multiply), the
#   operation BLAS libraries are fastest at.
#
# The price is memory: each input pixel is copied up to `kh kw` times. For a 1x1 convolution
# with stride 1 the columns *are* the input, so npvit's `im2col` returns a reshaped view and
# copies nothing.

# %%
cols, ho, wo = F.im2col(x, 3, 3, stride=2, padding=1)            # (N, C_in*9, L)
print("x", x.shape, "-> cols", cols.shape, f"(K = 3*3*3 = 27 rows, L = {ho}*{wo} columns)")
y_gemm = (w.reshape(4, -1) @ cols).reshape(2, 4, ho, wo) + b.reshape(1, -1, 1, 1)
assert np.allclose(y_gemm, y_loops, atol=1e-12)

one_by_one, _, _ = F.im2col(x, 1, 1, stride=1, padding=0)
assert np.shares_memory(one_by_one, x)                            # a view, no copy
print("1x1 conv: cols is a view of x:", np.shares_memory(one_by_one, x))

# %% [markdown]
# The picture below shows it on a 5x5 single-channel image whose pixels are numbered 0-24,
# with a 3x3 kernel and padding 1 (the zero padding is left blank). Column `l` of the matrix
# on the right is the 3x3 window that output pixel `l` sees; row `(i, j)` is the whole image
# shifted by the tap `(i, j)`.

# %%
img = np.arange(25, dtype=float).reshape(1, 1, 5, 5)
img_cols, _, _ = F.im2col(img + 1, 3, 3, stride=1, padding=1)    # +1 so padding shows as 0
img_cols = img_cols[0] - 1                                        # padded entries are now -1

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 4]})
ax0.imshow(img[0, 0], cmap="viridis")
for (r, c), v in np.ndenumerate(img[0, 0]):
    ax0.text(c, r, int(v), ha="center", va="center", color="w", fontsize=8)
ax0.set(title="input x (5x5)", xticks=[], yticks=[])
ax1.imshow(np.ma.masked_less(img_cols, 0), cmap="viridis", aspect="auto")
for (r, c), v in np.ndenumerate(img_cols):
    ax1.text(c, r, "" if v < 0 else int(v), ha="center", va="center", color="w", fontsize=6)
ax1.set(title="cols = im2col(x, 3x3, padding 1): 9 taps x 25 output positions",
        xlabel="output position l", ylabel="tap (i, j)",
        yticks=range(9), yticklabels=[f"({i},{j})" for i in range(3) for j in range(3)])
save_figure(fig, "01_im2col.png")

# %% [markdown]
# ## The backward pass is two more GEMMs
#
# Write the forward for one sample as `Y = W_m @ cols + b` with `W_m` (C_out, K), `cols`
# (K, L), `Y` (C_out, L). Given the upstream gradient `dY = dL/dY`, the matrix-product rule
# gives
#
# * `dW_m = dY @ cols^T` — the weight gradient is a GEMM **with the same columns** the forward
#   built (summed over the batch). That is why the forward keeps `cols` in its cache.
# * `db = dY` summed over every position and sample.
# * `dcols = W_m^T @ dY` — the gradient with respect to every copied window entry.
#
# Each input pixel was copied into several columns, so its gradient is the **sum** of the
# gradients of all its copies. That scatter-add is `col2im`. In linear-algebra terms, im2col
# is a linear map `C` from inputs to columns, and `col2im` is its adjoint `C^T`:
# `<C x, c> = <x, C^T c>` for every `x` and `c`. We check that identity first.

# %%
c_rand = rng.standard_normal(cols.shape)
lhs = np.sum(F.im2col(x, 3, 3, 2, 1)[0] * c_rand)
rhs = np.sum(x * F.col2im(c_rand, x.shape, 3, 3, 2, 1))
print(f"<im2col(x), c> = {lhs:.10f}   <x, col2im(c)> = {rhs:.10f}")
assert np.isclose(lhs, rhs, rtol=1e-12)

# %% [markdown]
# Now the whole backward by hand, next to npvit's `conv2d_backward`:

# %%
dy = rng.standard_normal(y_npvit.shape)
dym = dy.reshape(2, 4, -1)                                         # (N, C_out, L)
dw_hand = np.einsum("nol,nkl->ok", dym, cols).reshape(w.shape)     # sum_n dY cols^T
db_hand = dy.sum(axis=(0, 2, 3))
dx_hand = F.col2im(w.reshape(4, -1).T @ dym, x.shape, 3, 3, 2, 1)  # col2im(W^T dY)

_, cache = F.conv2d_forward(x, w, b, stride=2, padding=1)
dx, dw, db = F.conv2d_backward(dy, cache)
assert np.allclose(dx, dx_hand) and np.allclose(dw, dw_hand) and np.allclose(db, db_hand)
print("hand-derived backward == npvit's conv2d_backward")

# %% [markdown]
# ## Checking the backward with finite differences
#
# For a scalar loss `L = sum(y * g)` with a fixed random `g`, the analytic gradient is
# `backward(g)`, and each coordinate can also be estimated by centred differences
# `(L(x + h e_i) - L(x - h e_i)) / 2h`, with error O(h^2). `npvit.check_gradients` does this in
# float64 for every input and returns the relative error; around 1e-9 means the backward is right.
# We check a dense, a strided, a grouped and a depthwise convolution.

# %%
configs = [  # (C_in, C_out, k, stride, padding, groups)
    (3, 4, 3, 1, 1, 1),
    (3, 5, 3, 2, 1, 1),       # strided, like the stem
    (4, 6, 1, 1, 0, 2),       # grouped 1x1
    (6, 6, 3, 2, 1, 6),       # depthwise with stride, like an inverted residual's middle conv
]
for c_in, c_out, k, s, p, g in configs:
    inputs = {"x": rng.standard_normal((2, c_in, 6, 6)),
              "w": rng.standard_normal((c_out, c_in // g, k, k)),
              "b": rng.standard_normal(c_out)}
    caches = []

    def forward(x, w, b):
        y, cache = F.conv2d_forward(x, w, b, stride=s, padding=p, groups=g)
        caches.append(cache)
        return y

    def backward(dy):
        dx, dw, db = F.conv2d_backward(dy, caches[-1])
        return {"x": dx, "w": dw, "b": db}

    errors = npvit.check_gradients(forward, backward, inputs, max_coords=64 if FAST else None)
    print(f"C_in={c_in} C_out={c_out} k={k} s={s} p={p} groups={g}: "
          + ", ".join(f"{name} {e:.1e}" for name, e in errors.items()))
    assert max(errors.values()) < 1e-7

# %% [markdown]
# ## Why depthwise convolution is different
#
# In a depthwise convolution (`groups = C_in = C_out`), output channel `c` reads only input
# channel `c`, so its "matrix" is one row of `kh kw = 9` numbers. im2col would copy the input
# 9 times and then do a GEMM with a single row per channel: nine times the memory traffic for
# nine multiply-adds per output — no reuse for BLAS to exploit.
#
# npvit therefore computes depthwise convolutions **per tap**: for each of the 9 taps `(i, j)`,
# take the strided view of the padded input that this tap reads (no copy) and add it,
# multiplied by that tap's weight per channel, into the output:
#
# $$ y \mathrel{+}= W[:, 0, i, j] \cdot \mathrm{view}_{ij}(x_{pad}). $$
#
# Its backward is the same loop read backwards: `dW[:, 0, i, j] = sum(dy * view_ij(x_pad))`
# (per channel) and `view_ij(dx_pad) += dy * W[:, 0, i, j]`. Both paths compute the same
# function; here is the depthwise one against the GEMM formula applied channel by channel:

# %%
c = 8
xd = rng.standard_normal((2, c, 9, 9))
wd = rng.standard_normal((c, 1, 3, 3))
y_dw, dw_cache = F.conv2d_forward(xd, wd, None, stride=1, padding=1, groups=c)
assert dw_cache[0] == "depthwise"                     # npvit chose the per-tap path
dcols, ho, wo = F.im2col(xd, 3, 3, 1, 1)              # (N, C*9, L)
dcols = dcols.reshape(2, c, 9, ho * wo)
y_gemm_dw = np.einsum("ck,nckl->ncl", wd.reshape(c, 9), dcols).reshape(2, c, ho, wo)
assert np.allclose(y_dw, y_gemm_dw)
print(f"depthwise: per-tap == per-channel GEMM; im2col would copy {dcols.size / xd.size:.1f}x "
      f"the input ({dcols.nbytes // 1024} KiB vs {xd.nbytes // 1024} KiB)")

# %% [markdown]
# The figure compares the number of multiply-adds per output pixel with the bytes the im2col
# columns would take, for a dense 3x3 and a depthwise 3x3 layer of the same width: the dense
# layer does C times more arithmetic for the same copy, which is what makes the copy worth it.

# %%
widths = np.array([16, 32, 64, 128, 256])
macs_dense, macs_dw = widths * 9 * widths, widths * 9       # per output pixel
copy = widths * 9                                           # column entries per output pixel
fig, ax = plt.subplots(figsize=(5.5, 3.6))
ax.loglog(widths, macs_dense / copy, "o-", label="dense 3x3: multiply-adds per copied value")
ax.loglog(widths, macs_dw / copy, "s-", label="depthwise 3x3: multiply-adds per copied value")
ax.set(xlabel="channels C", ylabel="arithmetic per im2col entry",
       title="Why depthwise convs skip im2col")
ax.legend(fontsize=8)
ax.grid(True, which="both", alpha=0.3)
save_figure(fig, "01_depthwise_reuse.png")
assert np.all(macs_dw / copy == 1) and np.all(macs_dense / copy == widths)

# %% [markdown]
# ## The same numbers as PyTorch
#
# Finite differences prove the backward is the derivative of *our* forward. To prove the
# forward is *PyTorch's* convolution (padding, stride and group conventions included), compare
# outputs and gradients with `torch.nn.functional.conv2d` on the same float64 arrays.

# %%
torch = optional_torch()
if torch is None:
    skip_without_torch("the comparison with torch.nn.functional.conv2d")
else:
    for c_in, c_out, k, s, p, g in configs:
        xt = rng.standard_normal((2, c_in, 9, 8))
        wt = rng.standard_normal((c_out, c_in // g, k, k))
        bt = rng.standard_normal(c_out)
        y, cache = F.conv2d_forward(xt, wt, bt, stride=s, padding=p, groups=g)
        g_out = rng.standard_normal(y.shape)
        dx, dw, db = F.conv2d_backward(g_out, cache)
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xt, wt, bt))
        ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, groups=g)
        ty.backward(torch.from_numpy(g_out))
        errs = [relative_error(a, t.detach().numpy())
                for a, t in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad))]
        print(f"groups={g} k={k} s={s}: relative errors y, dx, dw, db =",
              ", ".join(f"{e:.1e}" for e in errs))
        assert max(errs) < 1e-12

# %% [markdown]
# **Summary.** A convolution is a GEMM of the weight with the im2col columns; its weight
# gradient is a GEMM of the upstream gradient with the same columns; its input gradient is a
# GEMM followed by col2im, the adjoint of im2col. Depthwise convolutions have no reuse to gain
# from the copy, so they run as nine strided multiply-adds instead. Next: normalisation.
