"""branchynet.cpu_kernels equals Chainer's own CPU convolution, max pooling and batch
normalization.

Every convolution, max-pooling and batch-normalization layer shape of B-LeNet, B-AlexNet
and B-ResNet-110 is recorded from a forward pass on real images (each layer gets the
activations it really sees, in the memory layout the previous layer left them in), then
run once with Chainer's kernels and once with the fast ones (all of them, and the "conv"
group alone): the outputs and the gradients of x, W and b (gamma and beta) agree to
float32 rounding, and so do the running statistics batch normalization updates; max
pooling, which only selects and adds, agrees exactly.
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
from chainer.functions.normalization.batch_normalization import BatchNormalization
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
    """The inputs and settings of every convolution, max pooling and batch normalization,
    one per layer shape."""

    name = "cpu_kernels_recorder"

    def __init__(self):
        self.conv, self.pool, self.bn = {}, {}, {}

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
        elif isinstance(function, BatchNormalization):
            x = in_data[0]
            self.bn.setdefault(x.shape[1:], x)


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
EXPECTED = {  # distinct (conv, pool, bn) layer shapes: the recording must find them all
    "lenet_mnist": (4, 4, 0), "alexnet_cifar10": (8, 6, 0), "resnet110_cifar10": (9, 0, 3)}
GROUPS = {"all": True, "conv": {"conv": True, "fused": False}}


@pytest.fixture(scope="module")
def layers(images):
    return {name: _layers(name, images) for name in NETWORKS}


def _conv(x, W, b, stride, pad, cover_all, fast):
    """y and the gradients of x, W, b for a fixed random output gradient (``fast``: a
    setting of ``cpu_kernels.enabled``)."""
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


def _bn(x, gamma, beta, fast, train):
    """y, the gradients of x, gamma, beta and (``train``) the updated running statistics
    of batch normalization, or (not ``train``) of its test mode on those statistics."""
    rng = np.random.RandomState(2)
    mean = (x.mean(axis=(0, 2, 3)) + rng.uniform(-0.1, 0.1, x.shape[1])).astype(x.dtype)
    var = (x.var(axis=(0, 2, 3)) * rng.uniform(0.8, 1.2, x.shape[1])).astype(x.dtype)
    with cpu_kernels.enabled(fast):
        xv, gv, bv = (chainer.Variable(a.copy()) for a in (x, gamma, beta))
        if train:
            y = F.batch_normalization(xv, gv, bv, running_mean=mean, running_var=var)
        else:
            y = F.fixed_batch_normalization(xv, gv, bv, mean, var)
        y.grad = np.random.RandomState(1).standard_normal(y.shape).astype(y.dtype)
        y.backward()
    out = {"y": y.array, "gx": xv.grad, "ggamma": gv.grad, "gbeta": bv.grad}
    if train:
        out.update(running_mean=mean, running_var=var)
    return out


def _bn_params(channels):
    rng = np.random.RandomState(3)
    return (rng.uniform(0.5, 1.5, channels).astype(np.float32),
            rng.standard_normal(channels).astype(np.float32))


CONV_CASES = [(name, i) for name in NETWORKS for i in range(EXPECTED[name][0])]
POOL_CASES = [(name, i) for name in NETWORKS for i in range(EXPECTED[name][1])]
BN_CASES = [(name, i) for name in NETWORKS for i in range(EXPECTED[name][2])]


def test_every_layer_shape_is_recorded(layers):
    for name in NETWORKS:
        rec = layers[name]
        assert (len(rec.conv), len(rec.pool), len(rec.bn)) == EXPECTED[name], name
    pools = [case[1:] for rec in layers.values() for case in rec.pool.values()]
    assert any(cover_all for *_, cover_all in pools)  # Chainer's default, cover_all=True
    assert any(pad != (0, 0) for *_, pad, _ in
               [case[1:] for rec in layers.values() for case in rec.conv.values()])


@pytest.mark.parametrize("name, i", CONV_CASES, ids=[f"{n}-conv{i}" for n, i in CONV_CASES])
@pytest.mark.parametrize("layout", ["recorded", "contiguous"])
@pytest.mark.parametrize("groups", list(GROUPS))
def test_convolution_equals_chainer(layers, name, i, layout, groups):
    _check_conv(layers, name, i, layout, groups)


def _check_conv(layers, name, i, layout, groups="all"):
    """Layer ``i`` of ``name`` with the kernel ``groups`` against Chainer; returns how
    often each fast kernel ran."""
    x, W, b, stride, pad, cover_all = list(layers[name].conv.values())[i]
    if layout == "contiguous":
        x = np.ascontiguousarray(x)
    before = dict(cpu_kernels.calls)
    stock = _conv(x, W, b, stride, pad, cover_all, fast=False)
    assert cpu_kernels.calls == before  # the switch really turns the fast path off
    fast = _conv(x, W, b, stride, pad, cover_all, fast=GROUPS[groups])
    for kernel in ("conv", "conv_grad_w", "deconv"):
        assert cpu_kernels.calls[kernel] == before[kernel] + 1, kernel
    if groups == "conv":
        for kernel in ("conv_taps", "deconv_taps"):
            assert cpu_kernels.calls[kernel] == before[kernel], kernel
    assert fast.keys() == stock.keys()
    for key in stock:
        assert_close(fast[key], stock[key], what=f"{name} conv {i} {key}")
    return {k: cpu_kernels.calls[k] - before[k] for k in before}


def test_resnet_convolutions_run_by_taps_where_they_suit(layers):
    """Stride-1 3x3 convolutions with 8-32 channels in and out on a padded grid at most
    1.3x the output run by taps (the 16- and 32-channel layers of the trunk and the 32-32
    branch layer); the first layer, the stride-2, 5x5 and 64-channel ones do not."""
    taps = {}
    for i, (x, W, *_rest) in enumerate(layers["resnet110_cifar10"].conv.values()):
        ran = _check_conv(layers, "resnet110_cifar10", i, "recorded")
        taps[(x.shape[1:], W.shape)] = (ran["conv_taps"], ran["deconv_taps"])
    assert taps == {
        ((3, 32, 32), (16, 3, 3, 3)): (0, 0),
        ((16, 30, 30), (64, 16, 5, 5)): (0, 0),  # 5x5, 64 channels out
        ((64, 30, 30), (32, 64, 3, 3)): (0, 0),
        ((32, 30, 30), (32, 32, 3, 3)): (1, 1),
        ((16, 30, 30), (16, 16, 3, 3)): (1, 1),
        ((16, 30, 30), (32, 16, 3, 3)): (0, 0),  # stride 2
        ((32, 15, 15), (32, 32, 3, 3)): (1, 1),
        ((32, 15, 15), (64, 32, 3, 3)): (0, 0),  # stride 2
        ((64, 8, 8), (64, 64, 3, 3)): (0, 0),
    }


def test_taps_without_numpys_cblas_use_matmul(layers, monkeypatch):
    """Where NumPy ships no OpenBLAS CBLAS to call (NumPy 2 wheels ship one; the lookup does
    not find NumPy 1.26's), the taps accumulate by numpy.matmul, equal to Chainer's."""
    monkeypatch.setattr(cpu_kernels, "_CBLAS", {})
    ran = _check_conv(layers, "resnet110_cifar10", 4, "contiguous")
    assert ran["conv_taps"] == ran["deconv_taps"] == 1


@pytest.mark.parametrize("name, i", BN_CASES, ids=[f"{n}-bn{i}" for n, i in BN_CASES])
@pytest.mark.parametrize("layout", ["recorded", "contiguous"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_batch_normalization_equals_chainer(layers, name, i, layout, train):
    x = list(layers[name].bn.values())[i]
    if layout == "contiguous":
        x = np.ascontiguousarray(x)
    gamma, beta = _bn_params(x.shape[1])
    before = dict(cpu_kernels.calls)
    stock = _bn(x, gamma, beta, False, train)
    conv_only = _bn(x, gamma, beta, GROUPS["conv"], train)
    assert cpu_kernels.calls == before  # neither setting runs the fused kernels
    fast = _bn(x, gamma, beta, True, train)
    ran = {k: cpu_kernels.calls[k] - before[k] for k in before if cpu_kernels.calls[k] > before[k]}
    assert ran == ({"batch_norm": 1, "batch_norm_grad": 1} if train else {"fixed_batch_norm": 1})
    assert fast.keys() == stock.keys()
    for key in stock:
        np.testing.assert_array_equal(conv_only[key], stock[key])
        assert_close(fast[key], stock[key], what=f"{name} bn {i} {key}")


def test_batch_normalization_keeps_its_accuracy_far_from_zero_mean(layers):
    """Activations with a mean 300 standard deviations from zero: the statistics and the
    gradients still agree (float64 sums of float32 partials, centred before squaring)."""
    x = list(layers["resnet110_cifar10"].bn.values())[0]
    x = x * np.float32(0.01) + np.float32(3.0)
    gamma, beta = _bn_params(x.shape[1])
    stock, fast = (_bn(x, gamma, beta, fast, True) for fast in (False, True))
    for key in stock:
        assert_close(fast[key], stock[key], what=key)


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


def test_max_pooling_sends_a_nan_windows_gradient_where_chainer_does(images):
    """A window holding NaN: the output is NaN and the gradient goes to the window's
    first NaN, as Chainer's argmax (not to the largest value before it)."""
    x = np.ascontiguousarray(images["cifar10"][0][:, :2])
    x[0, 0, 1, 1] = x[0, 0, 0, 0] + 10  # a large value before the NaN ...
    x[0, 0, 1, 2] = np.nan               # ... in the same 3x3 windows
    x[1, 1, 4, 4] = x[1, 1, 5, 5] = np.nan  # two NaNs: the first takes the gradient
    x[2, 0, 7, 3] = np.nan
    for ksize, stride, pad, cover_all in [(3, 2, 0, True), (3, 2, 1, True), (2, 2, 0, False),
                                          (3, 1, 1, False)]:
        stock = _pool(x, ksize, stride, pad, cover_all, fast=False)
        fast = _pool(x, ksize, stride, pad, cover_all, fast=True)
        assert np.isnan(stock["y"]).any()
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


WRONG = [("conv2d_grad_w", None), ("deconv2d_forward", None), ("max_pool_backward", None),
         ("conv2d_forward_taps", None), ("deconv2d_forward_taps", None),
         ("batch_norm_backward", 0), ("batch_norm_backward", 1), ("batch_norm_backward", 2),
         ("batch_norm_forward", 0), ("fixed_batch_norm_forward", None), ("channel_sum", None)]


@pytest.mark.parametrize("kernel, part", WRONG, ids=[f"{k}-{p}" for k, p in WRONG])
def test_a_wrong_kernel_fails_the_equality_tests(layers, monkeypatch, kernel, part):
    """One element changed inside a fast kernel's result (element ``part`` of a tuple)
    makes its layer test fail."""
    right = getattr(cpu_kernels, kernel)

    def nudged(a):
        g = np.array(a)
        g.flat[g.size // 2] += 1e-3 * np.abs(g).max()
        return g

    def wrong(*args, **kwargs):
        result = right(*args, **kwargs)
        if part is None:
            return nudged(result)
        return tuple(nudged(r) if j == part else r for j, r in enumerate(result))

    monkeypatch.setattr(cpu_kernels, kernel, wrong)
    with pytest.raises(AssertionError, match=r"max \|fast - stock\||Arrays are not equal"):
        if kernel == "max_pool_backward":
            test_max_pooling_equals_chainer_exactly(layers, "alexnet_cifar10", 1)
        elif kernel.endswith("_taps") or kernel == "channel_sum":
            _check_conv(layers, "resnet110_cifar10", 4, "recorded")
        elif "batch_norm" in kernel:
            test_batch_normalization_equals_chainer(layers, "resnet110_cifar10", 0, "recorded",
                                                    train=not kernel.startswith("fixed"))
        else:
            _check_conv(layers, "alexnet_cifar10", 1, "recorded")


def test_training_step_takes_the_fast_path_only_when_on(images):
    x, t = images["cifar10"]
    np.random.seed(0)
    model = JointLoss(BranchyNet(get_network("alexnet_cifar10").build()))
    for fast in (True, False):
        before = dict(cpu_kernels.calls)
        with cpu_kernels.enabled(fast):
            model.cleargrads()
            model(x, t).backward()
        ran = {k: cpu_kernels.calls[k] - before[k] for k in before if cpu_kernels.calls[k] > before[k]}
        if fast:
            # 8 convolutions, 7 max poolings; the first convolution needs no input gradient
            assert ran == {"conv": 8, "conv_grad_w": 8, "deconv": 7, "max_pool": 7,
                           "max_pool_grad": 7, "channel_sum": 8}  # the bias gradients
        else:
            assert not ran


def test_resnet_training_step_takes_each_group_only_when_on(images):
    """A B-ResNet-110 step at batch size 3: 114 convolutions (74 by taps), 111 batch
    normalizations; the "conv" group alone runs no tap, no batch normalization and no
    bias-gradient sum."""
    x, t = images["cifar10"]
    np.random.seed(0)
    model = JointLoss(BranchyNet(get_network("resnet110_cifar10").build()))
    for setting in (True, GROUPS["conv"], False):
        before = dict(cpu_kernels.calls)
        with cpu_kernels.enabled(setting):
            model.cleargrads()
            model(x, t).backward()
        ran = {k: cpu_kernels.calls[k] - before[k] for k in before if cpu_kernels.calls[k] > before[k]}
        convs = {"conv": 114, "conv_grad_w": 114, "deconv": 113}
        if setting is True:
            assert ran == {**convs, "conv_taps": 74, "deconv_taps": 74,
                           "batch_norm": 111, "batch_norm_grad": 111, "channel_sum": 114}
        elif setting:
            assert ran == convs
        else:
            assert not ran


def test_switch_by_environment_and_context():
    assert cpu_kernels.enabled_groups() == ("conv", "fused")  # the default
    with cpu_kernels.enabled(False):
        assert not cpu_kernels.is_enabled() and cpu_kernels.enabled_groups() == ()
        with cpu_kernels.enabled(True, group="fused"):
            assert cpu_kernels.enabled_groups() == ("fused",) and cpu_kernels.is_enabled()
        assert not cpu_kernels.is_enabled("fused")
    assert cpu_kernels.enabled_groups() == ("conv", "fused")
    with pytest.raises(ValueError, match="unknown kernel group 'bn'"):
        cpu_kernels.set_enabled(False, group="bn")
    code = "import branchynet.cpu_kernels as k; print(k.enabled_groups())"
    for value, expected in (("0", "()"), ("1", "('conv', 'fused')"), ("conv", "('conv',)"),
                            ("fused", "('fused',)")):
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
    g16, b16 = np.ones(4, np.float16), np.zeros(4, np.float16)
    bn16 = F.batch_normalization(x.astype(np.float16), g16, b16).array  # float16
    fixed16 = F.fixed_batch_normalization(x.astype(np.float16), g16, b16, b16, g16).array
    bn_axis = F.batch_normalization(x, np.ones((4, 9), np.float32), np.zeros((4, 9), np.float32),
                                    axis=(0, 3)).array  # statistics over other axes
    sums = [F.sum(x, axis=(0, 2, 3), keepdims=True).array, F.sum(x, axis=(0, 1)).array]
    assert cpu_kernels.calls == before
    with cpu_kernels.enabled(False):
        np.testing.assert_array_equal(bn16, F.batch_normalization(x.astype(np.float16), g16,
                                                                  b16).array)
        np.testing.assert_array_equal(fixed16, F.fixed_batch_normalization(
            x.astype(np.float16), g16, b16, b16, g16).array)
        np.testing.assert_array_equal(bn_axis, F.batch_normalization(
            x, np.ones((4, 9), np.float32), np.zeros((4, 9), np.float32), axis=(0, 3)).array)
        np.testing.assert_array_equal(sums[0], F.sum(x, axis=(0, 2, 3), keepdims=True).array)
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
    assert all(cpu_kernels.calls[k] > before[k] for k in ("conv", "conv_grad_w", "deconv",
                                                          "max_pool", "max_pool_grad"))


def test_taps_and_batch_normalization_check_numerically():
    """Chainer's numerical checks in float64, first and second order, through the tap
    convolution and both batch normalizations."""
    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 8, 16, 16))
    W = rng.standard_normal((8, 8, 3, 3))
    b = rng.standard_normal(8)
    gy = rng.standard_normal(x.shape)
    ggx, ggW, ggb = (rng.standard_normal(a.shape) for a in (x, W, b))
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.standard_normal(8)
    mean, var = rng.standard_normal(8), rng.uniform(0.5, 2, 8)
    before = dict(cpu_kernels.calls)

    def conv(x, W, b):
        return F.convolution_2d(x, W, b, pad=1)

    def bn(x, gamma, beta):
        return F.batch_normalization(x, gamma, beta)

    def fixed_bn(x, gamma, beta, mean, var):
        return F.fixed_batch_normalization(x, gamma, beta, mean, var)

    check = {"dtype": np.float64, "atol": 1e-6, "rtol": 1e-6}
    gradient_check.check_backward(conv, (x, W, b), gy, **check)
    gradient_check.check_double_backward(conv, (x, W, b), gy, (ggx, ggW, ggb), **check)
    gradient_check.check_backward(bn, (x, gamma, beta), gy, **check)
    gradient_check.check_double_backward(bn, (x, gamma, beta), gy, (ggx, gamma, beta), **check)
    gradient_check.check_backward(fixed_bn, (x, gamma, beta, mean, var), gy, **check)
    for k in ("conv_taps", "deconv_taps", "batch_norm", "batch_norm_grad",
              "fixed_batch_norm"):
        assert cpu_kernels.calls[k] > before[k], k


def test_a_timing_key_says_whether_the_fast_kernels_ran():
    """A timing made with Chainer's kernels is not reused for one with these (and back)."""
    from branchynet.provenance import machine_key
    cpu = chainer.get_device("@numpy")
    with cpu_kernels.enabled(True):
        fast = machine_key(cpu)
    with cpu_kernels.enabled(False):
        stock = machine_key(cpu)
    with cpu_kernels.enabled(GROUPS["conv"]):
        conv_only = machine_key(cpu)
    assert fast.pop("cpu_kernels") == "branchynet.cpu_kernels"
    assert conv_only.pop("cpu_kernels") == "branchynet.cpu_kernels (conv)"
    assert "cpu_kernels" not in stock and fast == stock == conv_only
