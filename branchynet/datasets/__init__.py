"""Datasets by name: ``load_dataset('mnist')``, ``load_dataset('cifar10')``, ..."""
from branchynet.datasets._files import DatasetError, cache_dir
from branchynet.datasets.base import Dataset, split_validation
from branchynet.datasets.cifar10 import load_cifar10, load_npz_dataset
from branchynet.datasets.mnist import load_mnist, load_mnist_5k

LOADERS = {
    "mnist": lambda data_dir=None, seed=0, **kw: load_mnist(data_dir, **kw),
    "mnist-5k": lambda data_dir=None, seed=0, **kw: load_mnist_5k(seed=seed, **kw),
    # options: preprocess ('scale' default, 'standardize', 'zca'), zca_epsilon, limit
    "cifar10": lambda data_dir=None, seed=0, **kw: load_cifar10(data_dir, **kw),
    # an authors'-style data.npz: option path (file or folder), else data_dir
    "npz": lambda data_dir=None, seed=0, path=None: load_npz_dataset(path or data_dir),
}


def load_dataset(name, data_dir=None, val_size=0, seed=0, **options):
    """Load a dataset by name, optionally carving a seeded validation split.

    Args:
        name: one of ``LOADERS`` (e.g. ``'mnist'``, ``'mnist-5k'``, ``'cifar10'``, ``'npz'``).
        data_dir: folder holding the dataset files (else $BRANCHYNET_DATA, then the cache).
        val_size: validation samples taken from the training set (count or fraction; 0: none).
        seed: seed of the validation split (and of any seeded train/test split).
        options: loader-specific options (e.g. ``preprocess`` for CIFAR-10).
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(LOADERS))}")
    dataset = LOADERS[name](data_dir=data_dir, seed=seed, **options)
    if val_size:
        dataset = split_validation(dataset, val_size, seed)
    return dataset


__all__ = ["Dataset", "DatasetError", "LOADERS", "cache_dir", "load_cifar10", "load_dataset",
           "load_mnist", "load_mnist_5k", "load_npz_dataset", "split_validation"]
