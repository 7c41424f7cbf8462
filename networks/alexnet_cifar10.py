"""B-AlexNet on CIFAR-10 (`docs/paper.md` section 2): three exits; the main branch is the baseline.

Layer list, as in the authors' ``networks/alex_cifar10.py``::

    conv(3,32,5,pad2), relu, pool, LRN, conv(32,64,5,pad2)
    || B1: [relu, pool, LRN, conv(64,32,3,pad1), relu, conv(32,32,3,pad1), relu, pool, fc(512,10)]
    relu, pool, LRN, conv(64,96,3,pad1)
    || B2: [relu, pool, LRN, conv(96,32,3,pad1), relu, pool, fc(128,10)]
    relu, conv(96,96,3,pad1), relu, conv(96,64,3,pad1), relu, pool,
    fc(1024,256), relu, dropout(0.5), fc(256,128), relu, dropout(0.5) || exit 3: [fc(128,10)]

``pool`` is 3x3 max pooling with stride 2 and Chainer's default ``cover_all=True`` (so
32 -> 16 -> 8 -> 4 -> 2), ``LRN`` is local_response_normalization(n=3, alpha=5e-5,
beta=0.75). With a 3x32x32 input the fc inputs are 32*4*4 = 512 (B1), 32*2*2 = 128 (B2)
and 64*4*4 = 1024 (main). ``F.dropout`` is active only while ``chainer.config.train``.

Data: per-channel standardisation (``preprocess='standardize'``). The authors' scripts
loaded a ``data.npz`` with undocumented preprocessing; with [0, 1]-scaled pixels this
network sits at the chance loss ln 10 for the first ~100 Adam steps (batch 32), and with
the authors' ``cifar10.py`` ZCA + per-image min-max (``'zca'``, low-contrast inputs) for
longer still, while standardised inputs start learning sooner. Short (quick) runs depend
on that; the loader's other preprocessings stay available through the dataset options.
"""
import functools

import chainer.functions as F
import chainer.links as L

from branchynet.net import Branch
from networks import NetworkSpec, register

# The authors' AlexNet grid (`docs/paper.md` section 3).
GRID = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 0.75, 1.0, 5.0, 10.0)


def build():
    """Return a fresh B-AlexNet layer list."""
    pool = functools.partial(F.max_pooling_2d, ksize=3, stride=2)
    lrn = functools.partial(F.local_response_normalization, n=3, alpha=5e-5, beta=0.75)
    dropout = functools.partial(F.dropout, ratio=0.5)
    return [
        L.Convolution2D(3, 32, 5, stride=1, pad=2), F.relu, pool, lrn,
        L.Convolution2D(32, 64, 5, stride=1, pad=2),
        Branch([F.relu, pool, lrn,
                L.Convolution2D(64, 32, 3, pad=1), F.relu,
                L.Convolution2D(32, 32, 3, pad=1), F.relu,
                pool, L.Linear(512, 10)]),
        F.relu, pool, lrn,
        L.Convolution2D(64, 96, 3, stride=1, pad=1),
        Branch([F.relu, pool, lrn,
                L.Convolution2D(96, 32, 3, pad=1), F.relu,
                pool, L.Linear(128, 10)]),
        F.relu,
        L.Convolution2D(96, 96, 3, stride=1, pad=1), F.relu,
        L.Convolution2D(96, 64, 3, stride=1, pad=1), F.relu,
        pool,
        L.Linear(1024, 256), F.relu, dropout,
        L.Linear(256, 128), F.relu, dropout,
        Branch([L.Linear(128, 10)]),
    ]


SPEC = register(NetworkSpec(
    name="alexnet_cifar10",
    title="AlexNet",
    build=build,
    dataset="cifar10",
    quick_dataset="cifar10",
    grid=GRID,
    inc_amt=-0.0001,  # experiment_alex_cifar10.py plots with inc_amt=-0.0001
    paper={"batch_size": 512, "baseline_epochs": 50, "branchy_epochs": 100},
    # Small batches: a quick run needs enough Adam steps to leave the initial plateau.
    # Quick = minutes on a 2-core CPU (about 75 training images/s): part of CIFAR-10.
    quick={"batch_size": 32, "baseline_epochs": 2, "branchy_epochs": 2,
           "train_limit": 5000, "test_limit": 2000},
    dataset_options={"preprocess": "standardize"},
    # --recipe fast (branchynet.training.FAST_RECIPE), a CPU recipe for the whole of
    # CIFAR-10: batch 128, SGD with momentum 0.9, weight decay 5e-4, one warm-up epoch then
    # a cosine schedule from the rate below, random crops of the 4-pixel-padded image and
    # flips; 30 baseline epochs, then 10 joint epochs from the trained baseline at a tenth
    # of the rate. Why: the paper's Adam schedule (batch 512, 50 + 100 epochs, no
    # augmentation) is about 30 h on 2 CPU cores; decaying SGD with augmentation is the
    # usual way to bring a small CIFAR-10 network to convergence in tens of epochs. The
    # rate 0.05 is the pilot's choice (scripts/recipe_pilot.py --rates 0.01 0.02 0.05 0.1
    # 0.2: 2 epochs of the first 10,000 training images, held-out = the last 2,000, no test
    # data; benchmarks/results/alexnet_pilot.json): 31.9% held-out after 2 epochs against
    # 28.2 / 29.8% at 0.01 / 0.02, while 0.1 stalls at 21.9% and 0.2 diverges to chance
    # (docs/replication.md).
    fast={"batch_size": 128, "lr": 0.05, "baseline_epochs": 30, "branchy_epochs": 10,
          "train_limit": 0, "test_limit": 0},
))
