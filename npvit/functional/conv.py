"""2-D convolution, forward and backward, in the PyTorch NCHW layout.

Two code paths, chosen by the shape of the weight, and both checked against PyTorch in the tests:

* dense and grouped convolution (every output channel mixes several input channels) run as
  **im2col + one batched GEMM**: the input patches are copied into a column matrix
  ``cols`` of shape (N, G, C_in/G * kh * kw, H_out * W_out) and ``y = W @ cols``. A 1x1
  convolution with stride 1 needs no copy at all: ``cols`` is the input itself, reshaped.
* depthwise convolution (one input channel per group, ``C_in == groups``) runs as a
  **per-tap accumulation**: for each of the kh * kw kernel taps, the padded input shifted by
  that tap is multiplied by the tap's weight (one number per channel) and added to the output.
  An im2col for depthwise would copy kh * kw times the input to do kh * kw multiplies per
  output, so the per-tap loop is both simpler to read and faster. The forward flattens the
  padded planes so each shifted input is one contiguous slice (see ``_depthwise_forward``).

The backward of the GEMM path is two more GEMMs (``dW = dy @ cols^T``, ``dcols = W^T @ dy``)
followed by col2im, the adjoint of im2col, which scatter-adds each tap back into the padded
input. The depthwise backward is the same per-tap loop read backwards.

**Dilation** d (atrous convolution, DeepLabv3's ASPP and the dense-prediction backbones) spreads
the taps d pixels apart: tap (i, j) reads input pixel (a * stride + i * d - pad, ...). Both paths
handle it by shifting each tap by (i * d, j * d) instead of (i, j) in the zero-padded input; nothing
else changes. With a rate larger than the map (rate 36 on a 32 x 32 map), the outer taps read only
padding: they are computed like the others and contribute zeros, exactly as PyTorch's.
"""
from __future__ import annotations

import numpy as np

from . import cache_blocks


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _output_size(size: int, k: int, stride: int, pad: int, dilation: int = 1) -> int:
    """PyTorch's rule; a dilated kernel spans dilation * (k - 1) + 1 pixels."""
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _pad(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Zero-pad the two spatial axes (a plain zeros + copy: several times faster than np.pad)."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _tap(xp: np.ndarray, i: int, j: int, sh: int, sw: int, ho: int, wo: int) -> np.ndarray:
    """The strided view of padded input xp (N, C, Hp, Wp) that kernel tap (i, j) reads:
    (N, C, ho, wo), element [n, c, a, b] = xp[n, c, i + a*sh, j + b*sw]."""
    return xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def im2col(x: np.ndarray, kh: int, kw: int, stride, padding,
           dilation=1) -> tuple[np.ndarray, int, int]:
    """x: (N, C, H, W) -> cols (N, C * kh * kw, H_out * W_out), row index = (c, i, j).

    Row (c, i, j) of ``cols`` holds input channel c shifted by kernel tap (i, j) (by
    (i * d_h, j * d_w) pixels with dilation), so a convolution is the matrix product
    W.reshape(C_out, C*kh*kw) @ cols.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dil_h, dil_w = _pair(dilation)
    n, c, h, w = x.shape
    ho, wo = _output_size(h, kh, sh, ph, dil_h), _output_size(w, kw, sw, pw, dil_w)
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0:
        return x.reshape(n, c, h * w), ho, wo  # a view: no copy for pointwise convs
    xp = _pad(x, ph, pw)
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = _tap(xp, i * dil_h, j * dil_w, sh, sw, ho, wo)
    return cols.reshape(n, c * kh * kw, ho * wo), ho, wo


def col2im(cols: np.ndarray, x_shape, kh: int, kw: int, stride, padding,
           dilation=1) -> np.ndarray:
    """Adjoint of :func:`im2col`: cols (N, C * kh * kw, H_out * W_out) -> dx (N, C, H, W).

    Every tap's column block is added back where im2col read it from, so overlapping
    windows sum their contributions.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dil_h, dil_w = _pair(dilation)
    n, c, h, w = x_shape
    ho, wo = _output_size(h, kh, sh, ph, dil_h), _output_size(w, kw, sw, pw, dil_w)
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0:
        return cols.reshape(n, c, h, w)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            _tap(dxp, i * dil_h, j * dil_w, sh, sw, ho, wo)[...] += cols[:, :, i, j]
    return dxp[:, :, ph:ph + h, pw:pw + w]


def conv2d_forward(x, w, b=None, stride=1, padding=0, groups: int = 1, dilation=1):
    """y = conv2d(x, w) + b, as torch.nn.functional.conv2d.

    x: (N, C_in, H, W); w: (C_out, C_in / groups, kh, kw); b: (C_out,) or None.
    Returns y: (N, C_out, H_out, W_out) with
    H_out = (H + 2*pad - dilation*(kh - 1) - 1) // stride + 1, and the cache.
    Depthwise weights (C_in / groups == 1 and groups == C_in) take the per-tap path, every
    other weight the im2col + GEMM path (module docstring).
    """
    n, c_in, h, wd = x.shape
    c_out, c_in_g, kh, kw = w.shape
    if c_in != c_in_g * groups or c_out % groups:
        raise ValueError(f"conv2d: input has {c_in} channels, weight {w.shape} with groups={groups}")
    if c_in_g == 1 and groups == c_in and c_out == c_in:
        return _depthwise_forward(x, w, b, stride, padding, dilation)
    g = groups
    cols, ho, wo = im2col(x, kh, kw, stride, padding, dilation)      # (N, C_in*kh*kw, L)
    cols = cols.reshape(n, g, c_in_g * kh * kw, ho * wo)              # (N, G, K, L)
    wm = w.reshape(g, c_out // g, c_in_g * kh * kw)                   # (G, C_out/G, K)
    y = np.matmul(wm, cols).reshape(n, c_out, ho, wo)                 # (N, C_out, Ho, Wo)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    cache = ("gemm", x.shape, w, cols, stride, padding, groups, b is not None, dilation)
    return y, cache


# The depthwise tap loops run over blocks of (sample, channel) planes small enough that a block's
# padded input, scratch and output stay in the CPU's caches (``cache_blocks``, 1 MiB) across all
# kh * kw taps, instead of streaming whole arrays from memory kh * kw times. Same arithmetic in
# the same order, so the result does not depend on the block size. Measured, training step at
# batch 8 (forward + backward): mobilevitv2_050 2.49 s with whole arrays, 1.93 s in 1 MiB blocks;
# mobilevit_xxs 1.82 s -> 1.57 s. Batch-1 inference is unchanged: its arrays fit already.
# The padding, the wide output rows and (backward) the padded gradient exist only per block, in
# scratch buffers reused by every block: x is read from memory once and y written once, where
# whole padded / wide arrays cost two more round trips each way. With the dw sums as dot products
# (np.vecdot) this made forward + backward of the batch-8 depthwise layers of both models 0.49-0.77
# of the time of whole-array padding (median 0.72; forward 0.38-1.0, backward 0.39-0.95).

def _depthwise_geometry(x_shape, w_shape, stride, padding, dilation):
    """Sizes of the flat-plane layout of :func:`_depthwise_forward`: (ho, wo, hq, wq, rows, cols)
    with (ho, wo) the output size, (hq, wq) the size of each of the s_h * s_w phases, and
    (rows, cols) the part of the input the taps can reach (the rest gets no gradient)."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dil_h, dil_w = _pair(dilation)
    h, wd = x_shape[2:]
    kh, kw = w_shape[2:]
    ho, wo = _output_size(h, kh, sh, ph, dil_h), _output_size(wd, kw, sw, pw, dil_w)
    hq = ho + (kh - 1) * dil_h // sh + 1     # phase rows: the taps' reach plus one spare row, so
    wq = wo + (kw - 1) * dil_w // sw         # the last tap's flat slice stays inside the plane
    return ho, wo, hq, wq, min(h, sh * hq - ph), min(wd, sw * wq - pw)


def _phase_windows(stride, padding, rows: int, cols: int) -> dict:
    """Where each input pixel sits in the phases of the zero-padded input.

    Padded pixel (R, Q) = input pixel (R - p_h, Q - p_w) lies in phase (R % s_h, Q % s_w) at
    (R // s_h, Q // s_w). Returns {(r, q): (phase_window, input_window)}, each a tuple of two
    slices over the last two axes: phase[..., phase_window] = x[..., input_window] fills phase
    (r, q) straight from x (the padding stays zero), and the backward reads it the other way.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    windows = {}
    for r in range(sh):
        x_r = (r - ph) % sh                   # first input row whose padded row is in phase r
        a0, na = (x_r + ph) // sh, len(range(x_r, rows, sh))
        for q in range(sw):
            x_q = (q - pw) % sw
            b0, nb = (x_q + pw) // sw, len(range(x_q, cols, sw))
            windows[(r, q)] = ((slice(a0, a0 + na), slice(b0, b0 + nb)),
                               (slice(x_r, rows, sh), slice(x_q, cols, sw)))
    return windows


def _tap_offset(i: int, j: int, dil_h: int, dil_w: int, sh: int, sw: int, wq: int):
    """Tap (i, j) of output pixel (a, b) reads padded pixel (i*dil_h + a*sh, j*dil_w + b*sw):
    phase ((i*dil_h) % sh, (j*dil_w) % sw) at flat offset (i*dil_h // sh) * Wq + j*dil_w // sw.
    Returns (phase, offset)."""
    ti, tj = i * dil_h, j * dil_w
    return (ti % sh, tj % sw), (ti // sh) * wq + tj // sw


def _depthwise_setup(x_shape, w, stride, padding, dilation, dtype, scratch_planes: int):
    """What the forward and backward loops share: the geometry (``_depthwise_geometry``), the
    blocks (sized for the phases plus ``scratch_planes`` more plane buffers), each plane's tap
    weights w_rows (N * C, kh * kw, 1), the phase windows and the zeroed per-block phases."""
    n, c = x_shape[:2]
    kh, kw = w.shape[2:]
    geometry = _depthwise_geometry(x_shape, w.shape, stride, padding, dilation)
    hq, wq, rows, cols = geometry[2:]
    windows = _phase_windows(stride, padding, rows, cols)
    blocks = cache_blocks.blocks(n * c, (len(windows) + scratch_planes) * hq * wq
                                 * np.dtype(dtype).itemsize)
    w_rows = np.broadcast_to(w.reshape(1, c, kh * kw), (n, c, kh * kw)).reshape(n * c, kh * kw, 1)
    phases = {key: np.zeros((blocks[0].stop, hq, wq), dtype=dtype) for key in windows}
    return geometry, blocks, w_rows, windows, phases


def _fill_phases(phases, windows, x_block, count: int) -> dict:
    """Copy the planes x_block (count, H, W) into the phase buffers (their zero borders are never
    written, so they stay the padding) and return each phase flat: (count, hq * wq)."""
    flat = {}
    for key, (phase_window, input_window) in windows.items():
        phase = phases[key][:count]
        phase[(slice(None), *phase_window)] = x_block[(slice(None), *input_window)]
        flat[key] = phase.reshape(count, -1)
    return flat


def _depthwise_forward(x, w, b, stride, padding, dilation):
    """Depthwise convolution as kh * kw multiply-adds of whole, contiguous shifted planes.

    Pad each (sample, channel) plane and flatten it row by row, rows Wq wide. With stride 1,
    tap (i, j) of output pixel (a, b) reads flat position (a + i) * Wq + (b + j), which is
    (a * Wq + b) shifted by the constant i * Wq + j: so the tap's input for EVERY output pixel
    is one contiguous slice of the flat plane, and each tap is a single long, vectorised
    multiply-add instead of a 4-D strided one. Outputs are computed on the Wq-wide grid; the
    last Wq - W_out columns of each row straddle the row's end and are cropped.
    A stride s is turned into stride 1 by splitting the padded input into s * s phases (rows
    r::s, columns q::s): tap (i, j) reads phase (i % s, j % s) shifted by (i // s, j // s)
    (with dilation d: tap offset i * d in place of i, ``_tap_offset``).
    The tap loop runs over cache-sized blocks of planes (``_depthwise_setup``); the padded phases
    and the wide output exist only for the block in hand.
    """
    sh, sw = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    dtype = np.result_type(x, w)
    (ho, wo, hq, wq, _, _), blocks, w_rows, windows, phases = _depthwise_setup(
        x.shape, w, stride, padding, dilation, dtype, 2)         # + wide output, product
    length = ho * wq
    x_planes = x.reshape(n * c, h, wd)
    b_rows = None if b is None else np.broadcast_to(b.reshape(1, c), (n, c)).reshape(n * c, 1)
    y = np.empty((n * c, ho, wo), dtype=dtype)
    wide = np.empty((blocks[0].stop, length), dtype=dtype)      # block output on the Wq grid
    product = np.empty_like(wide)                               # scratch every tap reuses
    for block in blocks:
        count = block.stop - block.start
        flat = _fill_phases(phases, windows, x_planes[block], count)
        wide_b, product_b = wide[:count], product[:count]
        for i in range(kh):
            for j in range(kw):
                key, shift = _tap_offset(i, j, dil_h, dil_w, sh, sw, wq)
                tap = flat[key][:, shift:shift + length]
                np.multiply(tap, w_rows[block, i * kw + j], out=product_b if i or j else wide_b)
                if i or j:
                    wide_b += product_b
        if b_rows is not None:
            wide_b += b_rows[block]
        y[block] = wide_b.reshape(count, ho, wq)[:, :, :wo]
    cache = ("depthwise", x, w, stride, padding, c, b is not None, dilation)
    return y.reshape(n, c, ho, wo), cache


def conv2d_backward(dy, cache):
    """dy: (N, C_out, H_out, W_out) -> (dx, dw, db); db is None when the conv has no bias."""
    if cache[0] == "depthwise":
        return _depthwise_backward(dy, cache)
    _, x_shape, w, cols, stride, padding, g, has_bias, dilation = cache
    n, c_out, ho, wo = dy.shape
    c_in_g, kh, kw = w.shape[1:]
    dym = dy.reshape(n, g, c_out // g, ho * wo)                       # (N, G, C_out/G, L)
    # dW[g] = sum_n dy[n, g] @ cols[n, g]^T: a GEMM per sample on the transposed view of cols
    # (no copy of the big cols), then a sum of the small (N, G, C_out/G, K) results.
    dw = np.matmul(dym, cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)
    wm = w.reshape(g, c_out // g, c_in_g * kh * kw)
    dcols = np.matmul(wm.transpose(0, 2, 1), dym)                     # (N, G, K, L)
    dx = col2im(dcols.reshape(n, -1, ho * wo), x_shape, kh, kw, stride, padding, dilation)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


def _depthwise_backward(dy, cache):
    """The forward's per-tap loop read backwards, on the same flat shifted slices, block by block
    (the padded input rebuilt from x in the block's phase buffers):
    y += tap * w  =>  dw_tap = sum(dy * tap) (a dot product per plane, np.vecdot: no product
    array), dtap += dy * w."""
    _, x, w, stride, padding, c, has_bias, dilation = cache
    sh, sw = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    n, _, h, wd = x.shape
    kh, kw = w.shape[2:]
    (ho, wo, hq, wq, rows, cols), blocks, w_rows, windows, phases = _depthwise_setup(
        x.shape, w, stride, padding, dilation, dy.dtype, 3)      # + phase grads, wide dy, product
    length = ho * wq
    x_planes, dy_planes = x.reshape(n * c, h, wd), dy.reshape(n * c, ho, wo)
    dgrads = {key: np.empty_like(phase) for key, phase in phases.items()}
    wide = np.zeros((blocks[0].stop, ho, wq), dtype=dy.dtype)  # the cropped columns stay zero
    product = np.empty((blocks[0].stop, length), dtype=dy.dtype)
    dw_rows = np.empty((n * c, kh * kw), dtype=dy.dtype)       # per plane, summed over samples
    # input the taps never reach (rows, cols beyond the last tap) gets a zero gradient
    dx = (np.empty if (rows, cols) == (h, wd) else np.zeros)((n * c, h, wd), dtype=dy.dtype)
    for block in blocks:
        count = block.stop - block.start
        flat = _fill_phases(phases, windows, x_planes[block], count)
        wide[:count, :, :wo] = dy_planes[block]
        dy_b, product_b = wide[:count].reshape(count, length), product[:count]
        dflat = {key: d[:count].reshape(count, -1) for key, d in dgrads.items()}
        for d in dflat.values():
            d.fill(0)
        for i in range(kh):
            for j in range(kw):
                key, shift = _tap_offset(i, j, dil_h, dil_w, sh, sw, wq)
                dw_rows[block, i * kw + j] = np.vecdot(dy_b, flat[key][:, shift:shift + length])
                np.multiply(dy_b, w_rows[block, i * kw + j], out=product_b)
                dflat[key][:, shift:shift + length] += product_b
        dx_b = dx[block]
        for key, (phase_window, input_window) in windows.items():
            dx_b[(slice(None), *input_window)] = dgrads[key][(slice(count), *phase_window)]
    dw = dw_rows.reshape(n, c, kh * kw).sum(axis=0).reshape(w.shape)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx.reshape(x.shape), dw, db
