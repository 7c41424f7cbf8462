"""CIFAR-10 from the official python-version release, and authors'-style ``data.npz`` files.

``load_cifar10`` reads the folder ``cifar-10-batches-py/`` (or the archive
``cifar-10-python.tar.gz``, which it extracts into the cache) and returns the official
50,000/10,000 split as float32 (N, 3, 32, 32) with int32 labels. Files are searched as for
MNIST (``--data-dir``, then ``$BRANCHYNET_DATA``, then the cache; each root as
``<root>/cifar10/`` and ``<root>/``); every file is checked against the md5 of the
official release. When neither the folder nor the archive is found, the archive is
downloaded into the cache.

Preprocessing (``preprocess=``), recorded in ``Dataset.info``:

* ``'scale'`` (default): pixels divided by 255, so in [0, 1].
* ``'standardize'``: per-channel mean and standard deviation of the training set removed
  and divided out (statistics from the training images of the split that is loaded).
* ``'zca'``: the authors' ``datasets/cifar10.py``: ZCA whitening fitted on the training
  set (raw 0..255 pixels, covariance ``X^T X / N`` of the centred data), applied to both
  sets, then each image min-max scaled to [0, 1]. The authors add no epsilon to the
  eigenvalues (``1 / sqrt(S)``); ``zca_epsilon`` defaults to that 0 and can be raised
  for fits on fewer samples than the 3,072 features. The result is cached on disk.

The scripts behind the paper's table loaded a preprocessed ``data.npz`` instead (keys
train_x, train_y, test_x, test_y) whose preprocessing is undocumented;
``load_npz_dataset`` reads such a file.
"""
import hashlib
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile

import numpy as np

from branchynet.datasets._files import (ENV_VAR, DatasetError, DatasetValueError, cache_dir,
                                        download, file_record, md5sum, search_roots)
from branchynet.datasets.base import Dataset
from branchynet.datasets.user import load_npz

ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
# md5 of each file of the official folder (readme.html has no published md5 and is not read).
FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
TRAIN_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
PREPROCESSINGS = ("scale", "standardize", "zca")
# Bump when the cached zca arrays would change for the same settings.
_ZCA_CACHE_FORMAT = 1


def _check_folder(folder, files=None):
    """Verify that ``folder`` holds every file of ``files`` (default ``FILES``, a
    ``{name: md5}`` dict) with its md5; return the folder."""
    files = FILES if files is None else files
    missing = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise DatasetError(
            f"cifar10: the folder {folder} is incomplete: missing {', '.join(missing)}. "
            f"To fix: replace it with the complete folder extracted from {ARCHIVE} "
            f"({MIRRORS[0]}{ARCHIVE}), or delete it to use another copy or a download.")
    for name, md5 in files.items():
        path = os.path.join(folder, name)
        actual = md5sum(path)
        if actual != md5:
            raise DatasetError(
                f"{path} is corrupt: md5 {actual}, expected {md5}. Replace it with the official "
                f"file from {ARCHIVE}, or delete the folder to use another copy or a download.")
    return folder


def _extract(archive, target, archive_md5=None, files=None):
    """Extract the files of ``files`` from ``archive`` into the folder ``target``.

    Only members named ``<FOLDER>/<file>`` are read, so a hostile archive cannot write
    elsewhere. They go to a temporary folder beside ``target`` that is renamed into place
    once every md5 has been checked: an interrupted extraction never looks complete.
    ``archive_md5`` and ``files`` default to the official ``ARCHIVE_MD5`` and ``FILES``.
    """
    archive_md5 = ARCHIVE_MD5 if archive_md5 is None else archive_md5
    files = FILES if files is None else files
    actual = md5sum(archive)
    if actual != archive_md5:
        raise DatasetError(f"{archive} is corrupt: md5 {actual}, expected {archive_md5}. "
                           f"Delete it and provide the official archive.")
    if os.path.isdir(target):
        return _check_folder(target, files)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(target) + ".")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                folder, _, name = member.name.partition("/")
                if folder != FOLDER or name not in files or not member.isfile():
                    continue
                with tar.extractfile(member) as src, open(os.path.join(tmp, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        _check_folder(tmp, files)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process put a folder there first: use (and check) that one.
            if not os.path.isdir(target):
                raise
        return _check_folder(target, files)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def locate_cifar10(data_dir=None, mirrors=MIRRORS):
    """Return the path of a verified ``cifar-10-batches-py`` folder.

    Each search root is tried as ``<root>/cifar10/`` and ``<root>/``; in each place the
    folder is used if present, else the archive (extracted into the cache). Without
    either anywhere, the archive is downloaded into the cache from ``mirrors``.
    """
    roots = search_roots(data_dir)
    extracted = os.path.join(cache_dir(), "cifar10", FOLDER)
    for root in roots:
        for base in (os.path.join(root, "cifar10"), root):
            if os.path.isdir(os.path.join(base, FOLDER)):
                return _check_folder(os.path.join(base, FOLDER))
            if os.path.isfile(os.path.join(base, ARCHIVE)):
                return _extract(os.path.join(base, ARCHIVE), extracted)

    archive = os.path.join(cache_dir(), "cifar10", ARCHIVE)
    try:
        download(ARCHIVE, ARCHIVE_MD5, archive, mirrors)
    except DatasetError as err:
        searched = "\n".join(f"  {os.path.join(r, 'cifar10')}/ and {r}/" for r in roots)
        raise DatasetError(
            f"cifar10: found neither the folder {FOLDER}/ nor the archive {ARCHIVE}.\n"
            f"Looked in (command-line --data-dir, then ${ENV_VAR}, then the cache):\n{searched}\n"
            f"Download failed: {err}\n"
            f"To fix: download {MIRRORS[0]}{ARCHIVE} (md5 {ARCHIVE_MD5}) and put it, or the "
            f"folder {FOLDER}/ extracted from it, in one of those folders; or pass --data-dir / "
            f"set {ENV_VAR} to the folder holding it.") from None
    return _extract(archive, extracted)


def _read_batch(path):
    # The files are md5-verified official pickles (Python 2 protocol 2); keys are bytes.
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(batch[b"labels"], np.int32)


def _read_split(folder, names, limit, records):
    xs, ys, count = [], [], 0
    for name in names:
        if limit is not None and count >= limit:
            break
        x, y = _read_batch(os.path.join(folder, name))
        records[name] = file_record(os.path.join(folder, name))
        xs.append(x)
        ys.append(y)
        count += len(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if limit is None else (x[:limit], y[:limit])


def fit_zca(x, epsilon=0.0, chunk=5000):
    """Fit ZCA whitening on the rows of ``x`` (N, D); return ``(mean, components)``.

    As in the authors' code: ``sigma = Xc^T Xc / N`` of the centred data and
    ``components = U diag(1 / sqrt(S + epsilon)) U^T`` (the authors use epsilon = 0).
    The covariance is accumulated in float64 over row chunks (no float64 copy of ``x``),
    and ``eigh`` replaces the authors' SVD: for a symmetric positive semi-definite matrix
    both give the same U and S, and eigh is several times faster.

    Args:
        x: array (N, D), any real dtype.
        epsilon: added to every eigenvalue before the inverse square root.
        chunk: rows per chunk of the covariance product.
    """
    n = len(x)
    mean = x.mean(axis=0, dtype=np.float64)
    sigma = np.zeros((x.shape[1], x.shape[1]))
    for i in range(0, n, chunk):
        centred = x[i:i + chunk] - mean
        sigma += centred.T @ centred
    sigma /= n
    eigenvalues, vectors = np.linalg.eigh(sigma)
    eigenvalues = eigenvalues + epsilon
    # Relative to the largest eigenvalue, anything this small is rounding noise of a
    # singular covariance; its inverse square root would blow up.
    if eigenvalues.min() <= eigenvalues.max() * 1e-12:
        raise ValueError(
            f"the covariance of {n} samples in {x.shape[1]} dimensions is singular (smallest "
            f"eigenvalue {eigenvalues.min():.3g} with epsilon {epsilon}); fit on more samples "
            f"than dimensions or pass zca_epsilon > 0")
    components = (vectors / np.sqrt(eigenvalues)) @ vectors.T
    return mean, components


def apply_zca(x, mean, components, chunk=5000):
    """Whiten the rows of ``x`` (N, D), then min-max scale each row to [0, 1] (float32).

    A constant row (zero range, which whitened images never are in practice) maps to 0
    rather than to the authors' 0/0 = NaN.
    """
    out = np.empty(x.shape, np.float32)
    for i in range(0, len(x), chunk):
        white = (x[i:i + chunk] - mean) @ components.T
        white -= white.min(axis=1, keepdims=True)
        peak = white.max(axis=1, keepdims=True)
        out[i:i + chunk] = np.divide(white, peak, out=np.zeros_like(white), where=peak > 0)
    return out


def _zca_cached(train_x, test_x, settings):
    """ZCA-preprocess both sets, reusing the cached result for the same ``settings``.

    The cache file's name is a hash of the settings (epsilon, limit, source md5s, format);
    it is written to a temporary file and renamed, so a crash never leaves half a file.
    """
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), "cifar10", "preprocessed", f"zca-{key}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as cached:
                train, test = cached["train_x"], cached["test_x"]
            if train.shape == train_x.shape and test.shape == test_x.shape:
                return train, test, path, True
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            pass  # unreadable or stale: recompute and overwrite below
    flat_train = train_x.reshape(len(train_x), -1)
    mean, components = fit_zca(flat_train, settings["epsilon"])
    train = apply_zca(flat_train, mean, components).reshape(train_x.shape)
    test = apply_zca(test_x.reshape(len(test_x), -1), mean, components).reshape(test_x.shape)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".zca-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, train_x=train, test_x=test)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return train, test, path, False


def _standardize(train_x, test_x):
    """Per-channel standardisation with training-set statistics (computed in float64)."""
    mean = np.array([train_x[:, c].mean(dtype=np.float64) for c in range(3)])
    std = np.array([train_x[:, c].std(dtype=np.float64) for c in range(3)])
    shift = mean.astype(np.float32).reshape(1, 3, 1, 1)
    scale = (1 / std).astype(np.float32).reshape(1, 3, 1, 1)
    train = (train_x.astype(np.float32) - shift) * scale
    test = (test_x.astype(np.float32) - shift) * scale
    return train, test, mean / 255, std / 255


def load_cifar10(data_dir=None, preprocess="scale", zca_epsilon=0.0, limit=None,
                 mirrors=MIRRORS):
    """Load the official CIFAR-10 release (downloaded into the cache if missing).

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` or the archive (else
            $BRANCHYNET_DATA, then the cache).
        preprocess: ``'scale'``, ``'standardize'`` or ``'zca'`` (see the module docstring).
        zca_epsilon: added to the covariance eigenvalues by ``'zca'`` (authors: 0).
        limit: keep only the first ``limit`` images of each split (tests and smoke runs);
            preprocessing statistics are then fitted on those training images.
        mirrors: base URLs the archive is downloaded from when no copy is found.
    """
    if preprocess not in PREPROCESSINGS:
        raise DatasetValueError(f"unknown CIFAR-10 preprocessing {preprocess!r}; "
                                f"choose one of {', '.join(PREPROCESSINGS)}")
    if limit is not None and int(limit) < 1:
        raise DatasetValueError(f"limit must be a positive number of images, got {limit!r}")
    limit = None if limit is None else int(limit)
    folder = locate_cifar10(data_dir, mirrors)
    records = {}
    train_x, train_y = _read_split(folder, TRAIN_BATCHES, limit, records)
    test_x, test_y = _read_split(folder, ("test_batch",), limit, records)
    with open(os.path.join(folder, "batches.meta"), "rb") as f:
        label_names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    records["batches.meta"] = file_record(os.path.join(folder, "batches.meta"))

    info = {"source": "official CIFAR-10 python version", "folder": folder, "files": records,
            "samples": {"train": len(train_y), "test": len(test_y)}, "classes": 10,
            "label_names": label_names, "scaling": "uint8, divided by 255",
            "preprocess": preprocess}
    if limit is not None:
        info["limit"] = limit
    if preprocess == "scale":
        train, test = (train_x / np.float32(255)), (test_x / np.float32(255))
    elif preprocess == "standardize":
        train, test, mean, std = _standardize(train_x, test_x)
        info.update(channel_mean=mean.tolist(), channel_std=std.tolist(),
                    note="mean/std of the 0..1-scaled training images, per channel")
    else:
        settings = {"format": _ZCA_CACHE_FORMAT, "epsilon": float(zca_epsilon), "limit": limit,
                    "md5": {name: FILES[name] for name in TRAIN_BATCHES + ("test_batch",)}}
        train, test, path, hit = _zca_cached(train_x, test_x, settings)
        info.update(zca_epsilon=float(zca_epsilon), cache=path, scaling="ZCA, then per-image "
                    "min-max to [0, 1]",
                    note="ZCA fitted on the training set, then per-image min-max to [0, 1]")
    return Dataset("cifar10", train.astype(np.float32, copy=False), train_y,
                   test.astype(np.float32, copy=False), test_y, info=info,
                   notes={"cache_hit": hit} if preprocess == "zca" else {})


def load_npz_dataset(path, name=None, preprocess="scale"):
    """Load an npz dataset (the authors' ``data.npz`` keys; format in docs/own_data.md).

    Kept for compatibility: ``branchynet.datasets.user.load_npz`` does the work.

    Args:
        path: the .npz file, or a folder holding ``data.npz`` (or one .npz file).
        name: the returned Dataset's name (default ``npz:<file or folder name>``).
        preprocess: ``'scale'`` (uint8 / 255, floats as stored) or ``'standardize'``.
    """
    if path is None:
        raise DatasetError("an npz dataset needs the path of its data.npz (holding train_x, "
                           "train_y, test_x, test_y): pass --data-dir DIR or --dataset PATH.npz")
    data = load_npz(path, preprocess=preprocess)
    if name:
        data.name = name
    return data
