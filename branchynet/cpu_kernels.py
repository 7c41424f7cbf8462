"""Faster CPU convolution and max pooling for Chainer, equal to Chainer's own.

Chainer's CPU convolution gathers im2col columns as (N, C, kh, kw, oh, ow), so
``numpy.tensordot`` has to copy them into a GEMM layout on every call, and its input
gradient scatters from a transposed view. Here the input is moved to NHWC once, the
patches are gathered straight into a contiguous (N*oh*ow, kh*kw*C) matrix, so that the
output and the weight gradient are one GEMM each, and the input gradient is one GEMM per
filter tap added in place; max pooling takes the maximum over kh*kw strided views instead
of building a column array.

``install()`` (run by ``import branchynet``) replaces only the *CPU forward* of Chainer's
FunctionNodes: ``Convolution2DFunction`` (y), ``Convolution2DGradW`` (gW),
``Deconvolution2DFunction`` (gx of a convolution, and deconvolution itself),
``MaxPoolingND`` and ``MaxPoolingNDGrad``. Their backward graphs and the GPU and ChainerX
paths are untouched. Max pooling keeps a compact int8 index and turns it into Chainer's
``indexes`` (same window order) only when something reads it, so double backward and
``return_indices`` work as before. Anything else
(groups, dilation, layouts, iDeep, other dtypes or array types) runs Chainer's method.

Switch off with ``BRANCHYNET_FAST_CPU=0`` in the environment, ``set_enabled(False)``, or
``with enabled(False):`` for a block.
"""
import contextlib
import os

import numpy
from chainer.backends import intel64
from chainer.functions.connection import convolution_2d, deconvolution_2d
from chainer.functions.pooling import max_pooling_nd
from chainer.utils import conv
from numpy.lib.stride_tricks import as_strided

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_enabled = os.environ.get("BRANCHYNET_FAST_CPU", "1").strip().lower() not in (
    "0", "false", "no", "off")
_originals = {}
calls = {"conv": 0, "conv_grad_w": 0, "deconv": 0, "max_pool": 0, "max_pool_grad": 0}
"""How often each fast kernel ran (tests and benchmarks read it)."""


def is_enabled():
    """Whether the fast kernels replace Chainer's CPU forwards now."""
    return _enabled


def set_enabled(flag):
    """Turn the fast kernels on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


@contextlib.contextmanager
def enabled(flag=True):
    """``with enabled(False):`` runs the block on Chainer's own CPU kernels."""
    previous = set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def _usable(arrays, layouts=()):
    """Plain float32/float64 NumPy arrays of one dtype, standard layouts, no iDeep."""
    if not _enabled or any(layout is not None for layout in layouts):
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
    ``index`` (oh, ow, N, C) the position of the first maximum in each window, row-major
    over (ky, kx) as Chainer's ``indexes`` (see ``chainer_indexes``)."""
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
# Chainer's FunctionNodes: the CPU forwards replaced


def _conv_forward_cpu(self, inputs):
    if (self.groups != 1 or self.dy != 1 or self.dx != 1 or self.cudnn_fast
            or not _usable(inputs, self.input_layouts)):
        return _originals["conv"](self, inputs)
    self.retain_inputs((0, 1))
    x, W = inputs[:2]
    b = inputs[2] if len(inputs) == 3 else None
    calls["conv"] += 1
    return conv2d_forward(x, W, b, self.sy, self.sx, self.ph, self.pw, self.cover_all),


def _conv_grad_w_forward_cpu(self, inputs):
    if (self.groups != 1 or self.dy != 1 or self.dx != 1 or self._use_ideep
            or self.w_layout is not None or not _usable(inputs)
            or inputs[0].dtype != self.W_dtype):
        return _originals["conv_grad_w"](self, inputs)
    self.retain_inputs((0, 1))
    x, gy = inputs
    calls["conv_grad_w"] += 1
    return conv2d_grad_w(x, gy, self.kh, self.kw, self.sy, self.sx, self.ph, self.pw),


def _deconv_forward_cpu(self, inputs):
    if (self.groups != 1 or self.dy != 1 or self.dx != 1
            or not _usable(inputs, self.input_layouts)):
        return _originals["deconv"](self, inputs)
    self.retain_inputs((0, 1))
    x, W = inputs[:2]
    b = inputs[2] if len(inputs) == 3 else None
    self._calc_out_size(x.shape, W.shape)
    calls["deconv"] += 1
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


def install():
    """Put the fast CPU forwards into Chainer's FunctionNodes (once; idempotent)."""
    for name, (cls, method) in _TARGETS.items():
        if name not in _originals:
            _originals[name] = cls.forward_cpu
            cls.forward_cpu = method
    max_pooling_nd.MaxPoolingND.indexes = property(_max_pool_indexes, _set_max_pool_indexes)
