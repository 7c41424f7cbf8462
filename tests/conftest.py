"""Shared fixtures: real MNIST subsets and a small B-LeNet trained by the tests themselves."""
import os

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np
import pytest

from branchynet.datasets import load_dataset
from branchynet.net import BranchyNet
from branchynet.training import train
from networks import get_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir():
    """The folder with the official dataset files ($BRANCHYNET_DATA, else ../shared/data).

    In CI (``$CI`` set) a missing folder fails the run instead of skipping tests.
    """
    path = os.environ.get("BRANCHYNET_DATA") or os.path.join(REPO, "..", "shared", "data")
    if not os.path.isdir(os.path.join(path, "mnist")):
        message = (f"no MNIST files under {path}/mnist: set BRANCHYNET_DATA to the folder "
                   f"holding mnist/ (and cifar10/)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def mnist(data_dir):
    """The official MNIST release (60,000 / 10,000)."""
    return load_dataset("mnist", data_dir)


@pytest.fixture(scope="session")
def lenet_pair(mnist, tmp_path_factory):
    """A baseline LeNet and a B-LeNet initialised from it, both trained on real MNIST.

    Small (4,000 training images, two epochs each) but real: ~95% accurate, so exit
    entropies spread over the threshold grid as they do for a fully trained net.
    """
    out = tmp_path_factory.mktemp("lenet")
    device = chainer.get_device("@numpy")
    x, y = mnist.train_x[:4000], mnist.train_y[:4000]
    np.random.seed(0)
    spec = get_network("lenet_mnist")
    baseline = BranchyNet(spec.build(), main_only=True)
    train(baseline, x, y, 2, 32, str(out / "baseline"), device, progress=False)
    branchy = BranchyNet(spec.build())
    branchy.init_from_baseline(baseline)
    train(branchy, x, y, 2, 32, str(out / "branchy"), device, progress=False)
    return baseline, branchy
