"""branchynet.cpu_kernels equals Chainer's own CPU convolution and max pooling.

Every convolution and max-pooling layer shape of B-LeNet, B-AlexNet and B-ResNet-110 is
recorded from a forward pass on real images (each layer gets the activations it really
sees, in the memory layout the previous layer left them in), then run once with Chainer's
kernels and once with the fast ones: the outputs and the gradients of x, W and b agree to
float32 rounding; max pooling, which only selects and adds, agrees exactly.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import branchynet  # noqa: F401  (must precede chainer)
import chainer
import chainer.functions as F
from chainer import gradient_check
from chainer.functions.connection.convolution_2d import Convolution2DFunction
from chainer.functions.pooling.max_pooling_nd import MaxPoolingND

from branchynet import cpu_kernels
from branchynet.datasets import load_dataset
from branchynet.net import BranchyNet, JointLoss
from networks import get_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 3
RTOL = 2e-5
"""Largest allowed |fast - stock|, relative to max |stock| of the same array."""


def assert_close(fast, stock, rtol=RTOL, what="array"):
    """``fast`` equals ``stock`` up to float32 rounding: same shape and dtype, and every
    element within ``rtol * max|stock|``."""
    assert fast.shape == stock.shape and fast.dtype == stock.dtype, what
    scale = max(float(np.abs(stock).max()), np.finfo(stock.dtype).tiny)
    error = float(np.abs(fast.astype(np.float64) - stock).max()) / scale
    assert error <= rtol, f"{what}: max |fast - stock| = {error:.2e} x max |stock|"


class _Recorder(chainer.FunctionHook):
    """The inputs and settings of every convolution and max pooling, one per layer shape."""

    name = "cpu_kernels_recorder"

    def __init__(self):
        self.conv, self.pool = {}, {}

    def forward_preprocess(self, function, in_data):
        if isinstance(function, Convolution2DFunction):
            x, W = in_data[:2]
            b = in_data[2] if len(in_data) == 3 else None
            key = (x.shape[1:], W.shape, b is not None, (function.sy, function.sx),
                   (function.ph, function.pw), function.cover_all)
            self.conv.setdefault(key, (x, W, b, key[3], key[4], key[5]))
        elif isinstance(function, MaxPoolingND):
            x, = in_data
            key = (x.shape[1:], function.ksize, function.stride, function.pad, function.cover_all)
            self.pool.setdefault(key, (x,) + key[1:])


@pytest.fixture(scope="module")
def images(data_dir):
    mnist = load_dataset("mnist", data_dir)
    cifar = load_dataset("cifar10", data_dir, preprocess="standardize", limit=BATCH)
    return {"mnist": (mnist.train_x[:BATCH], mnist.train_y[:BATCH]),
            "cifar10": (cifar.train_x[:BATCH], cifar.train_y[:BATCH])}


def _layers(name, images):
    """The recorded layers of network ``name``'s B-net (every exit) on real images."""
    spec = get_network(name)
    np.random.seed(0)
    model = JointLoss(BranchyNet(spec.build()))
    recorder = _Recorder()
    with recorder, cpu_kernels.enabled(False):
        model(*images[spec.dataset])
    return recorder


NETWORKS = ("lenet_mnist", "alexnet_cifar10", "resnet110_cifar10")
EXPECTED = {  # distinct (conv, pool) layer shapes: the recording must find them all
    "lenet_mnist": (4, 4), "alexnet_cifar10": (8, 6), "resnet110_cifar10": (9, 0)}


@pytest.fixture(scope="module")
def layers(images):
    return {name: _layers(name, images) for name in NETWORKS}


def _conv(x, W, b, stride, pad, cover_all, fast):
    """y and the gradients of x, W, b for a fixed random output gradient."""
    with cpu_kernels.enabled(fast):
        xv, Wv = chainer.Variable(x.copy()), chainer.Variable(W.copy())
        bv = None if b is None else chainer.Variable(b.copy())
        y = F.convolution_2d(xv, Wv, bv, stride=stride, pad=pad, cover_all=cover_all)
        y.grad = np.random.RandomState(1).standard_normal(y.shape).astype(y.dtype)
        y.backward()
    grads = {"y": y.array, "gx": xv.grad, "gW": Wv.grad}
    if b is not None:
        grads["gb"] = bv.grad
    return grads


def _pool(x, ksize, stride, pad, cover_all, fast):
    with cpu_kernels.enabled(fast):
        xv = chainer.Variable(x.copy())
        y, indexes = F.max_pooling_2d(xv, ksize, stride, pad, cover_all, return_indices=True)
        y.grad = np.random.RandomState(1).standard_normal(y.shape).astype(y.dtype)
        y.backward()
    return {"y": y.array, "indexes": indexes, "gx": xv.grad}


CONV_CASES = [(name, i) for name in NETWORKS for i in range(EXPECTED[name][0])]
POOL_CASES = [(name, i) for name in NETWORKS for i in range(EXPECTED[name][1])]


def test_every_layer_shape_is_recorded(layers):
    for name in NETWORKS:
        assert (len(layers[name].conv), len(layers[name].pool)) == EXPECTED[name], name
    pools = [case[1:] for rec in layers.values() for case in rec.pool.values()]
    assert any(cover_all for *_, cover_all in pools)  # Chainer's default, cover_all=True
    assert any(pad != (0, 0) for *_, pad, _ in
               [case[1:] for rec in layers.values() for case in rec.conv.values()])


@pytest.mark.parametrize("name, i", CONV_CASES, ids=[f"{n}-conv{i}" for n, i in CONV_CASES])
@pytest.mark.parametrize("layout", ["recorded", "contiguous"])
def test_convolution_equals_chainer(layers, name, i, layout):
    x, W, b, stride, pad, cover_all = list(layers[name].conv.values())[i]
    if layout == "contiguous":
        x = np.ascontiguousarray(x)
    before = dict(cpu_kernels.calls)
    stock = _conv(x, W, b, stride, pad, cover_all, fast=False)
    assert cpu_kernels.calls == before  # the switch really turns the fast path off
    fast = _conv(x, W, b, stride, pad, cover_all, fast=True)
    for kernel in ("conv", "conv_grad_w", "deconv"):
        assert cpu_kernels.calls[kernel] == before[kernel] + 1, kernel
    assert fast.keys() == stock.keys()
    for key in stock:
        assert_close(fast[key], stock[key], what=f"{name} conv {i} {key}")


@pytest.mark.parametrize("name, i", POOL_CASES, ids=[f"{n}-pool{i}" for n, i in POOL_CASES])
def test_max_pooling_equals_chainer_exactly(layers, name, i):
    x, ksize, stride, pad, cover_all = list(layers[name].pool.values())[i]
    before = dict(cpu_kernels.calls)
    stock = _pool(x, ksize, stride, pad, cover_all, fast=False)
    fast = _pool(x, ksize, stride, pad, cover_all, fast=True)
    assert cpu_kernels.calls["max_pool"] == before["max_pool"] + 1
    assert cpu_kernels.calls["max_pool_grad"] == before["max_pool_grad"] + 1
    for key in stock:
        assert fast[key].shape == stock[key].shape and fast[key].dtype == stock[key].dtype
        np.testing.assert_array_equal(fast[key], stock[key], err_msg=f"{name} pool {i} {key}")


def test_max_pooling_breaks_ties_as_chainer(images):
    """ReLU leaves windows of equal zeros; padding and cover_all leave -inf cells."""
    x = np.maximum(np.round(images["cifar10"][0][:, :2] * 2), 0).astype(np.float32)
    for ksize, stride, pad, cover_all in [(3, 2, 0, True), (3, 2, 1, True), (2, 2, 0, False),
                                          (3, 1, 1, False), (2, 3, 1, True)]:
        stock = _pool(x, ksize, stride, pad, cover_all, fast=False)
        fast = _pool(x, ksize, stride, pad, cover_all, fast=True)
        for key in stock:
            np.testing.assert_array_equal(fast[key], stock[key], err_msg=f"{ksize} {stride} {key}")


def test_a_perturbed_gradient_is_rejected(layers):
    x, W, b, stride, pad, cover_all = list(layers["alexnet_cifar10"].conv.values())[1]
    stock = _conv(x, W, b, stride, pad, cover_all, fast=False)
    for key in ("gx", "gW", "gb"):
        wrong = stock[key].copy()
        flat = wrong.reshape(-1)
        flat[flat.size // 2] += 1e-3 * np.abs(stock[key]).max()
        with pytest.raises(AssertionError, match="max |fast - stock|"):
            assert_close(wrong, stock[key], what=key)
    with pytest.raises(AssertionError):
        assert_close(stock["gW"][:, :1], stock["gW"])


@pytest.mark.parametrize("kernel", ["conv2d_grad_w", "deconv2d_forward", "max_pool_backward"])
def test_a_wrong_kernel_fails_the_equality_tests(layers, monkeypatch, kernel):
    """One gradient element changed inside a fast kernel makes its layer test fail."""
    right = getattr(cpu_kernels, kernel)

    def wrong(*args, **kwargs):
        g = np.array(right(*args, **kwargs))
        g.flat[g.size // 2] += 1e-3 * np.abs(g).max()
        return g

    monkeypatch.setattr(cpu_kernels, kernel, wrong)
    with pytest.raises(AssertionError):
        if kernel == "max_pool_backward":
            test_max_pooling_equals_chainer_exactly(layers, "alexnet_cifar10", 1)
        else:
            test_convolution_equals_chainer(layers, "alexnet_cifar10", 1, "recorded")


def test_training_step_takes_the_fast_path_only_when_on(images):
    x, t = images["cifar10"]
    np.random.seed(0)
    model = JointLoss(BranchyNet(get_network("alexnet_cifar10").build()))
    for fast in (True, False):
        before = dict(cpu_kernels.calls)
        with cpu_kernels.enabled(fast):
            model.cleargrads()
            model(x, t).backward()
        ran = {k: cpu_kernels.calls[k] - before[k] for k in before}
        if fast:
            # 8 convolutions, 7 max poolings; the first convolution needs no input gradient
            assert ran == {"conv": 8, "conv_grad_w": 8, "deconv": 7, "max_pool": 7,
                           "max_pool_grad": 7}
        else:
            assert not any(ran.values())


def test_switch_by_environment_and_context():
    assert cpu_kernels.is_enabled()  # the default
    with cpu_kernels.enabled(False):
        assert not cpu_kernels.is_enabled()
    assert cpu_kernels.is_enabled()
    code = "import branchynet.cpu_kernels as k; print(k.is_enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        env = dict(os.environ, BRANCHYNET_FAST_CPU=value)
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        assert out == expected


def test_unsupported_settings_fall_back_to_chainer():
    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    W = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    before = dict(cpu_kernels.calls)
    y = F.convolution_2d(x, W, groups=2).array  # grouped
    z = F.convolution_2d(x, W[:, :1].repeat(4, axis=1), dilate=2).array  # dilated
    h = F.max_pooling_2d(x.astype(np.float16), 3).array  # float16
    assert cpu_kernels.calls == before
    with cpu_kernels.enabled(False):
        np.testing.assert_array_equal(y, F.convolution_2d(x, W, groups=2).array)
        np.testing.assert_array_equal(
            z, F.convolution_2d(x, W[:, :1].repeat(4, axis=1), dilate=2).array)
        np.testing.assert_array_equal(h, F.max_pooling_2d(x.astype(np.float16), 3).array)


def test_gradients_and_double_backward_check_numerically():
    """Chainer's own numerical checks, in float64, through the fast kernels (the second
    order runs the fast convolution, its weight gradient and deconvolution again)."""
    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 3, 7, 6))
    W = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    gy = rng.standard_normal((2, 4, 4, 3))
    ggx, ggW, ggb = (rng.standard_normal(a.shape) for a in (x, W, b))
    before = dict(cpu_kernels.calls)

    def conv(x, W, b):
        return F.convolution_2d(x, W, b, stride=(2, 2), pad=(1, 0), cover_all=True)

    gradient_check.check_backward(conv, (x, W, b), gy, dtype=np.float64, atol=1e-6, rtol=1e-6)
    gradient_check.check_double_backward(conv, (x, W, b), gy, (ggx, ggW, ggb),
                                         dtype=np.float64, atol=1e-6, rtol=1e-6)
    # distinct values far apart: a numerical derivative must not move a maximum
    xp = rng.permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7).astype(np.float64)

    def pool(x):
        return F.max_pooling_2d(x, 3, 2, pad=1) * 1.0

    gyp = rng.standard_normal((2, 3, 4, 4))
    gradient_check.check_backward(pool, xp, gyp, eps=1e-2, atol=1e-6, rtol=1e-6)
    gradient_check.check_double_backward(pool, xp, gyp, rng.standard_normal(xp.shape),
                                         eps=1e-2, atol=1e-6, rtol=1e-6)
    assert all(cpu_kernels.calls[k] > before[k] for k in before)


def test_a_timing_key_says_whether_the_fast_kernels_ran():
    """A timing made with Chainer's kernels is not reused for one with these (and back)."""
    from branchynet.provenance import machine_key
    cpu = chainer.get_device("@numpy")
    with cpu_kernels.enabled(True):
        fast = machine_key(cpu)
    with cpu_kernels.enabled(False):
        stock = machine_key(cpu)
    assert fast.pop("cpu_kernels") == "branchynet.cpu_kernels"
    assert "cpu_kernels" not in stock and fast == stock
