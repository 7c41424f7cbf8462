"""A network of one's own, written the usual Chainer way: a 3-exit B-net for MNIST.

Input sizes are left to Chainer (``None``: set by the first batch), the first exit leaves
before any trunk layer, heads are single links or lists, and there is BatchNormalization
and dropout. ``build`` returns the flat layer list; run it with

    ./dev.sh run --network docs/examples/my_net.py:build --dataset mnist-5k

(see docs/own_network.md).
"""
import functools

import chainer.functions as F
import chainer.links as L

from branchynet.net import Branch

pool = functools.partial(F.max_pooling_2d, ksize=2, stride=2)


def build():
    """Return a fresh layer list: exit 1 on the pixels, exit 2 after one conv block, exit 3
    at the end of the trunk."""
    return [
        Branch(L.Linear(None, 10)),
        L.Convolution2D(None, 8, 3, pad=1), L.BatchNormalization(8), F.relu, pool,
        Branch([L.Convolution2D(None, 8, 3, pad=1), L.BatchNormalization(8), F.relu, pool,
                L.Linear(None, 10)]),
        L.Convolution2D(None, 16, 3, pad=1), F.relu, pool,
        L.Linear(None, 64), F.relu, F.dropout,
        Branch(L.Linear(None, 10)),
    ]
