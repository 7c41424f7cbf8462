"""Datasets of your own: idx folders and npz files, written from slices of the real MNIST and
CIFAR-10 in $BRANCHYNET_DATA (docs/own_data.md)."""
import gzip
import hashlib
import json
import os
import shutil

import branchynet  # noqa: F401  (must precede chainer)
import numpy as np
import pytest

from branchynet.datasets import (DATASET_KINDS, LOADERS, DatasetError, DatasetValueError,
                                 dataset_kind, dataset_label, info_differences, load_dataset,
                                 split_validation)
from branchynet.datasets.cifar10 import FOLDER, load_cifar10
from branchynet.datasets.mnist import FILES, load_mnist
from branchynet.datasets.user import read_idx

NAMES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $BRANCHYNET_DATA and an empty cache, so only what a test names is found."""
    monkeypatch.delenv("BRANCHYNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def digits(data_dir):
    """Raw uint8 slices of the official MNIST: 600 training and 200 test digits."""
    folder = os.path.join(data_dir, "mnist")
    raw = {key: read_idx(os.path.join(folder, name + ".gz")) for key, name in NAMES.items()}
    return {k: v[:600] if k.startswith("train") else v[:200] for k, v in raw.items()}


@pytest.fixture(scope="module")
def cifar(data_dir):
    """Raw uint8 CIFAR-10 slices, NCHW: 300 training and 100 test images."""
    if not os.path.isdir(os.path.join(data_dir, "cifar10", FOLDER)):
        message = f"no cifar10/{FOLDER} under {data_dir}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    data = load_cifar10(data_dir, limit=300)
    x = np.round(data.train_x * 255).astype(np.uint8)
    tx = np.round(data.test_x * 255).astype(np.uint8)
    return {"train_x": x, "train_y": data.train_y, "test_x": tx[:100], "test_y": data.test_y[:100]}


def write_idx(path, array, gz=False):
    """Write ``array`` (uint8) as an idx file, gzip-compressed when ``gz``."""
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def write_idx_folder(folder, arrays, gz=False, names=NAMES):
    os.makedirs(folder, exist_ok=True)
    for key, name in names.items():
        write_idx(os.path.join(folder, name + (".gz" if gz else "")), arrays[key], gz)
    return str(folder)


# -- idx -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_loads_with_shape_classes_and_scaling_inferred(digits, isolated, gz):
    folder = write_idx_folder(isolated / "digits", digits, gz)
    data = load_dataset("idx", folder)
    assert data.train_x.shape == (600, 1, 28, 28) and data.test_x.shape == (200, 1, 28, 28)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int32
    np.testing.assert_array_equal(data.train_x[:, 0], digits["train_x"] / np.float32(255))
    np.testing.assert_array_equal(data.test_y, digits["test_y"])
    info = data.info
    assert info["classes"] == 10 and info["scaling"] == "uint8, divided by 255"
    assert info["layout"] == "(N, H, W) -> (N, 1, H, W)" and info["preprocess"] == "scale"
    assert info["samples"] == {"train": 600, "test": 200}
    line = data.summary()
    assert line.startswith("idx:digits: train 600, test 200, input (1, 28, 28), 10 classes")
    assert "divided by 255" in line and folder in line


def test_idx_other_prefixes_and_a_remapped_class_set(digits, isolated):
    # Digits 0-4 only, relabelled 4-y: a 5-class dataset that is not MNIST.
    keep_train, keep_test = digits["train_y"] < 5, digits["test_y"] < 5
    arrays = {"train_x": digits["train_x"][keep_train],
              "train_y": 4 - digits["train_y"][keep_train],
              "test_x": digits["test_x"][keep_test], "test_y": 4 - digits["test_y"][keep_test]}
    names = {k: "fives-" + v.replace("t10k", "test") for k, v in NAMES.items()}
    folder = write_idx_folder(isolated / "fives", arrays, gz=True, names=names)
    data = load_dataset("idx", folder)
    assert data.info["classes"] == 5 and len(data.train_y) == keep_train.sum()
    np.testing.assert_array_equal(data.train_y, arrays["train_y"])


def test_idx_folder_problems_are_named(digits, isolated):
    folder = isolated / "bad"
    write_idx_folder(folder, digits)
    write_idx(folder / "extra-train-images-idx3-ubyte", digits["train_x"])
    write_idx(folder / "extra-train-labels-idx1-ubyte", digits["train_y"])
    with pytest.raises(DatasetError, match=r"cannot tell one training and one test set apart.*"
                                           r"training prefixes \['extra-train', 'train'\]"):
        load_dataset("idx", folder)
    os.remove(folder / "extra-train-labels-idx1-ubyte")
    with pytest.raises(DatasetError,
                       match="holds extra-train images but no extra-train-labels-idx1-ubyte"):
        load_dataset("idx", folder)
    os.remove(folder / "extra-train-images-idx3-ubyte")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", digits["test_y"], gz=True)
    with pytest.raises(DatasetError, match="keep one of them"):
        load_dataset("idx", folder)
    os.remove(folder / "t10k-labels-idx1-ubyte.gz")
    with open(folder / "t10k-images-idx3-ubyte", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DatasetError, match="truncated idx file"):
        load_dataset("idx", folder)


@pytest.mark.parametrize("train_y, test_y, message", [
    (lambda y: y + 1, lambda y: y + 1, r"not contiguous.*class\(es\) 0 never occur"),
    (lambda y: y, lambda y: np.where(y == 3, 200, y), "test labels out of range: 200"),
])
def test_idx_labels_must_be_0_to_k_minus_1(digits, isolated, train_y, test_y, message):
    arrays = dict(digits, train_y=train_y(digits["train_y"]), test_y=test_y(digits["test_y"]))
    with pytest.raises(DatasetError, match=message):
        load_dataset("idx", write_idx_folder(isolated / "labels", arrays))


def test_idx_needs_its_folder(isolated, monkeypatch, digits):
    with pytest.raises(DatasetError, match=r"absent: no such file or folder"):
        load_dataset("idx", isolated / "absent")
    monkeypatch.setenv("BRANCHYNET_DATA", str(isolated / "root"))
    with pytest.raises(DatasetError, match="(?s)Looked in .*root/idx"):
        load_dataset("idx")
    write_idx_folder(isolated / "root" / "idx", digits, gz=True)
    assert load_dataset("idx").info["folder"] == str(isolated / "root" / "idx")


def test_mnist_md5_message_for_another_idx_dataset(digits, isolated):
    """A valid idx file under an official name is another dataset: no advice to delete it."""
    folder = write_idx_folder(isolated / "other", digits, gz=True)
    with pytest.raises(DatasetError) as err:
        load_mnist(folder, mirrors=())
    message = str(err.value)
    assert "is a valid idx file (600 x 28 x 28 uint8) but not the official MNIST" in message
    assert f"--dataset idx --data-dir {folder}" in message
    assert "delete" not in message.lower() and "corrupt" not in message
    # A truncated file is not a valid idx file: that one is corrupt, and may be deleted.
    path = os.path.join(folder, "train-images-idx3-ubyte.gz")
    with open(path, "r+b") as f:
        f.truncate(5000)
    with pytest.raises(DatasetError,
                       match=r"train-images-idx3-ubyte.gz is corrupt: md5.*Delete it"):
        load_mnist(folder, mirrors=())


def test_mnist_points_at_an_idx_folder_it_cannot_use(digits, isolated):
    """Raw (not .gz) idx files are not the official names: --dataset mnist says to use idx."""
    folder = write_idx_folder(isolated / "raw", digits)
    with pytest.raises(DatasetError, match=r"(?s)missing file.*" + f"{folder} holds a dataset in "
                       r"idx format.*--dataset idx --data-dir " + folder):
        load_mnist(folder, mirrors=())
    os.rename(folder, isolated / "idx")
    assert load_dataset("idx", isolated).info["folder"] == str(isolated / "idx")  # <dir>/idx/


# -- npz -----------------------------------------------------------------------------------

def write_npz(path, **arrays):
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_npz_nchw_and_nhwc_give_the_same_images(cifar, isolated):
    nchw = write_npz(isolated / "nchw.npz", **cifar)
    nhwc = write_npz(isolated / "nhwc.npz", **dict(
        cifar, train_x=cifar["train_x"].transpose(0, 2, 3, 1),
        test_x=cifar["test_x"].transpose(0, 2, 3, 1)))
    a, b = load_dataset(nchw), load_dataset("npz", nhwc)
    assert a.train_x.shape == (300, 3, 32, 32) and a.info["layout"] == "NCHW (inferred)"
    assert b.info["layout"] == "NHWC (inferred) -> NCHW"
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_x, cifar["test_x"] / np.float32(255))
    assert a.info["classes"] == 10 and a.info["scaling"] == "uint8, divided by 255"
    assert a.name == "npz:nchw" and "10 classes" in a.summary()
    # float32 images are used as stored
    floats = write_npz(isolated / "f.npz", **dict(cifar, train_x=a.train_x * 2, test_x=a.test_x))
    c = load_dataset(floats)
    assert c.info["scaling"] == "float32, used as stored" and c.train_x.max() == 2 * a.train_x.max()


def test_npz_layout_key_settles_an_ambiguous_shape(isolated):
    rng = np.random.RandomState(0)
    arrays = dict(train_x=rng.rand(6, 3, 5, 3).astype(np.float32), train_y=np.arange(6) % 2,
                  test_x=rng.rand(2, 3, 5, 3).astype(np.float32), test_y=np.arange(2))
    with pytest.raises(DatasetError,
                       match=r"cannot be told.*add the key layout='NCHW' or layout='NHWC'"):
        load_dataset(write_npz(isolated / "a.npz", **arrays))
    data = load_dataset(write_npz(isolated / "b.npz", layout="NHWC", **arrays))
    assert data.train_x.shape == (6, 3, 3, 5) and data.info["layout"] == "NHWC (given) -> NCHW"


def test_npz_gray_images_and_its_own_validation_split(digits, isolated):
    path = write_npz(isolated / "data.npz", train_x=digits["train_x"][:500],
                     train_y=digits["train_y"][:500], val_x=digits["train_x"][500:],
                     val_y=digits["train_y"][500:], test_x=digits["test_x"],
                     test_y=digits["test_y"], label_names=np.array(list("0123456789")))
    data = load_dataset("npz", isolated)  # a folder holding data.npz
    assert data.train_x.shape == (500, 1, 28, 28) and data.val_x.shape == (100, 1, 28, 28)
    assert data.info["samples"] == {"train": 500, "test": 200, "val": 100}
    assert data.info["label_names"][9] == "9" and data.info["files"]["npz"]["path"] == path
    assert data.name == "npz:" + os.path.basename(str(isolated))  # data.npz: named by its folder
    assert "val 100" in data.summary()
    with pytest.raises(ValueError, match="already has a validation split"):
        split_validation(data, 50)


def _cifar_errors():
    x, y = np.zeros((8, 3, 4, 4), np.uint8), np.arange(8) % 4
    tx, ty = np.zeros((4, 3, 4, 4), np.uint8), np.arange(4)
    base = dict(train_x=x, train_y=y, test_x=tx, test_y=ty)
    return base, [
        (dict(test_y=None), r"missing key\(s\) test_y; it holds train_x, train_y, test_x"),
        (dict(val_x=tx), r"missing key\(s\) val_y"),
        (dict(train_x=x.astype(np.int32)), r"train_x has dtype int32; images must be uint8"),
        (dict(test_x=np.full((4, 3, 4, 4), np.nan, np.float32), train_x=x.astype(np.float32)),
         "NaN or infinite"),
        (dict(test_x=tx.astype(np.float32)), "mix image dtypes"),
        (dict(train_y=y.astype(np.float32)), r"non-integer labels \(dtype float32\)"),
        (dict(train_y=np.arange(7)),
         r"train_y has shape \(7,\); expected \(8,\).*mismatched lengths"),
        (dict(test_y=np.array([0, 1, 2, 4])), r"test labels out of range: 4 \(must be 0..3"),
        (dict(train_y=y - 1), r"train labels out of range: -1"),
        (dict(train_y=y * 2), r"not contiguous.*class\(es\) 1, 3, 5 never occur"),
        (dict(label_names=np.array(["a", "b", "c"])), r"train labels out of range: 3.*label_names"),
        (dict(train_x=x[:0], train_y=y[:0]), r"the train split is empty"),
        (dict(val_x=tx[:0], val_y=ty[:0]), r"the val split is empty.*or leave val_x/val_y out"),
        (dict(test_x=np.zeros((4, 3, 5, 5), np.uint8)), "must match in shape"),
        (dict(train_x=np.zeros((8, 48), np.uint8)), r"train_x has shape \(8, 48\); expected"),
        (dict(layout="NWHC"), "layout is 'NWHC'; it must be 'NCHW' or 'NHWC'"),
    ]


@pytest.mark.parametrize("change, message", _cifar_errors()[1])
def test_npz_errors_name_the_problem_and_the_fix(isolated, change, message):
    arrays = dict(_cifar_errors()[0], **change)
    path = write_npz(isolated / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(path)
    assert "To fix" in str(err.value) or "must be" in str(err.value)


def test_npz_is_found_like_the_other_datasets(digits, isolated, monkeypatch):
    arrays = dict(digits)
    with pytest.raises(DatasetError, match="found no data.npz"):
        load_dataset("npz")
    root = isolated / "root"
    os.makedirs(root / "npz")
    path = write_npz(root / "npz" / "data.npz", **arrays)
    monkeypatch.setenv("BRANCHYNET_DATA", str(root))
    assert load_dataset("npz").info["files"]["npz"]["path"] == path
    # --data-dir is the only place looked at, never a fallback to $BRANCHYNET_DATA
    with pytest.raises(DatasetError, match=r"elsewhere: no such file or folder"):
        load_dataset("npz", isolated / "elsewhere")
    os.makedirs(isolated / "one")
    write_npz(isolated / "one" / "mine.npz", **arrays)
    assert load_dataset("npz", isolated / "one").name == "npz:mine"  # the folder's only .npz
    write_npz(isolated / "one" / "two.npz", **arrays)
    with pytest.raises(DatasetError, match=r"several .npz files \(mine.npz, two.npz\)"):
        load_dataset("npz", isolated / "one")


def test_preprocessing_of_npz_and_idx(cifar, digits, isolated):
    path = write_npz(isolated / "c.npz", **cifar)
    data = load_dataset(path, preprocess="standardize")
    means = data.train_x.mean(axis=(0, 2, 3))
    stds = data.train_x.std(axis=(0, 2, 3))
    np.testing.assert_allclose(means, 0, atol=1e-5)
    np.testing.assert_allclose(stds, 1, atol=1e-4)
    scaled = load_dataset(path, preprocess="scale")
    shift = np.array(data.info["channel_mean"]).reshape(1, 3, 1, 1)
    scale = np.array(data.info["channel_std"]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(data.test_x, (scaled.test_x - shift) / scale, atol=1e-5)
    assert data.info["preprocess"] == "standardize" and "preprocess standardize" in data.summary()
    assert json.loads(json.dumps(data.info)) == data.info
    folder = write_idx_folder(isolated / "d", digits)
    standardized = load_dataset("idx", folder, preprocess="standardize")
    assert standardized.train_x.mean() == pytest.approx(0, abs=1e-5)
    with pytest.raises(DatasetValueError, match="zca.*is for --dataset cifar10"):
        load_dataset(path, preprocess="zca")
    with pytest.raises(DatasetValueError, match="no option zca_epsilon"):
        load_dataset("idx", folder, zca_epsilon=0.1)


# -- the record of what was read, the label, the kinds ---------------------------------------

def test_info_records_every_file_with_its_sha256_and_is_stable(digits, isolated):
    folder = write_idx_folder(isolated / "a" / "digits", digits, gz=True)
    data = load_dataset("idx", folder)
    assert sorted(data.info["files"]) == ["test_x", "test_y", "train_x", "train_y"]
    for key, record in data.info["files"].items():
        with open(record["path"], "rb") as f:
            assert record["sha256"] == hashlib.sha256(f.read()).hexdigest()
        assert record["path"] == os.path.join(folder, NAMES[key] + ".gz")
        assert record["bytes"] == os.path.getsize(record["path"])
    assert load_dataset("idx", folder).info == data.info  # same files: same info
    assert json.loads(json.dumps(data.info)) == data.info  # stored as is in config.json
    moved = shutil.copytree(folder, isolated / "b" / "digits")
    assert info_differences(data.info, load_dataset("idx", moved).info) == []
    write_idx(os.path.join(moved, "t10k-labels-idx1-ubyte.gz"), 9 - digits["test_y"], gz=True)
    changes = info_differences(data.info, load_dataset("idx", moved).info)
    assert [c.split(":")[0] for c in changes] == ["dataset.files.test_y.sha256"]
    assert info_differences(data.info, load_dataset("idx", moved, preprocess="standardize").info)


def test_official_datasets_record_their_files_too(data_dir, isolated):
    mnist = load_mnist(data_dir, mirrors=())
    assert sorted(mnist.info["files"]) == sorted(FILES)
    assert all(len(r["sha256"]) == 64 for r in mnist.info["files"].values())
    assert mnist.info["samples"] == {"train": 60000, "test": 10000} and mnist.info["classes"] == 10
    small = load_dataset("mnist-5k")
    assert list(small.info["files"]) == ["mnist_5k.csv.gz"]


def test_dataset_label_names_the_data(digits, isolated, monkeypatch):
    assert dataset_label("mnist") == "mnist" and dataset_label("cifar10", "/x") == "cifar10"
    assert dataset_label("idx", "/data/fashion-mnist/") == "idx-fashion-mnist"
    assert dataset_label("npz", "/data/my cifar.npz") == "npz-my_cifar"
    assert dataset_label("/data/mycifar/data.npz") == "npz-mycifar"
    assert dataset_label("npz", "/data/mycifar") == "npz-mycifar"
    assert dataset_label("idx") == "idx"  # nothing found: the kind alone
    root = isolated / "root"
    write_idx_folder(root / "idx", digits)
    monkeypatch.setenv("BRANCHYNET_DATA", str(root))
    assert dataset_label("idx") == "idx-root"  # found in $BRANCHYNET_DATA/idx/
    assert dataset_label("npz", "/data/npz/data.npz") == "npz-data"
    write_npz(root / "sevens.npz", **digits)
    assert dataset_label("npz") == "npz-sevens"


def test_dataset_kinds_describe_every_loader():
    assert set(LOADERS) <= set(DATASET_KINDS) and "PATH.npz" in DATASET_KINDS
    assert all(len(text) < 120 and "\n" not in text for text in DATASET_KINDS.values())
    with pytest.raises(DatasetError, match="unknown dataset 'fashion'.*idx.*npz"):
        load_dataset("fashion")
    assert dataset_kind("x/y.NPZ") == "npz" and dataset_kind("idx") == "idx"
    with pytest.raises(ValueError, match="unknown dataset 'mnist10'"):
        dataset_kind("mnist10")


def test_npz_layout_of_train_x_is_used_for_every_split(isolated):
    rng = np.random.RandomState(1)
    arrays = dict(train_x=rng.randint(0, 256, (6, 8, 8, 3)).astype(np.uint8),
                  train_y=np.arange(6) % 3, test_y=np.arange(3),
                  test_x=rng.randint(0, 256, (3, 3, 8, 3)).astype(np.uint8))
    # test_x alone would be ambiguous; train_x says NHWC, so test_x is (3, 3, 3, 8): refused.
    with pytest.raises(DatasetError,
                       match=r"must match in shape.*train_x \(3, 8, 8\), test_x \(3, 3, 8\)"):
        load_dataset(write_npz(isolated / "a.npz", **arrays))
    arrays["test_x"] = rng.randint(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    data = load_dataset(write_npz(isolated / "b.npz", **arrays))
    assert data.info["layout"] == "NHWC (inferred) -> NCHW" and data.test_x.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(data.test_x[1, 2], arrays["test_x"][1, :, :, 2] / np.float32(255))
    with pytest.raises(DatasetError, match=r"train_x has shape \(\); expected"):
        load_dataset(write_npz(isolated / "c.npz", **dict(arrays, train_x=np.float32(1))))
