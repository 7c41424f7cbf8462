"""B-LeNet on MNIST (`docs/paper.md` section 2): two exits; the main branch is the baseline LeNet.

Layer list, as in the authors' ``networks/lenet_mnist.py``::

    conv(1,5,5,pad3) || B1: [pool, relu, conv(5,10,3,pad1), pool, relu, fc(640,10)]
    pool, relu, conv(5,10,5,pad3), pool, relu, conv(10,20,5,pad3), pool, relu, fc(720,84)
    || exit 2: [fc(84,10)]

``pool`` is 2x2 max pooling with stride 2 and Chainer's default ``cover_all=True``. There
is no relu between fc(720,84) and fc(84,10), as in the authors' code.
"""
import functools

import chainer.functions as F
import chainer.links as L

from branchynet.net import Branch
from networks import NetworkSpec, register

# The authors' LeNet grid (`docs/paper.md` section 3).
GRID = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
        1.0, 2.0, 3.0, 5.0, 10.0)


def build():
    """Return a fresh B-LeNet layer list."""
    pool = functools.partial(F.max_pooling_2d, ksize=2, stride=2)
    return [
        L.Convolution2D(1, 5, 5, stride=1, pad=3),
        Branch([pool, F.relu, L.Convolution2D(5, 10, 3, pad=1), pool, F.relu,
                L.Linear(640, 10)]),
        pool, F.relu,
        L.Convolution2D(5, 10, 5, stride=1, pad=3),
        pool, F.relu,
        L.Convolution2D(10, 20, 5, stride=1, pad=3),
        pool, F.relu,
        L.Linear(720, 84),
        Branch([L.Linear(84, 10)]),
    ]


SPEC = register(NetworkSpec(
    name="lenet_mnist",
    title="LeNet",
    build=build,
    dataset="mnist",
    quick_dataset="mnist-5k",
    grid=GRID,
    inc_amt=-0.0001,  # as in the authors' LeNet plots
    paper={"batch_size": 512, "baseline_epochs": 50, "branchy_epochs": 100},
    quick={"batch_size": 64, "baseline_epochs": 5, "branchy_epochs": 5},
))
