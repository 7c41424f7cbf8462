"""Shared fixtures: real MNIST subsets and a small B-LeNet trained by the tests themselves.

The suite trains many small networks in this process and in child processes (runner
commands, notebook kernels, MPI ranks) side by side on few cores, where BLAS threading
oversubscribes them (OpenBLAS at 2 threads made Chainer 5-35x slower on 2 loaded cores):
every process of the suite runs with one BLAS thread, set here for this process
(``branchynet.threads``) and in the environment the children inherit, whatever the user's
environment says.
"""
import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import branchynet  # noqa: E402,F401  (compatibility fixes before chainer)
import chainer  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from branchynet.datasets import load_dataset  # noqa: E402
from branchynet.net import BranchyNet  # noqa: E402
from branchynet.threads import set_blas_threads  # noqa: E402
from branchynet.training import train  # noqa: E402
from networks import get_network  # noqa: E402

set_blas_threads(1)  # NumPy may have loaded its BLAS before this file (pytest plugins)
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
