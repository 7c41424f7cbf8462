"""B-AlexNet and B-ResNet-110: layer shapes, parameter and multiply-add counts, gradients.

The expected counts are worked out by hand below (`docs/paper.md` section 2), so a wrong layer
size, a missing layer or a miscounted path shows up as a mismatch.
"""
import numpy as np
import pytest

import branchynet  # noqa: F401  (must precede chainer)
import chainer
import chainer.links as L

from branchynet.flops import count_exit_paths, exit_path
from branchynet.net import BranchyNet, JointLoss
from networks import get_network
from networks.resnet110_cifar10 import ResBlock

CIFAR = (3, 32, 32)


def _net(name, seed=0, **kwargs):
    np.random.seed(seed)  # Chainer's initializers draw from NumPy's global generator
    return BranchyNet(get_network(name).build(), **kwargs)


def _layer_shapes(net, n, batch=1):
    """Output shape (without the batch axis) of every layer on exit ``n``'s path."""
    shapes = []
    h = np.zeros((batch,) + CIFAR, np.float32)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for sequential in exit_path(net, n):
            for layer in sequential:
                h = layer(h)
                shapes.append(h.shape[1:])
    return shapes


def test_registry_entries():
    alex, res = get_network("alexnet_cifar10"), get_network("resnet110_cifar10")
    assert (alex.title, alex.dataset, alex.paper) == (
        "AlexNet", "cifar10", {"batch_size": 512, "baseline_epochs": 50, "branchy_epochs": 100})
    assert (res.title, res.dataset, res.paper) == (
        "ResNet-110", "cifar10", {"batch_size": 64, "baseline_epochs": 100, "branchy_epochs": 100})
    assert alex.grid == (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 0.75, 1, 5, 10)
    assert res.grid == get_network("lenet_mnist").grid and len(res.grid) == 17
    assert alex.inc_amt == res.inc_amt == -0.0001
    assert alex.dataset_options == res.dataset_options == {"preprocess": "standardize"}


def test_alexnet_layer_shapes():
    net = _net("alexnet_cifar10")
    trunk0 = [(32, 32, 32), (32, 32, 32), (32, 16, 16), (32, 16, 16), (64, 16, 16)]
    branch1 = [(64, 16, 16), (64, 8, 8), (64, 8, 8), (32, 8, 8), (32, 8, 8), (32, 8, 8),
               (32, 8, 8), (32, 4, 4), (10,)]            # 32 * 4 * 4 = 512 into the fc
    trunk1 = [(64, 16, 16), (64, 8, 8), (64, 8, 8), (96, 8, 8)]
    branch2 = [(96, 8, 8), (96, 4, 4), (96, 4, 4), (32, 4, 4), (32, 4, 4), (32, 2, 2),
               (10,)]                                   # 32 * 2 * 2 = 128 into the fc
    trunk2 = [(96, 8, 8), (96, 8, 8), (96, 8, 8), (64, 8, 8), (64, 8, 8), (64, 4, 4),
              (256,), (256,), (256,), (128,), (128,), (128,)]  # 64 * 4 * 4 = 1024 into fc
    assert _layer_shapes(net, 0) == trunk0 + branch1
    assert _layer_shapes(net, 1) == trunk0 + trunk1 + branch2
    assert _layer_shapes(net, 2) == trunk0 + trunk1 + trunk2 + [(10,)]
    baseline = _net("alexnet_cifar10", main_only=True)
    assert _layer_shapes(baseline, 0) == trunk0 + trunk1 + trunk2 + [(10,)]


def test_resnet110_layer_shapes():
    net = _net("resnet110_cifar10")
    trunk0 = [(16, 30, 30)] * 3                         # conv pad 0: 32 -> 30; BN; relu
    branch1 = [(64, 30, 30)] * 3 + [(32, 30, 30)] * 4 + [(10,)]  # 32 * 30 * 30 = 28800
    trunk1 = [(16, 30, 30)] * 18
    branch2 = [(16, 30, 30), (10,)]                     # 16 * 30 * 30 = 14400
    trunk2 = [(32, 15, 15)] * 18 + [(64, 8, 8)] * 18 + [(64, 3, 3)]  # 64 * 3 * 3 = 576
    assert _layer_shapes(net, 0) == trunk0 + branch1
    assert _layer_shapes(net, 1) == trunk0 + trunk1 + branch2
    assert _layer_shapes(net, 2) == trunk0 + trunk1 + trunk2 + [(10,)]
    convs = [link for link in net.links() if isinstance(link, L.Convolution2D)]
    linears = [link for link in net.links() if isinstance(link, L.Linear)]
    # Main path: 1 + 18*3*2 = 109 convs and one fc (110 layers); B1: 3 convs + fc;
    # B2: one ResBlock (2 convs) + fc.
    assert len(convs) == 109 + 3 + 2 and len(linears) == 3
    assert sum(isinstance(link, ResBlock) for link in net.links()) == 18 * 3 + 1


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _fc(n_in, n_out):
    return n_in * n_out + n_out


def test_parameter_counts_per_exit_path():
    # B-AlexNet
    alex_trunk0 = _conv(3, 32, 5) + _conv(32, 64, 5)                   # 2432 + 51264
    alex_b1 = _conv(64, 32, 3) + _conv(32, 32, 3) + _fc(512, 10)        # 18464 + 9248 + 5130
    alex_trunk1 = _conv(64, 96, 3)                                      # 55392
    alex_b2 = _conv(96, 32, 3) + _fc(128, 10)                           # 27680 + 1290
    alex_trunk2 = (_conv(96, 96, 3) + _conv(96, 64, 3) + _fc(1024, 256)
                   + _fc(256, 128))                                     # 83040+55360+262400+32896
    alex = [alex_trunk0 + alex_b1, alex_trunk0 + alex_trunk1 + alex_b2,
            alex_trunk0 + alex_trunk1 + alex_trunk2 + _fc(128, 10)]
    assert alex == [86538, 138058, 544074]
    # B-ResNet-110: BatchNormalization(c) has 2c parameters (gamma, beta).
    res_trunk0 = _conv(3, 16, 3) + 2 * 16                               # 480
    res_b1 = _conv(16, 64, 5) + _conv(64, 32, 3) + _conv(32, 32, 3) + _fc(28800, 10)

    def block(cin, cout):
        return _conv(cin, cout, 3) + _conv(cout, cout, 3) + 4 * cout

    res_trunk1 = 18 * block(16, 16)                                     # 18 * 4704
    res_b2 = block(16, 16) + _fc(14400, 10)
    res_trunk2 = (block(16, 32) + 17 * block(32, 32) + block(32, 64) + 17 * block(64, 64))
    res = [res_trunk0 + res_b1, res_trunk0 + res_trunk1 + res_b2,
           res_trunk0 + res_trunk1 + res_trunk2 + _fc(576, 10)]
    assert res == [341866, 233866, 1737130]

    for name, expected in (("alexnet_cifar10", alex), ("resnet110_cifar10", res)):
        net = _net(name)
        assert [r["params"] for r in count_exit_paths(net, CIFAR)] == expected
        # The B-net holds the main path plus both side-branch heads.
        heads = sum(p.size for head in net.heads[:2] for p in head.params())
        assert sum(p.size for p in net.params()) == expected[2] + heads
        assert count_exit_paths(_net(name, main_only=True), CIFAR)[0]["params"] == expected[2]


def test_multiply_adds_per_exit_path():
    # B-LeNet on 1x28x28 (conv pad 3 -> 30x30; pools with cover_all: 30->15, 15->8, 17->9, 11->6).
    lenet_conv1 = 30 * 30 * 5 * (1 * 5 * 5)                 # 112,500
    lenet_b1 = 15 * 15 * 10 * (5 * 3 * 3) + 640 * 10         # 101,250 + 6,400
    lenet_main = (17 * 17 * 10 * (5 * 5 * 5) + 11 * 11 * 20 * (10 * 5 * 5)
                  + 720 * 84 + 84 * 10)                     # 361,250 + 605,000 + 60,480 + 840
    lenet = [r["macs"] for r in count_exit_paths(_net("lenet_mnist"), (1, 28, 28))]
    assert lenet == [lenet_conv1 + lenet_b1, lenet_conv1 + lenet_main] == [220150, 1140070]

    # B-AlexNet on 3x32x32 (pools with cover_all: 32->16->8->4->2).
    alex_trunk0 = 32 * 32 * 32 * (3 * 5 * 5) + 16 * 16 * 64 * (32 * 5 * 5)  # 2,457,600 + 13,107,200
    alex_b1 = (8 * 8 * 32 * (64 * 9) + 8 * 8 * 32 * (32 * 9)
               + 512 * 10)                                    # 1,179,648 + 589,824 + 5,120
    alex_trunk1 = 8 * 8 * 96 * (64 * 9)                                  # 3,538,944
    alex_b2 = 4 * 4 * 32 * (96 * 9) + 128 * 10                           # 442,368 + 1,280
    alex_trunk2 = (8 * 8 * 96 * (96 * 9) + 8 * 8 * 64 * (96 * 9)         # 5,308,416 + 3,538,944
                   + 1024 * 256 + 256 * 128)                             # 262,144 + 32,768
    alex = [alex_trunk0 + alex_b1, alex_trunk0 + alex_trunk1 + alex_b2,
            alex_trunk0 + alex_trunk1 + alex_trunk2 + 128 * 10]
    assert alex == [17339392, 19547392, 28247296]
    assert [r["macs"] for r in count_exit_paths(_net("alexnet_cifar10"), CIFAR)] == alex

    # B-ResNet-110: a 16->16 block at 30x30 is 2 convs of 30*30*16*(16*9) = 2,073,600.
    res_trunk0 = 30 * 30 * 16 * (3 * 9)                                  # 388,800
    res_b1 = (30 * 30 * 64 * (16 * 25) + 30 * 30 * 32 * (64 * 9)
              + 30 * 30 * 32 * (32 * 9) + 28800 * 10)                    # 48,211,200 in all
    block16 = 2 * 30 * 30 * 16 * (16 * 9)
    stage2 = 15 * 15 * 32 * (16 * 9) + 15 * 15 * 32 * (32 * 9) + 17 * 2 * 15 * 15 * 32 * (32 * 9)
    stage3 = 8 * 8 * 64 * (32 * 9) + 8 * 8 * 64 * (64 * 9) + 17 * 2 * 8 * 8 * 64 * (64 * 9)
    res = [res_trunk0 + res_b1, res_trunk0 + 19 * block16 + 14400 * 10,
           res_trunk0 + 18 * block16 + stage2 + stage3 + 576 * 10]
    assert res == [48600000, 79329600, 232411968]
    counts = count_exit_paths(_net("resnet110_cifar10"), CIFAR)
    assert [r["macs"] for r in counts] == res
    assert len(counts[2]["layers"]) == 110


def test_dropout_and_batchnorm_follow_the_train_flag():
    x = np.random.RandomState(0).rand(2, *CIFAR).astype(np.float32)
    alex = _net("alexnet_cifar10", main_only=True)
    first, second = alex.predict_all_exits(x)[0], alex.predict_all_exits(x)[0]
    np.testing.assert_array_equal(first, second)
    with chainer.using_config("train", True):
        assert not np.allclose(alex(x)[0].array, alex(x)[0].array)  # dropout is active
    # In inference a sample's output does not depend on the rest of the batch (BN uses
    # its running statistics, not the batch's).
    res = _net("resnet110_cifar10")
    together = res.predict_all_exits(x)
    alone = res.predict_all_exits(x[:1])
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a[:1], b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, batch", [("alexnet_cifar10", 4), ("resnet110_cifar10", 2)])
def test_every_parameter_gets_a_finite_gradient(name, batch):
    net = _net(name)
    rng = np.random.RandomState(1)
    x = rng.rand(batch, *CIFAR).astype(np.float32)
    t = rng.randint(0, 10, batch).astype(np.int32)
    loss = JointLoss(net)(x, t)
    assert np.isfinite(float(loss.array))
    net.cleargrads()
    loss.backward()
    # A convolution bias feeding a BatchNormalization is cancelled by the mean
    # subtraction, so its gradient is zero up to rounding: only check that it exists.
    before_bn = {"/trunk/0/0/b"} if name.startswith("resnet") else set()
    for pname, param in net.namedparams():
        assert param.grad is not None, f"{pname} got no gradient"
        assert np.all(np.isfinite(param.grad)), f"{pname} has a non-finite gradient"
        if pname in before_bn or pname.endswith(("conv1/b", "conv2/b")):
            continue
        assert np.any(param.grad != 0), f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", ["alexnet_cifar10", "resnet110_cifar10"])
def test_branchy_net_starts_from_the_baseline(name):
    baseline, branchy = _net(name, seed=0, main_only=True), _net(name, seed=1)
    x = np.random.RandomState(2).rand(1, *CIFAR).astype(np.float32)
    branchy.init_from_baseline(baseline)
    np.testing.assert_allclose(branchy.predict_all_exits(x)[-1], baseline.predict_all_exits(x)[0],
                               rtol=1e-5, atol=1e-6)


def test_expected_macs_has_one_last_digit_on_every_cpu():
    """The mix-weighted multiply-adds written to the tables must come out the same on every
    CPU: a BLAS dot product adds in an order (and with FMA) that its CPU kernel chooses, and
    gave '22174893.465600003' on a Xeon for the '22174893.4656' committed from an EPYC,
    failing the recompute of committed folders. Exactly rounded sums do not depend on the
    order of the terms, so any permutation of the exits gives the same float."""
    import itertools
    from branchynet.flops import expected_macs
    rng = np.random.RandomState(0)
    for _ in range(50):
        fractions, macs = rng.dirichlet(np.ones(4)), rng.randint(10 ** 5, 3 * 10 ** 8, 4)
        values = {expected_macs(fractions[list(p)], macs[list(p)])
                  for p in itertools.permutations(range(4))}
        assert len(values) == 1
        assert values.pop() == pytest.approx(float(np.dot(fractions, macs)), rel=1e-15)
