"""Faster CPU convolution, max pooling and batch normalization for Chainer, equal to
Chainer's own.

Two groups of kernels, each switchable:

``"conv"``: Chainer's CPU convolution gathers im2col columns as (N, C, kh, kw, oh, ow), so
``numpy.tensordot`` has to copy them into a GEMM layout on every call, and its input
gradient scatters from a transposed view. Here the input is moved to NHWC once, the
patches are gathered straight into a contiguous (N*oh*ow, kh*kw*C) matrix, so that the
output and the weight gradient are one GEMM each, and the input gradient is one GEMM per
filter tap added in place; max pooling takes the maximum over kh*kw strided views instead
of building a column array.

``"fused"``: batch normalization (training, with its running statistics, and test mode)
in a few passes over memory, per-channel sums accumulated in float64 from float32 partial
sums of at most 256 values; the per-channel sum of a convolution's bias gradient, as
those; and stride-1 convolutions of at most 3x3 with 8-32 channels in and out by filter
taps: on the zero-padded NHWC grid flattened to (N*hp*wp, C) rows, every tap is a row
offset, so the output and the input gradient are one GEMM per tap on slices of the
activations, with no patch matrix (outputs at the padding positions are computed and
dropped). The taps accumulate in place through the CBLAS of NumPy's own OpenBLAS where
NumPy ships one, else through ``numpy.matmul`` and an add. The weight gradient stays the
one patch-matrix GEMM of ``"conv"``: by taps it is nine GEMMs with 16-32 rows and columns
over a long inner dimension, which measured slower inside a ResNet-110 step
(docs/benchmarks.md).

``install()`` (run by ``import branchynet``) replaces only the *CPU forward* of Chainer's
FunctionNodes: ``Convolution2DFunction`` (y), ``Convolution2DGradW`` (gW),
``Deconvolution2DFunction`` (gx of a convolution, and deconvolution itself),
``MaxPoolingND``, ``MaxPoolingNDGrad``, ``FixedBatchNormalization``, ``Sum`` over
(N, H, W), and the implementation ``BatchNormalization`` picks for NumPy arrays (forward
and gradient).
Their backward graphs and the GPU and ChainerX paths are untouched. Max pooling keeps a
compact int8 index and turns it into Chainer's ``indexes`` (same window order) only when
something reads it, so double backward and ``return_indices`` work as before. Anything
else (groups, dilation, layouts, iDeep, other dtypes or array types) runs Chainer's method.

Switch off with ``BRANCHYNET_FAST_CPU=0`` in the environment (``BRANCHYNET_FAST_CPU=conv``
keeps only the ``"conv"`` group), ``set_enabled(False)``, or ``with enabled(False):`` for a
block; ``group="conv"`` or ``group="fused"`` switches one group.
"""
import contextlib
import ctypes
import glob
import os

import numpy
from chainer.backends import intel64
from chainer.functions.connection import convolution_2d, deconvolution_2d
from chainer.functions.math import sum as chainer_sum
from chainer.functions.normalization import batch_normalization
from chainer.functions.pooling import max_pooling_nd
from chainer.utils import conv
from numpy.lib.stride_tricks import as_strided

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
GROUPS = ("conv", "fused")


def _groups_from_environment():
    value = os.environ.get("BRANCHYNET_FAST_CPU", "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return dict.fromkeys(GROUPS, False)
    if value in GROUPS:
        return {group: group == value for group in GROUPS}
    return dict.fromkeys(GROUPS, True)


_enabled = _groups_from_environment()
_originals = {}
calls = {"conv": 0, "conv_grad_w": 0, "deconv": 0, "max_pool": 0, "max_pool_grad": 0,
         "conv_taps": 0, "deconv_taps": 0, "batch_norm": 0,
         "batch_norm_grad": 0, "fixed_batch_norm": 0, "channel_sum": 0}
"""How often each fast kernel ran (tests and benchmarks read it); the ``_taps`` entries
count the convolutions of ``conv`` and ``deconv`` that ran by taps."""


def _check_group(group):
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown kernel group {group!r}: one of {GROUPS} or None (all)")


def is_enabled(group=None):
    """Whether kernels of ``group`` (None: of any group) replace Chainer's CPU forwards now."""
    _check_group(group)
    return any(_enabled.values()) if group is None else _enabled[group]


def enabled_groups():
    """The groups switched on now, in ``GROUPS`` order."""
    return tuple(group for group in GROUPS if _enabled[group])


def set_enabled(flag, group=None):
    """Turn the kernels of ``group`` (None: every group) on or off; returns the previous
    setting, which ``set_enabled`` takes back (a dict of every group when ``group`` is
    None)."""
    _check_group(group)
    if group is not None:
        previous, _enabled[group] = _enabled[group], bool(flag)
        return previous
    previous = dict(_enabled)
    for name in GROUPS:
        _enabled[name] = bool(flag[name] if isinstance(flag, dict) else flag)
    return previous


@contextlib.contextmanager
def enabled(flag=True, group=None):
    """``with enabled(False):`` runs the block on Chainer's own CPU kernels
    (``group=...``: only that group switched)."""
    previous = set_enabled(flag, group)
    try:
        yield
    finally:
        set_enabled(previous, group)


def _usable(arrays, layouts=(), group="conv"):
    """Plain float32/float64 NumPy arrays of one dtype, standard layouts, no iDeep."""
    if not _enabled[group] or any(layout is not None for layout in layouts):
        return False
    dtype = arrays[0].dtype
    if dtype not in _FLOATS or any(type(a) is not numpy.ndarray or a.dtype != dtype
                                   for a in arrays):
        return False
    return not (intel64.should_use_ideep(">=auto") and intel64.inputs_all_ready(arrays))


# ---------------------------------------------------------------------------------------
# Convolution in NHWC: GEMM-ready patches, no transposing copies of them


def _padded_nhwc(x, ph, pw, hp, wp):
    """``x`` (N, C, H, W) as a zero-padded (N, hp, wp, C) array, ``x`` at (ph, pw)."""
    n, c, h, w = x.shape
    xp = numpy.empty((n, hp, wp, c), dtype=x.dtype)
    xp[:, :ph] = 0
    xp[:, ph + h:] = 0
    xp[:, ph:ph + h, :pw] = 0
    xp[:, ph:ph + h, pw + w:] = 0
    xp[:, ph:ph + h, pw:pw + w] = x.transpose(0, 2, 3, 1)
    return xp


def _padded_size(size, k, s, p, out):
    return max(size + 2 * p, s * (out - 1) + k)


def _patches(x, kh, kw, sy, sx, ph, pw, oh, ow):
    """The (N*oh*ow, kh*kw*C) matrix of input patches, rows in (n, oy, ox) order and
    columns in (ky, kx, c) order."""
    n, c, h, w = x.shape
    xp = _padded_nhwc(x, ph, pw, _padded_size(h, kh, sy, ph, oh), _padded_size(w, kw, sx, pw, ow))
    s0, s1, s2, s3 = xp.strides
    windows = as_strided(xp, (n, oh, ow, kh, kw, c), (s0, sy * s1, sx * s2, s1, s2, s3),
                         writeable=False)
    return numpy.ascontiguousarray(windows).reshape(n * oh * ow, kh * kw * c)


def _filters(W):
    """``W`` (out, C, kh, kw) as the (out, kh*kw*C) matrix matching ``_patches``."""
    out_c, c, kh, kw = W.shape
    return numpy.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(out_c, kh * kw * c)


def _rows(gy):
    """``gy`` (N, out, oh, ow) as the (N*oh*ow, out) matrix matching ``_patches``."""
    n, out_c, oh, ow = gy.shape
    return numpy.ascontiguousarray(gy.transpose(0, 2, 3, 1)).reshape(n * oh * ow, out_c)


def conv2d_forward(x, W, b, sy, sx, ph, pw, cover_all=False):
    """y = conv(x, W) + b, as ``chainer.functions.convolution_2d`` (an NCHW view of an
    NHWC array, as Chainer's own is a view too)."""
    n = x.shape[0]
    out_c, _, kh, kw = W.shape
    oh = conv.get_conv_outsize(x.shape[2], kh, sy, ph, cover_all)
    ow = conv.get_conv_outsize(x.shape[3], kw, sx, pw, cover_all)
    assert oh > 0 and ow > 0, "Height and width in the output should be positive."
    y = _patches(x, kh, kw, sy, sx, ph, pw, oh, ow) @ _filters(W).T
    if b is not None:
        y += b
    return y.reshape(n, oh, ow, out_c).transpose(0, 3, 1, 2)


def conv2d_grad_w(x, gy, kh, kw, sy, sx, ph, pw):
    """gW of ``conv2d_forward`` for the output gradient ``gy``, shaped (out, C, kh, kw)."""
    n, c = x.shape[:2]
    out_c, oh, ow = gy.shape[1:]
    gW = _rows(gy).T @ _patches(x, kh, kw, sy, sx, ph, pw, oh, ow)
    return numpy.ascontiguousarray(gW.reshape(out_c, kh, kw, c).transpose(0, 3, 1, 2))


def deconv2d_forward(x, W, b, sy, sx, ph, pw, out_h, out_w):
    """The transposed convolution of ``x`` (N, out, h, w) with ``W`` (out, C, kh, kw) to
    (N, C, out_h, out_w): gx of a convolution, and ``F.deconvolution_2d``.

    One GEMM per filter tap (ky, kx), each added at once into its shifted, strided slice
    of a padded NHWC buffer, so no (N*h*w, kh*kw*C) column array is built.
    """
    n, _, h, w = x.shape
    _, c, kh, kw = W.shape
    rows = _rows(x)
    taps = numpy.ascontiguousarray(W.transpose(2, 3, 0, 1))  # (kh, kw, out, C)
    hp, wp = _padded_size(out_h, kh, sy, ph, h), _padded_size(out_w, kw, sx, pw, w)
    yp = numpy.zeros((n, hp, wp, c), dtype=x.dtype)
    part = numpy.empty((n, h, w, c), dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            numpy.matmul(rows, taps[ky, kx], out=part.reshape(n * h * w, c))
            yp[:, ky:ky + sy * h:sy, kx:kx + sx * w:sx] += part
    y = yp[:, ph:ph + out_h, pw:pw + out_w].transpose(0, 3, 1, 2)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


# ---------------------------------------------------------------------------------------
# Stride-1 convolution by filter taps on the flattened, zero-padded NHWC grid


def _numpy_cblas():
    """``{dtype: gemm}`` from the ILP64 CBLAS of the OpenBLAS bundled with NumPy, or {}."""
    folder = os.path.dirname(os.path.dirname(numpy.__file__))
    for path in sorted(glob.glob(os.path.join(folder, "numpy.libs", "libscipy_openblas64_*"))):
        try:
            lib = ctypes.CDLL(path)
            found = {numpy.dtype(numpy.float32): lib.scipy_cblas_sgemm64_,
                     numpy.dtype(numpy.float64): lib.scipy_cblas_dgemm64_}
        except (OSError, AttributeError):
            continue
        for dtype, function in found.items():
            scalar = ctypes.c_float if dtype == numpy.float32 else ctypes.c_double
            i, p = ctypes.c_int64, ctypes.c_void_p
            function.argtypes = [i, i, i, i, i, i, scalar, p, i, p, i, scalar, p, i]
            function.restype = None
        return found
    return {}


_CBLAS = _numpy_cblas()
_ROW_MAJOR, _NO_TRANS = 101, 111


def _gemm_into(a, b, out, accumulate):
    """``out = a @ b`` (``out += a @ b`` when ``accumulate``) for C-contiguous rows: ``a``
    (m, k) and ``out`` (m, n) may be row slices of larger C-contiguous 2-D arrays."""
    gemm = _CBLAS.get(a.dtype)
    if gemm is None:
        if accumulate:
            out += a @ b
        else:
            numpy.matmul(a, b, out=out)
        return
    (m, k), n = a.shape, b.shape[1]
    assert a.strides[1] == b.strides[1] == out.strides[1] == a.itemsize and b.flags.c_contiguous
    gemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m, n, k, 1.0, a.ctypes.data,
         a.strides[0] // a.itemsize, b.ctypes.data, n, 1.0 if accumulate else 0.0,
         out.ctypes.data, out.strides[0] // out.itemsize)


TAP_CHANNELS = (8, 32)
"""Input and output channels for which stride-1 convolutions with at most 3x3 taps run by
taps (outside this range, and for larger filters, the patch matrix is the faster GEMM)."""
TAP_GRID = 1.3
"""Largest padded grid (hp*wp) per output position (oh*ow) for which the taps run: every
tap computes the padding positions too."""


def _taps_suit(channels, kh, kw, sy, sx, grid, outputs):
    low, high = TAP_CHANNELS
    return (_enabled["fused"] and sy == sx == 1 and 1 < kh * kw <= 9
            and all(low <= c <= high for c in channels) and grid <= TAP_GRID * outputs)


def _grid_rows(a, ph, pw, hp, wp):
    """``a`` (N, C, h, w) at (ph, pw) of a zero (N*hp*wp, C) NHWC grid, as rows."""
    n, c, h, w = a.shape
    grid = numpy.zeros((n, hp, wp, c), dtype=a.dtype)
    grid[:, ph:ph + h, pw:pw + w] = a.transpose(0, 2, 3, 1)
    return grid.reshape(n * hp * wp, c)


def _tap_offsets(kh, kw, wp):
    return [(ky, kx, ky * wp + kx) for ky in range(kh) for kx in range(kw)]


def conv2d_forward_taps(x, W, b, ph, pw, cover_all=False):
    """``conv2d_forward`` at stride 1 by taps: y[q] = sum over taps of x[q + offset] @ W_tap
    on the padded grid's rows."""
    n, c, h, w = x.shape
    out_c, _, kh, kw = W.shape
    oh = conv.get_conv_outsize(h, kh, 1, ph, cover_all)
    ow = conv.get_conv_outsize(w, kw, 1, pw, cover_all)
    assert oh > 0 and ow > 0, "Height and width in the output should be positive."
    hp, wp = _padded_size(h, kh, 1, ph, oh), _padded_size(w, kw, 1, pw, ow)
    rows = _grid_rows(x, ph, pw, hp, wp)
    taps = numpy.ascontiguousarray(W.transpose(2, 3, 1, 0))  # (kh, kw, C, out)
    span = rows.shape[0] - (kh - 1) * wp - (kw - 1)
    y_grid = numpy.empty((n * hp * wp, out_c), dtype=x.dtype)
    for i, (ky, kx, offset) in enumerate(_tap_offsets(kh, kw, wp)):
        _gemm_into(rows[offset:offset + span], taps[ky, kx], y_grid[:span], i > 0)
    y_grid = y_grid.reshape(n, hp, wp, out_c)[:, :oh, :ow]
    y = numpy.empty((n, oh, ow, out_c), dtype=x.dtype)
    if b is None:
        numpy.copyto(y, y_grid)
    else:
        numpy.add(y_grid, b, out=y)
    return y.transpose(0, 3, 1, 2)


def deconv2d_forward_taps(x, W, b, ph, pw, out_h, out_w):
    """``deconv2d_forward`` at stride 1 by taps: out[q + offset] += x[q] @ W_tap.T."""
    n, _, h, w = x.shape
    _, c, kh, kw = W.shape
    hp, wp = _padded_size(out_h, kh, 1, ph, h), _padded_size(out_w, kw, 1, pw, w)
    rows = _grid_rows(x, 0, 0, hp, wp)
    span = rows.shape[0] - (kh - 1) * wp - (kw - 1)
    taps = numpy.ascontiguousarray(W.transpose(2, 3, 0, 1))  # (kh, kw, out, C)
    y_grid = numpy.zeros((n * hp * wp, c), dtype=x.dtype)
    for ky, kx, offset in _tap_offsets(kh, kw, wp):
        _gemm_into(rows[:span], taps[ky, kx], y_grid[offset:offset + span], True)
    y_grid = y_grid.reshape(n, hp, wp, c)[:, ph:ph + out_h, pw:pw + out_w]
    y = numpy.empty((n, out_h, out_w, c), dtype=x.dtype)
    if b is None:
        numpy.copyto(y, y_grid)
    else:
        numpy.add(y_grid, b, out=y)
    return y.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------
# Max pooling by strided views, in (H, W, N, C) order so that every elementwise pass runs
# over N*C contiguous values at a time


def _pool_geometry(shape, ksize, stride, pad, cover_all):
    """Output size and the -inf padded size Chainer's im2col_nd_cpu would use."""
    (kh, kw), (sy, sx), (ph, pw) = ksize, stride, pad
    h, w = shape[2:]
    oh = conv.get_conv_outsize(h, kh, sy, ph, cover_all)
    ow = conv.get_conv_outsize(w, kw, sx, pw, cover_all)
    assert oh > 0 and ow > 0, "Output sizes should be positive."
    return oh, ow, _padded_size(h, kh, sy, ph, oh), _padded_size(w, kw, sx, pw, ow)


def _windows(xp, kh, kw, sy, sx, oh, ow):
    """``(k, view)``: the strided (oh, ow, ...) view of window element k = ky*kw + kx of
    ``xp`` (hp, wp, ...), in Chainer's window order."""
    for ky in range(kh):
        for kx in range(kw):
            yield ky * kw + kx, xp[ky:ky + sy * oh:sy, kx:kx + sx * ow:sx]


def _index_dtype(kh, kw):
    return numpy.int8 if kh * kw <= 127 else numpy.intp


def max_pool_forward(x, ksize, stride, pad, cover_all=True):
    """``(y, index)`` of ``F.max_pooling_2d``: ``y`` (N, C, oh, ow) C-contiguous, and
    ``index`` (oh, ow, N, C) the position of the first maximum in each window (of the
    first NaN in a window that has one, as ``numpy.argmax``), row-major over (ky, kx) as
    Chainer's ``indexes`` (see ``chainer_indexes``)."""
    (kh, kw), (sy, sx), (ph, pw) = ksize, stride, pad
    n, c, h, w = x.shape
    oh, ow, hp, wp = _pool_geometry(x.shape, ksize, stride, pad, cover_all)
    xp = numpy.empty((hp, wp, n, c), dtype=x.dtype)
    if hp > h or wp > w:
        xp.fill(-numpy.inf)
    xp[ph:ph + h, pw:pw + w] = x.transpose(2, 3, 0, 1)
    windows = _windows(xp, kh, kw, sy, sx, oh, ow)
    y = numpy.array(next(windows)[1])
    index = numpy.zeros(y.shape, dtype=_index_dtype(kh, kw))
    larger = numpy.empty(y.shape, dtype=bool)
    for k, view in windows:
        numpy.greater(view, y, out=larger)
        numpy.copyto(index, k, where=larger)
        numpy.maximum(y, view, out=y)
    if numpy.isnan(y).any():  # Chainer's argmax takes a window's first NaN
        first = numpy.full(y.shape, -1, dtype=index.dtype)
        for k, view in _windows(xp, kh, kw, sy, sx, oh, ow):
            numpy.isnan(view, out=larger)
            larger &= first < 0
            numpy.copyto(first, k, where=larger)
        numpy.copyto(index, first, where=first >= 0)
    return numpy.ascontiguousarray(y.transpose(2, 3, 0, 1)), index


def chainer_indexes(index):
    """``index`` of ``max_pool_forward`` as Chainer keeps ``indexes``: (N, C, oh, ow) intp."""
    return numpy.ascontiguousarray(index.transpose(2, 3, 0, 1), dtype=numpy.intp)


def max_pool_backward(gy, index, in_shape, ksize, stride, pad, cover_all=True):
    """gx of ``max_pool_forward``: each output gradient goes to its window's maximum."""
    (kh, kw), (sy, sx), (ph, pw) = ksize, stride, pad
    n, c, h, w = in_shape
    oh, ow, hp, wp = _pool_geometry(in_shape, ksize, stride, pad, cover_all)
    gy = numpy.ascontiguousarray(gy.transpose(2, 3, 0, 1))
    gxp = numpy.zeros((hp, wp, n, c), dtype=gy.dtype)
    hit = numpy.empty(gy.shape, dtype=bool)
    for k, view in _windows(gxp, kh, kw, sy, sx, oh, ow):
        numpy.equal(index, k, out=hit)
        if sy >= kh and sx >= kw:  # windows do not overlap: each cell is written once
            numpy.copyto(view, gy, where=hit)
        else:
            numpy.add(view, gy, out=view, where=hit)
    return gxp[ph:ph + h, pw:pw + w].transpose(2, 3, 0, 1)


# ---------------------------------------------------------------------------------------
# Batch normalization over (N, H, W) per channel, in few passes over memory

_BLOCK = 256
"""Values per float32 partial sum; the partials are added in float64."""


def _channel_rows(a):
    """``a`` (N, C, H, W) as (M, C) rows when its memory is NHWC, else as (N, C, H*W)."""
    n, c, h, w = a.shape
    nhwc = a.transpose(0, 2, 3, 1)
    if nhwc.flags.c_contiguous:
        return nhwc.reshape(n * h * w, c)
    return numpy.ascontiguousarray(a).reshape(n, c, h * w)


def _same_rows(a, like):
    """``a`` in the layout ``_channel_rows`` gave ``like``."""
    if like.ndim == 2:
        return numpy.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(like.shape)
    return numpy.ascontiguousarray(a).reshape(like.shape)


def _channel_sum(rows):
    """Per-channel float64 sum of ``_channel_rows`` output, from float32 partial sums."""
    if rows.ndim == 3:
        return (rows @ numpy.ones(rows.shape[2], rows.dtype)).sum(0, dtype=numpy.float64)
    full = rows.shape[0] // _BLOCK * _BLOCK
    total = rows[full:].sum(0, dtype=numpy.float64)
    if full:
        blocks = rows[:full].reshape(-1, _BLOCK, rows.shape[1])
        total += (numpy.ones((1, _BLOCK), rows.dtype) @ blocks).sum((0, 1), dtype=numpy.float64)
    return total


def _channel_dot(a, b):
    """Per-channel float64 sum of ``a * b`` (both in one ``_channel_rows`` layout)."""
    if a.ndim == 3:
        return numpy.einsum("ncp,ncp->nc", a, b).sum(0, dtype=numpy.float64)
    full = a.shape[0] // _BLOCK * _BLOCK
    total = numpy.einsum("ij,ij->j", a[full:], b[full:]).astype(numpy.float64)
    if full:
        shape = (-1, _BLOCK, a.shape[1])
        total += numpy.einsum("kij,kij->kj", a[:full].reshape(shape),
                              b[:full].reshape(shape)).sum(0, dtype=numpy.float64)
    return total


def channel_sum(x):
    """``x.sum(axis=(0, 2, 3))`` for (N, C, H, W) ``x``, summed as ``_channel_sum``."""
    return _channel_sum(_channel_rows(x)).astype(x.dtype)


def _bn_usable(x, gamma, beta, axis, layout):
    return (_usable((x, gamma, beta), (layout,), "fused") and x.ndim == 4
            and gamma.ndim == 1 and tuple(axis) == (0, 2, 3))


def batch_norm_forward(x, gamma, beta, eps, expander):
    """Training-mode ``F.batch_normalization`` over (N, H, W): ``(y, mean, var, inv_std)``
    with Chainer's dtypes. Passes: the sum, x - mean, its squares' sum, scale, shift."""
    m = x.size // x.shape[1]
    mean = (_channel_sum(_channel_rows(x)) / m).astype(x.dtype)
    y = numpy.subtract(x, mean[expander])
    var = (_channel_dot(*[_channel_rows(y)] * 2) / m).astype(x.dtype)
    inv_std = numpy.reciprocal(numpy.sqrt(var + eps, dtype=x.dtype))
    y *= (gamma * inv_std)[expander]
    y += beta[expander]
    return y, mean, var, inv_std


def batch_norm_backward(x, gamma, gy, mean, inv_std, expander):
    """``(gx, ggamma, gbeta)`` of ``batch_norm_forward``:
    gx = gamma*inv_std * (gy - (x_hat*ggamma + gbeta)/m), as a*gy + k1*(x - mean) + k0."""
    m = x.size // x.shape[1]
    d = numpy.subtract(x, mean[expander])
    d_rows = _channel_rows(d)
    gy_rows = _channel_rows(gy)
    if gy_rows.ndim != d_rows.ndim:
        gy_rows = _same_rows(gy, d_rows)
    gbeta = _channel_sum(gy_rows)
    ggamma = _channel_dot(gy_rows, d_rows) * inv_std
    a = gamma.astype(numpy.float64) * inv_std
    d *= (-a * inv_std * ggamma / m).astype(x.dtype)[expander]
    d += (-a * gbeta / m).astype(x.dtype)[expander]
    d += gy * a.astype(x.dtype)[expander]
    return d, ggamma.astype(gamma.dtype), gbeta.astype(gamma.dtype)


def fixed_batch_norm_forward(x, gamma, beta, mean, inv_std, expander):
    """Test-mode ``F.fixed_batch_normalization``: (x - mean) * gamma*inv_std + beta."""
    y = numpy.subtract(x, mean[expander])
    y *= (gamma * inv_std)[expander]
    y += beta[expander]
    return y


class _FastBatchNormalizationImpl(batch_normalization.GeneralBatchNormalizationImpl):
    """Chainer's NumPy implementation of ``BatchNormalization`` with the fused kernels."""

    def forward(self, axis, gamma, x, x_layout, xp, expander, beta, eps, decay,
                running_mean, running_var):
        if not _bn_usable(x, gamma, beta, axis, x_layout):
            return super().forward(axis, gamma, x, x_layout, xp, expander, beta, eps, decay,
                                   running_mean, running_var)
        calls["batch_norm"] += 1
        y, mean, var, inv_std = batch_norm_forward(x, gamma, beta, eps, expander)
        if running_mean is not None:  # as Chainer: unbiased variance, in place
            m = x.size // gamma.size
            adjust = m / max(m - 1., 1.)
            running_mean *= decay
            running_mean += (1 - decay) * mean
            running_var *= decay
            running_var += (1 - decay) * adjust * var
        return y, x_layout, running_mean, running_var, mean, var, inv_std, None

    def backward(self, axis, gamma, gy, x, x_layout, xp, expander, mean, inv_std, eps, var,
                 forward_data):
        if not (_bn_usable(x, gamma, gamma, axis, x_layout) and type(gy) is numpy.ndarray
                and gy.dtype == x.dtype):
            return super().backward(axis, gamma, gy, x, x_layout, xp, expander, mean,
                                    inv_std, eps, var, forward_data)
        calls["batch_norm_grad"] += 1
        gx, ggamma, gbeta = batch_norm_backward(x, gamma, gy, mean, inv_std, expander)
        return gx, None, ggamma, gbeta


def _bn_impl_selector(func, inputs):
    x, gamma, beta = inputs
    running = (func.running_mean, func.running_var)
    if (all(r is None or type(r) is numpy.ndarray for r in running)
            and _bn_usable(x, gamma, beta, func.axis, func.input_layouts[0])):
        return _FastBatchNormalizationImpl()
    return _originals["bn_selector"](func, inputs)


def _bn_forward(self, inputs):
    if self._impl_selector is _originals["bn_selector"]:
        self._impl_selector = _bn_impl_selector
    return _originals["bn"](self, inputs)


def _sum_forward(self, inputs):
    x, = inputs
    if (self.keepdims or self.axis is None or x.ndim != 4
            or tuple(a % 4 for a in self.axis) != (0, 2, 3) or not _usable(inputs, (), "fused")):
        return _originals["sum"](self, inputs)
    calls["channel_sum"] += 1
    return channel_sum(x),


def _fixed_bn_forward(self, inputs):
    x, gamma, beta, mean, var = inputs
    axis = batch_normalization._compute_axis(x.ndim, gamma.ndim, self.axis)
    if not (_bn_usable(x, gamma, beta, axis, None) and _usable(inputs, (), "fused")):
        return _originals["fixed_bn"](self, inputs)
    self.retain_inputs((0, 1, 3, 4))
    self.axis = axis
    self.key_axis = batch_normalization._compute_key_axis(x.ndim, gamma.ndim, axis)
    self.expander = (None, slice(None), None, None)
    self.inv_var = numpy.reciprocal(var + self.eps)
    self.inv_std = numpy.sqrt(self.inv_var, dtype=self.inv_var.dtype)
    calls["fixed_batch_norm"] += 1
    return fixed_batch_norm_forward(x, gamma, beta, mean, self.inv_std, self.expander),


# ---------------------------------------------------------------------------------------
# Chainer's FunctionNodes: the CPU forwards replaced


def _conv_taps(x_shape, W_shape, sy, sx, ph, pw, cover_all):
    """Whether the forward of a convolution of ``x_shape`` by ``W_shape`` runs by taps (its
    input gradient, a deconvolution, decides by its own shapes; its weight gradient is
    always the patch-matrix GEMM)."""
    _, c, h, w = x_shape
    kh, kw = W_shape[2:]
    if not (_enabled["fused"] and sy == sx == 1):
        return False
    oh = conv.get_conv_outsize(h, kh, 1, ph, cover_all)
    ow = conv.get_conv_outsize(w, kw, 1, pw, cover_all)
    if oh <= 0 or ow <= 0:
        return False
    grid = _padded_size(h, kh, 1, ph, oh) * _padded_size(w, kw, 1, pw, ow)
    return _taps_suit((c, W_shape[0]), kh, kw, sy, sx, grid, oh * ow)


def _conv_forward_cpu(self, inputs):
    x, W = inputs[:2]
    if self.groups != 1 or self.dy != 1 or self.dx != 1 or self.cudnn_fast:
        return _originals["conv"](self, inputs)
    taps = (_conv_taps(x.shape, W.shape, self.sy, self.sx, self.ph, self.pw, self.cover_all)
            and _usable(inputs, self.input_layouts, "fused"))
    if not (taps or _usable(inputs, self.input_layouts)):
        return _originals["conv"](self, inputs)
    self.retain_inputs((0, 1))
    b = inputs[2] if len(inputs) == 3 else None
    calls["conv"] += 1
    if taps:
        calls["conv_taps"] += 1
        return conv2d_forward_taps(x, W, b, self.ph, self.pw, self.cover_all),
    return conv2d_forward(x, W, b, self.sy, self.sx, self.ph, self.pw, self.cover_all),


def _conv_grad_w_forward_cpu(self, inputs):
    x, gy = inputs
    if (self.groups != 1 or self.dy != 1 or self.dx != 1 or self._use_ideep
            or self.w_layout is not None or x.dtype != self.W_dtype):
        return _originals["conv_grad_w"](self, inputs)
    if not _usable(inputs):
        return _originals["conv_grad_w"](self, inputs)
    self.retain_inputs((0, 1))
    calls["conv_grad_w"] += 1
    return conv2d_grad_w(x, gy, self.kh, self.kw, self.sy, self.sx, self.ph, self.pw),


def _deconv_forward_cpu(self, inputs):
    if self.groups != 1 or self.dy != 1 or self.dx != 1:
        return _originals["deconv"](self, inputs)
    x, W = inputs[:2]
    self._calc_out_size(x.shape, W.shape)
    kh, kw = W.shape[2:]
    taps = False
    if _enabled["fused"] and self.sy == self.sx == 1:
        grid = (_padded_size(self.outh, kh, 1, self.ph, x.shape[2])
                * _padded_size(self.outw, kw, 1, self.pw, x.shape[3]))
        taps = (_taps_suit(W.shape[:2], kh, kw, 1, 1, grid, self.outh * self.outw)
                and _usable(inputs, self.input_layouts, "fused"))
    if not (taps or _usable(inputs, self.input_layouts)):
        return _originals["deconv"](self, inputs)
    self.retain_inputs((0, 1))
    b = inputs[2] if len(inputs) == 3 else None
    calls["deconv"] += 1
    if taps:
        calls["deconv_taps"] += 1
        return deconv2d_forward_taps(x, W, b, self.ph, self.pw, self.outh, self.outw),
    return deconv2d_forward(x, W, b, self.sy, self.sx, self.ph, self.pw,
                            self.outh, self.outw),


def _max_pool_forward_cpu(self, inputs):
    if self.ndim != 2 or not _usable(inputs):
        self.__dict__.pop("_fast_index", None)
        return _originals["max_pool"](self, inputs)
    x, = inputs
    self._in_shape, self._in_dtype = x.shape, x.dtype
    calls["max_pool"] += 1
    y, index = max_pool_forward(x, self.ksize, self.stride, self.pad, self.cover_all)
    self.__dict__.pop("indexes", None)
    self._fast_index = index
    return y,


def _max_pool_indexes(self):
    """Chainer's ``indexes``, made from the compact index of the fast forward when read."""
    state = self.__dict__
    if "indexes" not in state:
        if "_fast_index" not in state:
            raise AttributeError("indexes")
        state["indexes"] = chainer_indexes(state["_fast_index"])
    return state["indexes"]


def _set_max_pool_indexes(self, value):
    self.__dict__["indexes"] = value
    self.__dict__.pop("_fast_index", None)


def _max_pool_grad_forward_cpu(self, inputs):
    func = self.func
    index = func.__dict__.get("_fast_index")
    if (func.ndim != 2 or index is None or not _usable(inputs)
            or inputs[0].dtype != func._in_dtype):
        return _originals["max_pool_grad"](self, inputs)
    calls["max_pool_grad"] += 1
    return max_pool_backward(inputs[0], index, func._in_shape, func.ksize, func.stride,
                             func.pad, func.cover_all),


_TARGETS = {
    "conv": (convolution_2d.Convolution2DFunction, _conv_forward_cpu),
    "conv_grad_w": (convolution_2d.Convolution2DGradW, _conv_grad_w_forward_cpu),
    "deconv": (deconvolution_2d.Deconvolution2DFunction, _deconv_forward_cpu),
    "max_pool": (max_pooling_nd.MaxPoolingND, _max_pool_forward_cpu),
    "max_pool_grad": (max_pooling_nd.MaxPoolingNDGrad, _max_pool_grad_forward_cpu),
}


_FORWARDS = {  # FunctionNodes whose one ``forward`` serves every device
    "bn": (batch_normalization.BatchNormalization, _bn_forward),
    "fixed_bn": (batch_normalization.FixedBatchNormalization, _fixed_bn_forward),
    "sum": (chainer_sum.Sum, _sum_forward),
}


def install():
    """Put the fast CPU forwards into Chainer's FunctionNodes (once; idempotent)."""
    for name, (cls, method) in _TARGETS.items():
        if name not in _originals:
            _originals[name] = cls.forward_cpu
            cls.forward_cpu = method
    _originals.setdefault("bn_selector", batch_normalization._impl_selector)
    for name, (cls, method) in _FORWARDS.items():
        if name not in _originals:
            _originals[name] = cls.forward
            cls.forward = method
    max_pooling_nd.MaxPoolingND.indexes = property(_max_pool_indexes, _set_max_pool_indexes)
