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
from npvit.gradcheck import numeric_gradient
from tutorial_setup import (FAST, Exercises, cpu_name, median_ms, optional_torch, plt,
                            relative_error, show, skip_without_torch)

rng = np.random.default_rng(0)
exercises = Exercises("01")          # solutions: tutorials/solutions/01_convolution.py

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
# ## im2col and col2im, as loops
#
# The fast convolution below copies every window the loops above read into a matrix
# (**im2col**), and its backward adds gradients back into the positions those copies came
# from (**col2im**). Both are the same five loops as `conv2d_loops`: entry
# `cols[n, (c, i, j), (a, b)]` is `x_pad[n, c, a s + i, b s + j]`. im2col *reads* that position,
# col2im *adds* into it — with `+=`, because neighbouring windows overlap and one input pixel is
# read by up to `kh kw` of them.


# %%
def im2col_loops(x, kh, kw, stride, pad):
    n, c, h, wd = x.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.zeros((n, c * kh * kw, ho * wo))
    for s in range(n):
        for ch in range(c):
            for i in range(kh):
                for j in range(kw):
                    for a in range(ho):
                        for bb in range(wo):
                            cols[s, (ch * kh + i) * kw + j, a * wo + bb] = \
                                xp[s, ch, a * stride + i, bb * stride + j]
    return cols


def col2im_loops(cols, x_shape, kh, kw, stride, pad):
    n, c, h, wd = x_shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    dxp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    for s in range(n):
        for ch in range(c):
            for i in range(kh):
                for j in range(kw):
                    for a in range(ho):
                        for bb in range(wo):
                            dxp[s, ch, a * stride + i, bb * stride + j] += \
                                cols[s, (ch * kh + i) * kw + j, a * wo + bb]
    return dxp[:, :, pad:pad + h, pad:pad + wd]                # the padding's gradient is dropped


cols_loops = im2col_loops(x, 3, 3, stride=2, pad=1)
c_any = rng.standard_normal(cols_loops.shape)
assert np.array_equal(cols_loops, F.im2col(x, 3, 3, stride=2, padding=1)[0])
assert np.allclose(col2im_loops(c_any, x.shape, 3, 3, 2, 1), F.col2im(c_any, x.shape, 3, 3, 2, 1))
print("im2col_loops == npvit's im2col; col2im_loops == npvit's col2im (3x3, stride 2, padding 1)")

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
show(fig, "01_im2col")

# %% [markdown]
# ## The backward pass is two more GEMMs
#
# Write the forward for one sample as `Y = W_m @ cols + b` with `W_m` (C_out, K), `cols`
# (K, L), `Y` (C_out, L), i.e. `Y[o, l] = sum_k W_m[o, k] cols[k, l] + b[o]`. Given the upstream
# gradient `dY = dL/dY`, the chain rule sums over every output that an entry touched, and each
# rule is one line of indices:
#
# * `W_m[o, k]` appears in `Y[o, l]` for every `l`, with factor `cols[k, l]`:
#   `dW_m[o, k] = sum_l dY[o, l] cols[k, l] = (dY cols^T)[o, k]` — the weight gradient is a
#   GEMM **with the same columns** the forward built (summed over the batch). That is why the
#   forward keeps `cols` in its cache.
# * `b[o]` appears in every `Y[o, l]` with factor 1: `db[o] = sum_l dY[o, l]` (and over samples).
# * `cols[k, l]` appears in `Y[o, l]` for every `o`, with factor `W_m[o, k]`:
#   `dcols[k, l] = sum_o W_m[o, k] dY[o, l] = (W_m^T dY)[k, l]` — the gradient with respect to
#   every copied window entry.
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
assert np.allclose(dx_hand, col2im_loops(w.reshape(4, -1).T @ dym, x.shape, 3, 3, 2, 1))
print("hand-derived backward == npvit's conv2d_backward")

# %% [markdown]
# ## Measuring agreement: the relative error, and kinks
#
# Two gradients agree when their **relative error** is small. cs231n's definition, which the
# exercises use, is elementwise:
#
# $$ \mathrm{rel}(x, y) = \max_i \frac{|x_i - y_i|}{\max(10^{-8}, |x_i| + |y_i|)} $$
#
# (`relative_error` in `tutorial_setup.py`). Between two exact computations in float64 (your
# backward and npvit's) it is about 1e-12 or less; against finite differences, which carry an
# absolute error near 1e-10, a gradient entry close to zero can reach 1e-6, so the checkers
# allow 1e-9 against npvit and 1e-5 against finite differences; a bug gives 1e-2 or more.
# (npvit's own `check_gradients` divides by the largest entry instead, so a tiny entry with a
# large *relative* difference cannot dominate — a milder test.)
#
# Finite differences assume the function is smooth around the point. A **kink** breaks that:
# ReLU's derivative jumps from 0 to 1 at 0, and a centred difference whose two points straddle
# the kink measures the average slope of the two sides. With step `h = 1e-6`, an input at
# `1e-7` gets the numeric derivative 0.55 while the analytic one is 1:

# %%
relu = lambda v: np.maximum(v, 0.0)                             # noqa: E731
h = 1e-6
for x0 in (0.3, 1e-7):
    numeric = (relu(x0 + h) - relu(x0 - h)) / (2 * h)
    analytic = float(x0 > 0)
    print(f"ReLU at x = {x0:g}: analytic {analytic:.2f}, numeric {numeric:.2f}, "
          f"relative error {relative_error(analytic, numeric):.1e}")
assert relative_error(1.0, (relu(0.3 + h) - relu(0.3 - h)) / (2 * h)) < 1e-9
assert relative_error(1.0, (relu(1e-7 + h) - relu(1e-7 - h)) / (2 * h)) > 0.1

# %% [markdown]
# So a gradient check through ReLU (or max-pooling, or `abs`) can fail although the backward
# is right. The remedies: use random inputs, where landing within `h` of a kink is unlikely
# (with 1000 standard-normal inputs and `h = 1e-6`, the chance is about 1000 * 2e-6 * 0.4 ~ 0.1%),
# check few coordinates, and when a check fails look at whether an input sits within `h` of a
# kink before suspecting the backward. MobileViT's SiLU is smooth, so its checks have no kinks.
#
# ### Exercise 1: the backward of `conv2d_loops`, as loops
#
# Write `conv2d_backward_loops(dy, x, w, stride, pad)` returning `(dx, dw, db)` with the same
# six loops as `conv2d_loops`: wherever the forward did `y[s, o, a, b] += w[o, c, i, j] *
# xp[s, c, a s + i, b s + j]`, the backward adds `dy[s, o, a, b]` times the *other* factor
# into the gradient of each factor. Mind the padding (work on a padded `dx` and crop it) and
# overlapping windows (accumulate, never assign). The checker compares your result with
# npvit's `conv2d_backward` and with finite differences of `conv2d_loops`.


# %%
def conv2d_backward_loops(dy, x, w, stride, pad):
    """dy: (N, C_out, H_out, W_out), x: (N, C_in, H, W), w: (C_out, C_in, kh, kw)
    -> dx (N, C_in, H, W), dw (C_out, C_in, kh, kw), db (C_out,)."""
    raise NotImplementedError


# %%
def check_conv2d_backward(candidate):
    xs, ws, bs = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)), np.zeros(4)
    for stride, pad in ((1, 1), (2, 1), (2, 0)):
        y, cache = F.conv2d_forward(xs, ws, bs, stride=stride, padding=pad)
        up = rng.standard_normal(y.shape)
        got = candidate(up, xs.copy(), ws.copy(), stride, pad)
        for name, mine, ref in zip(("dx", "dw", "db"), got, F.conv2d_backward(up, cache)):
            assert np.shape(mine) == ref.shape, f"{name} has shape {np.shape(mine)}, not {ref.shape}"
            err = relative_error(mine, ref)
            assert err < 1e-9, (f"{name} differs from npvit's conv2d_backward at stride {stride}, "
                                f"padding {pad}: relative error {err:.1e}")
    num, idx = numeric_gradient(lambda: conv2d_loops(xs, ws, bs, stride, pad), xs, up,
                                max_coords=20)
    err = relative_error(got[0].reshape(-1)[idx], num)
    assert err < 1e-5, f"dx differs from finite differences of conv2d_loops: {err:.1e}"


exercises.check(conv2d_backward_loops, check_conv2d_backward)

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
# ### Exercise 2: the depthwise backward, per tap
#
# Write `depthwise_conv2d_backward(dy, x, w, stride, pad)` returning `(dx, dw)` for a depthwise
# convolution without bias, x (N, C, H, W), w (C, 1, k, k), with the two per-tap rules above:
# one loop over the `k * k` taps, each reading or writing the strided view of the padded input
# that the tap touches (`xp[:, :, i:i + s (H_out - 1) + 1:s, j:j + s (W_out - 1) + 1:s]`).
# No loops over pixels: each tap is one whole-array multiply-add.


# %%
def depthwise_conv2d_backward(dy, x, w, stride, pad):
    """dy: (N, C, H_out, W_out), x: (N, C, H, W), w: (C, 1, k, k) -> dx (N, C, H, W), dw (C, 1, k, k)."""
    raise NotImplementedError


# %%
def check_depthwise_backward(candidate):
    for stride, size in ((1, 6), (2, 7)):
        xs, ws = rng.standard_normal((2, 5, size, size)), rng.standard_normal((5, 1, 3, 3))
        y, cache = F.conv2d_forward(xs, ws, None, stride=stride, padding=1, groups=5)
        up = rng.standard_normal(y.shape)
        dx_ref, dw_ref, _ = F.conv2d_backward(up, cache)
        dx_c, dw_c = candidate(up, xs.copy(), ws.copy(), stride, 1)
        for name, mine, ref in (("dx", dx_c, dx_ref), ("dw", dw_c, dw_ref)):
            assert np.shape(mine) == ref.shape, f"{name} has shape {np.shape(mine)}, not {ref.shape}"
            err = relative_error(mine, ref)
            assert err < 1e-9, f"{name} differs from npvit at stride {stride}: relative error {err:.1e}"

        def loss():
            return F.conv2d_forward(xs, ws, None, stride=stride, padding=1, groups=5)[0]
        num, idx = numeric_gradient(loss, ws, up)
        err = relative_error(dw_c.reshape(-1)[idx], num)
        assert err < 1e-5, f"dw differs from finite differences at stride {stride}: {err:.1e}"


exercises.check(depthwise_conv2d_backward, check_depthwise_backward)

# %% [markdown]
# ## What the copy costs: measured
#
# Per output pixel, a dense 3x3 layer does `9 C` multiply-adds for each of its C outputs, a
# depthwise one 9. Both would copy the same `9 C` column entries into im2col, so the copy is
# cheap next to the dense layer's arithmetic and dominates the depthwise one's. The figure
# times three ways on a 64x64 map (28x28 in fast mode), batch 1, in this run: a dense 3x3 conv
# (im2col + GEMM), npvit's per-tap depthwise conv, and the same depthwise conv through im2col
# and a per-channel product. The right panel divides the multiply-adds by the time: how busy
# each way keeps the CPU. (Median of 5 runs after a warm-up, BLAS pinned to one thread with
# threadpoolctl.)
#
# Which depthwise way is faster depends on the size — while the 9x copy fits in the cache it
# costs little, on large maps it dominates — and the lines under the figure say what this run
# measured. What does not depend on the size is the right panel: the dense layer keeps the CPU
# far busier per second, because every copied value is reused by all C output channels.

# %%
side = 28 if FAST else 64
widths = [16, 32, 64] if FAST else [16, 32, 64, 128, 256]


def depthwise_by_im2col(xi, wi):
    cols, ho, wo = F.im2col(xi, 3, 3, 1, 1)
    cols = cols.reshape(xi.shape[0], xi.shape[1], 9, ho * wo)
    return np.einsum("ck,nckl->ncl", wi.reshape(-1, 9), cols).reshape(xi.shape[0], -1, ho, wo)


times = {"dense 3x3 (im2col + GEMM)": [], "depthwise 3x3, per tap (npvit)": [],
         "depthwise 3x3 via im2col": []}
macs = {name: [] for name in times}
for c in widths:
    xi = rng.standard_normal((1, c, side, side)).astype(np.float32)
    w_dense = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    w_dw = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    assert np.allclose(depthwise_by_im2col(xi, w_dw),
                       F.conv2d_forward(xi, w_dw, None, padding=1, groups=c)[0], atol=1e-4)
    runs = (lambda: F.conv2d_forward(xi, w_dense, None, padding=1),
            lambda: F.conv2d_forward(xi, w_dw, None, padding=1, groups=c),
            lambda: depthwise_by_im2col(xi, w_dw))
    for name, run, per_pixel in zip(times, runs, (9 * c * c, 9 * c, 9 * c)):
        times[name].append(median_ms(run))
        macs[name].append(per_pixel * side * side)

fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 3.8))
for (name, ms), marker in zip(times.items(), "os^"):
    ax_t.plot(widths, ms, marker=marker, label=name)
    ax_r.plot(widths, [m / t / 1e6 for m, t in zip(macs[name], ms)], marker=marker, label=name)
for ax in (ax_t, ax_r):
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(c) for c in widths])
    ax.minorticks_off()
    ax.set_xlabel("channels C")
    ax.grid(True, alpha=0.3)
ax_t.set_yscale("log")
ax_t.set(ylabel="ms per forward (median, 1 thread)", title=f"float32, {side}x{side}, batch 1")
ax_r.set(ylabel="G multiply-adds per second", title="arithmetic per second")
ax_r.legend(fontsize=8)
fig.suptitle(f"measured in this run on {cpu_name()}", fontsize=9)
show(fig, "01_depthwise_cost")
for name, ms in times.items():
    rate = macs[name][-1] / ms[-1] / 1e6
    print(f"{name:32s} C={widths[-1]}: {ms[-1]:7.3f} ms, {rate:6.2f} G multiply-adds/s")
per_tap = times["depthwise 3x3, per tap (npvit)"][-1]
print(f"C={widths[-1]}: depthwise via im2col takes {times['depthwise 3x3 via im2col'][-1] / per_tap:.2f}x "
      f"the per-tap time; the dense layer does {widths[-1]}x the multiply-adds in "
      f"{times['dense 3x3 (im2col + GEMM)'][-1] / per_tap:.1f}x the time")

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
        assert max(errs) < 1e-10

# %% [markdown]
# **Summary.** A convolution is a GEMM of the weight with the im2col columns; its weight
# gradient is a GEMM of the upstream gradient with the same columns; its input gradient is a
# GEMM followed by col2im, the adjoint of im2col (the same loops as the convolution, adding
# instead of reading). Depthwise convolutions have no reuse to gain from the copy (the
# measured arithmetic rate shows it), so npvit runs them as nine strided multiply-adds and
# never builds the 9x larger columns. Next: normalisation.
