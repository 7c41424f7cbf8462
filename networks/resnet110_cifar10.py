"""B-ResNet-110 on CIFAR-10 (`docs/paper.md` section 2): three exits; the main branch is ResNet-110.

Layer list, as in the authors' ``networks/resnet_cifar10.py``::

    conv(3,16,3,pad0), BN(16), relu
    || B1: [conv(16,64,5,pad2), relu, LRN, conv(64,32,3,pad1), relu, conv(32,32,3,pad1), relu,
            fc(28800,10)]
    18 x ResBlock(16,16)
    || B2: [ResBlock(16,16), fc(14400,10)]
    ResBlock(16,32,stride2), 17 x ResBlock(32,32), ResBlock(32,64,stride2), 17 x ResBlock(64,64),
    average_pooling(6, stride 1) || exit 3: [fc(576,10)]

The first convolution has no padding, so a 3x32x32 input becomes 16x30x30: the fc inputs
are 32*30*30 = 28800 (B1) and 16*30*30 = 14400 (B2). The stride-2 blocks give 32x15x15 and
64x8x8, and 6x6 average pooling with stride 1 leaves 64*3*3 = 576 (main). 1 + 3*18*2
convolutions and the final fc make the 110 layers. The trunk and ResBlock convolutions use
He-normal initialisation (the authors' ``wscale=sqrt(2)``); the B1 branch keeps Chainer's
default, as in the authors' code. BatchNormalization normalises with batch statistics in
training and with its running averages when ``chainer.config.train`` is False.

Data: per-channel standardisation, as for B-AlexNet (see networks/alexnet_cifar10.py).
"""
import functools

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers

from branchynet.net import Branch
from networks import NetworkSpec, register

# The authors' ResNet grid, the same as LeNet's (`docs/paper.md` section 3).
GRID = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
        1.0, 2.0, 3.0, 5.0, 10.0)
BLOCKS_PER_STAGE = 18


class ResBlock(chainer.Chain):
    """Basic residual block: conv3x3 -> BN -> relu -> conv3x3 -> BN, plus the shortcut.

    When the block changes the shape, the shortcut is zero-padded in channels (the zeros
    come before ``x``, as in the authors' code) and subsampled by 1x1 average pooling with
    stride 2 (option A of the ResNet paper: no extra parameters).

    Args:
        in_size: input channels.
        out_size: output channels.
        stride: stride of the first convolution (2 halves the feature map).
    """

    def __init__(self, in_size, out_size, stride=1):
        super().__init__()
        self.stride = stride
        with self.init_scope():
            self.conv1 = L.Convolution2D(in_size, out_size, 3, stride, 1,
                                         initialW=initializers.HeNormal())
            self.bn1 = L.BatchNormalization(out_size)
            self.conv2 = L.Convolution2D(out_size, out_size, 3, 1, 1,
                                         initialW=initializers.HeNormal())
            self.bn2 = L.BatchNormalization(out_size)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if x.shape != h.shape:
            extra = h.shape[1] - x.shape[1]
            x = F.pad(x, ((0, 0), (extra, 0), (0, 0), (0, 0)), "constant")
            if x.shape[2:] != h.shape[2:]:
                x = F.average_pooling_2d(x, 1, 2)
        return F.relu(h + x)


def build():
    """Return a fresh B-ResNet-110 layer list."""
    lrn = functools.partial(F.local_response_normalization, n=3, alpha=5e-5, beta=0.75)
    layers = [
        L.Convolution2D(3, 16, 3, stride=1, pad=0, initialW=initializers.HeNormal()),
        L.BatchNormalization(16),
        F.relu,
        Branch([L.Convolution2D(16, 64, 5, pad=2), F.relu, lrn,
                L.Convolution2D(64, 32, 3, pad=1), F.relu,
                L.Convolution2D(32, 32, 3, pad=1), F.relu,
                L.Linear(28800, 10)]),
    ]
    layers += [ResBlock(16, 16) for _ in range(BLOCKS_PER_STAGE)]
    layers += [Branch([ResBlock(16, 16), L.Linear(14400, 10)])]
    for in_size, out_size in ((16, 32), (32, 64)):
        layers += [ResBlock(in_size, out_size, stride=2)]
        layers += [ResBlock(out_size, out_size) for _ in range(BLOCKS_PER_STAGE - 1)]
    layers += [functools.partial(F.average_pooling_2d, ksize=6, stride=1),
               Branch([L.Linear(576, 10)])]
    return layers


SPEC = register(NetworkSpec(
    name="resnet110_cifar10",
    title="ResNet-110",
    build=build,
    dataset="cifar10",
    quick_dataset="cifar10",
    grid=GRID,
    inc_amt=-0.0001,  # experiment_resnet_cifar10.py plots with inc_amt=-0.0001
    paper={"batch_size": 64, "baseline_epochs": 100, "branchy_epochs": 100},
    # Quick = minutes on a 2-core CPU (about 10 training images/s): 1,000 images, barely
    # trained; the paper setting needs a GPU.
    quick={"batch_size": 64, "baseline_epochs": 1, "branchy_epochs": 1,
           "train_limit": 1000, "test_limit": 1000},
    dataset_options={"preprocess": "standardize"},
    # --recipe fast (branchynet.training.FAST_RECIPE): the whole of CIFAR-10, batch 256, SGD
    # with momentum 0.9, weight decay 5e-4, one warm-up epoch then a cosine schedule from
    # 0.2 (0.1 per 128 images, the linear scaling rule), random crops of the 4-pixel-padded
    # image and flips; the joint stage starts from the trained baseline at 0.02. A standard
    # way to bring ResNet-110 above 90% in tens of epochs (the paper's 100 + 100 Adam epochs
    # without augmentation gave 80.70%). Batch 256 rather than 128: without cuDNN, Chainer's
    # per-iteration overhead (thousands of kernel launches for 110 layers) dominates a
    # GPU step, so fewer, larger steps train faster; 20 + 4 epochs are sized to about ten
    # minutes of an H200 (an estimate: docs/gpu.md section 6).
    fast={"batch_size": 256, "lr": 0.2, "baseline_epochs": 20, "branchy_epochs": 4,
          "train_limit": 0, "test_limit": 0},
))
