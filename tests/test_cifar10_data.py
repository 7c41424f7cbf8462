"""CIFAR-10 loading: file checks, locating/extracting/downloading, preprocessing, npz files.

Tests marked by the ``data_root`` fixture read the real CIFAR-10 folder from
$BRANCHYNET_DATA (e.g. /work/shared/data); they fail under CI when it is missing.
"""
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

import branchynet  # noqa: F401  (must precede chainer)
from branchynet.datasets import DatasetError, load_dataset
from branchynet.datasets import cifar10
from branchynet.datasets._files import environment_data_dir
from branchynet.datasets.cifar10 import (ARCHIVE, FOLDER, apply_zca, fit_zca, load_cifar10,
                                         load_npz_dataset, locate_cifar10)

# The official md5s (as listed by torchvision; PROVENANCE.txt records the same).
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


@pytest.fixture(scope="module")
def data_root():
    """The data root holding cifar10/cifar-10-batches-py, from $BRANCHYNET_DATA (made
    absolute, as the library resolves it: the tests link to it from elsewhere)."""
    root = environment_data_dir()
    if not root:
        reason = "BRANCHYNET_DATA is not set"
    elif not any(os.path.isdir(os.path.join(base, FOLDER))
                 for base in (os.path.join(root, "cifar10"), root)):
        reason = f"BRANCHYNET_DATA={root} holds no cifar10/{FOLDER}/"
    else:
        return root
    message = (f"{reason}; these tests read the real CIFAR-10: set BRANCHYNET_DATA to a folder "
               f"holding cifar10/{FOLDER}/ (e.g. /work/shared/data)")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $BRANCHYNET_DATA and an empty cache, so only what a test sets up is found."""
    monkeypatch.delenv("BRANCHYNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def _real_folder(root):
    folder = os.path.join(root, "cifar10", FOLDER)
    return folder if os.path.isdir(folder) else os.path.join(root, FOLDER)


def _linked_copy(source, target, skip=()):
    """A folder of symlinks to ``source``'s files (cheap stand-in for a copy)."""
    os.makedirs(target)
    for name in OFFICIAL_MD5:
        if name not in skip:
            os.symlink(os.path.join(source, name), os.path.join(target, name))


def _md5(data):
    return hashlib.md5(data).hexdigest()


def _make_archive(path, members):
    """Write a tar.gz holding ``members`` ({name in archive: bytes}); return its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        return _md5(f.read())


def test_md5_table_is_the_official_one():
    assert cifar10.FILES == OFFICIAL_MD5
    assert cifar10.ARCHIVE_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_full_training_and_test_sets(data_root):
    data = load_cifar10(data_root)
    assert data.train_x.shape == (50000, 3, 32, 32) and data.train_x.dtype == np.float32
    assert data.test_x.shape == (10000, 3, 32, 32) and data.test_x.dtype == np.float32
    assert data.train_y.dtype == np.int32 and data.test_y.dtype == np.int32
    assert np.bincount(data.train_y).tolist() == [5000] * 10
    assert np.bincount(data.test_y).tolist() == [1000] * 10
    assert data.train_x.min() == 0 and data.train_x.max() == 1
    # Commonly quoted CIFAR-10 training means (also in PROVENANCE.txt).
    np.testing.assert_allclose(data.train_x.mean(axis=(0, 2, 3)), [0.49140, 0.48216, 0.44653],
                               atol=5e-5)
    assert data.info["label_names"][0] == "airplane" and data.info["label_names"][9] == "truck"
    # The first image is the pickle's first row, R, G, B planes of 32x32, divided by 255.
    with open(os.path.join(data.info["folder"], "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(data.train_x[0] * 255, raw[b"data"][0].reshape(3, 32, 32))
    assert data.train_y[0] == raw[b"labels"][0]


def test_corrupt_file_is_reported(data_root, isolated):
    folder = isolated / "data" / "cifar10" / FOLDER
    _linked_copy(_real_folder(data_root), folder, skip=("batches.meta",))
    with open(os.path.join(_real_folder(data_root), "batches.meta"), "rb") as f:
        meta = bytearray(f.read())
    meta[-5] ^= 0xFF
    (folder / "batches.meta").write_bytes(bytes(meta))
    with pytest.raises(DatasetError, match=r"batches\.meta is corrupt.*expected "
                                           + OFFICIAL_MD5["batches.meta"]):
        load_cifar10(isolated / "data", limit=10, mirrors=())


def test_incomplete_folder_names_the_missing_files(data_root, isolated):
    folder = isolated / "data" / FOLDER
    _linked_copy(_real_folder(data_root), folder, skip=("data_batch_3", "test_batch"))
    with pytest.raises(DatasetError) as err:
        load_cifar10(isolated / "data", limit=10, mirrors=())
    assert "incomplete" in str(err.value) and str(folder) in str(err.value)
    assert "data_batch_3, test_batch" in str(err.value)


def test_missing_dataset_says_where_it_looked_and_how_to_fix(isolated):
    empty = isolated / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as err:
        load_cifar10(empty, mirrors=())
    message = str(err.value)
    for part in (FOLDER, ARCHIVE, str(empty / "cifar10"), str(isolated / "cache" / "branchynet"),
                 "BRANCHYNET_DATA", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "--data-dir"):
        assert part in message


@pytest.fixture
def fake_release(isolated, monkeypatch):
    """Swap the official file table for two tiny files; return (members, files) for an archive."""
    files = {"data_batch_1": b"first", "batches.meta": b"meta"}
    monkeypatch.setattr(cifar10, "FILES", {n: _md5(d) for n, d in files.items()})
    members = {f"{FOLDER}/{n}": d for n, d in files.items()}
    # Never extracted: outside the folder, or not one of the listed files.
    members.update({"../evil": b"x", f"{FOLDER}/readme.html": b"r", "other/data_batch_1": b"y"})
    return members, files


def test_archive_is_verified_and_extracted_into_the_cache(fake_release, isolated, monkeypatch):
    members, files = fake_release
    (isolated / "data" / "cifar10").mkdir(parents=True)
    archive = isolated / "data" / "cifar10" / ARCHIVE
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", _make_archive(archive, members))
    folder = locate_cifar10(isolated / "data", mirrors=())
    assert folder == str(isolated / "cache" / "branchynet" / "cifar10" / FOLDER)
    assert sorted(os.listdir(folder)) == sorted(files)
    assert (isolated / "cache" / "branchynet" / "cifar10" / FOLDER / "data_batch_1").read_bytes() \
        == b"first"
    assert not (isolated / "cache" / "branchynet" / "evil").exists()
    # No temporary folder is left behind, and a second call reuses the extraction.
    assert os.listdir(os.path.dirname(folder)) == [FOLDER]
    assert locate_cifar10(isolated / "data", mirrors=()) == folder

    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DatasetError, match="corrupt"):
        locate_cifar10(isolated / "data", mirrors=())


def test_missing_archive_is_downloaded_into_the_cache(fake_release, isolated, monkeypatch):
    members, files = fake_release
    source = isolated / "served.tar.gz"
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", _make_archive(source, members))
    calls = []

    def fake_download(filename, md5, path, mirrors):
        calls.append((filename, md5, path, mirrors))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(source, path)
        return path

    monkeypatch.setattr(cifar10, "download", fake_download)
    folder = locate_cifar10(isolated / "nothing", mirrors=("https://mirror.example/",))
    cache = isolated / "cache" / "branchynet" / "cifar10"
    assert calls == [(ARCHIVE, cifar10.ARCHIVE_MD5, str(cache / ARCHIVE),
                      ("https://mirror.example/",))]
    assert folder == str(cache / FOLDER) and sorted(os.listdir(folder)) == sorted(files)


def test_scale_and_standardize_on_a_subset(data_root):
    scaled = load_cifar10(data_root, limit=1000)
    assert scaled.train_x.shape == (1000, 3, 32, 32) and scaled.test_x.shape == (1000, 3, 32, 32)
    assert 0 <= scaled.train_x.min() and scaled.train_x.max() <= 1
    assert scaled.info["preprocess"] == "scale" and scaled.info["limit"] == 1000

    std = load_cifar10(data_root, preprocess="standardize", limit=1000)
    assert std.train_x.dtype == np.float32
    np.testing.assert_allclose(std.train_x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(std.train_x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # The test set uses the training statistics: close to, not exactly, 0 and 1.
    assert np.all(np.abs(std.test_x.mean(axis=(0, 2, 3))) < 0.1)
    mean, sd = np.array(std.info["channel_mean"]), np.array(std.info["channel_std"])
    np.testing.assert_allclose(std.test_x, (scaled.test_x - mean[:, None, None])
                               / sd[:, None, None], atol=1e-4)
    np.testing.assert_array_equal(std.train_y, scaled.train_y)


def test_zca_output_and_cache_reuse(data_root, isolated, monkeypatch):
    first = load_cifar10(data_root, preprocess="zca", zca_epsilon=0.1, limit=1000)
    assert first.train_x.shape == (1000, 3, 32, 32) and first.train_x.dtype == np.float32
    assert np.all(np.isfinite(first.train_x)) and np.all(np.isfinite(first.test_x))
    for x in (first.train_x, first.test_x):  # per-image min-max scaling
        flat = x.reshape(len(x), -1)
        np.testing.assert_allclose(flat.min(axis=1), 0, atol=1e-6)
        np.testing.assert_allclose(flat.max(axis=1), 1, atol=1e-6)
    cache = first.info["cache"]
    assert not first.notes["cache_hit"] and cache.startswith(str(isolated / "cache"))
    assert os.listdir(os.path.dirname(cache)) == [os.path.basename(cache)]  # no temp files

    def no_refit(*args, **kwargs):
        raise AssertionError("ZCA was fitted again instead of read from the cache")

    monkeypatch.setattr(cifar10, "fit_zca", no_refit)
    second = load_cifar10(data_root, preprocess="zca", zca_epsilon=0.1, limit=1000)
    assert second.notes["cache_hit"] and second.info["cache"] == cache
    assert second.info == first.info  # the record of what was read does not depend on the cache
    np.testing.assert_array_equal(second.train_x, first.train_x)
    np.testing.assert_array_equal(second.test_x, first.test_x)
    # Other settings are another cache entry.
    with pytest.raises(AssertionError, match="fitted again"):
        load_cifar10(data_root, preprocess="zca", zca_epsilon=0.2, limit=1000)


def test_fit_zca_whitens_as_the_authors_formula():
    rng = np.random.RandomState(0)
    x = rng.randn(3000, 6) @ rng.randn(6, 6) + rng.randn(6) * 10
    mean, components = fit_zca(x, chunk=700)
    white = (x - mean) @ components.T
    np.testing.assert_allclose(white.T @ white / len(x), np.eye(6), atol=1e-8)
    np.testing.assert_allclose(components, components.T, atol=1e-12)
    # The authors' formula: sigma = Xc^T Xc / N, U S V = svd(sigma), U diag(1/sqrt(S)) U^T.
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred.T @ centred / len(x))
    np.testing.assert_allclose(components, u @ np.diag(1 / np.sqrt(s)) @ u.T, rtol=1e-7)
    _, damped = fit_zca(x, epsilon=1.0)
    np.testing.assert_allclose(damped, u @ np.diag(1 / np.sqrt(s + 1)) @ u.T, rtol=1e-7)


def test_fit_zca_rejects_a_singular_covariance():
    x = np.random.RandomState(0).randn(10, 20)
    with pytest.raises(ValueError, match="zca_epsilon"):
        fit_zca(x)
    _, components = fit_zca(x, epsilon=0.5)
    assert np.all(np.isfinite(components))


def test_apply_zca_maps_constant_images_to_zero():
    x = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    out = apply_zca(x, np.zeros(3), np.eye(3))
    np.testing.assert_allclose(out, [[0, 1 / 3, 1], [0, 0, 0]])


def test_load_dataset_options_and_validation_split(data_root):
    data = load_dataset("cifar10", data_root, val_size=100, seed=3, limit=1000)
    assert len(data.train_y) == 900 and len(data.val_y) == 100 and len(data.test_y) == 1000
    assert data.info["val_seed"] == 3
    with pytest.raises(ValueError, match="preprocessing"):
        load_dataset("cifar10", data_root, preprocess="whiten")
    with pytest.raises(ValueError, match="limit"):
        load_cifar10(data_root, limit=0)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_dataset(tmp_path):
    rng = np.random.RandomState(0)
    arrays = dict(train_x=rng.rand(8, 3, 4, 4), train_y=np.arange(8) % 10,
                  test_x=rng.rand(4, 3, 4, 4), test_y=np.arange(4))
    path = _write_npz(tmp_path / "data.npz", **arrays)
    data = load_npz_dataset(path)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int32
    np.testing.assert_allclose(data.train_x, arrays["train_x"].astype(np.float32))
    np.testing.assert_array_equal(data.test_y, arrays["test_y"])
    assert load_npz_dataset(tmp_path).info["files"]["npz"]["path"] == str(path)  # a folder
    split = load_dataset("npz", path=str(path), val_size=2)
    assert len(split.train_y) == 6 and len(split.val_y) == 2


@pytest.mark.parametrize("change, message", [
    (dict(test_y=None), "missing key.*test_y"),
    (dict(train_x=np.zeros((8, 48))), r"train_x has shape \(8, 48\); expected \(N, C, H, W\)"),
    (dict(test_y=np.arange(5)), r"test_y has shape \(5,\); expected \(4,\)"),
    (dict(train_y=np.full(8, 0.5)), "non-integer labels"),
    (dict(test_x=np.zeros((4, 3, 5, 5))), "must match"),
])
def test_npz_dataset_errors(tmp_path, change, message):
    arrays = dict(train_x=np.zeros((8, 3, 4, 4)), train_y=np.zeros(8, int),
                  test_x=np.zeros((4, 3, 4, 4)), test_y=np.zeros(4, int))
    arrays.update(change)
    path = _write_npz(tmp_path / "data.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DatasetError, match=message):
        load_npz_dataset(path)


def test_npz_dataset_missing_file(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="no such file"):
        load_npz_dataset(tmp_path / "absent.npz")
    monkeypatch.setenv("BRANCHYNET_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="found no data.npz"):
        load_dataset("npz")
