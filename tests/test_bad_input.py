"""Every bad input is refused before any work, with exit status 2, a message naming the
problem and the fix, and no traceback (one table, one case per row)."""
import os

import pytest

from experiments.run import main

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "300",
        "--test-limit", "100", "--baseline-epochs", "1", "--branchy-epochs", "1",
        "--batch-size", "32", "--timing-samples", "20", "--no-progress"]

CASES = [
    # (extra arguments (later ones win), what the message must say)
    (["--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'; choose one of"),
    (["--network", "vgg"], "unknown network 'vgg'; choose one of"),
    (["--network", "no/such/file.py:build"], "there is no file no/such/file.py"),
    (["--network", "{tmp}/net.py:missing"], "has no 'missing' (it defines"),
    (["--network", "{tmp}/net.py:build", "--dataset", "mnist-5k"], None),  # fine: control
    (["--network", "{tmp}/net.py:build", "--dataset", ""], "names no dataset: give --dataset"),
    (["--baseline-epochs", "0"], "--baseline-epochs must be >= 1"),
    (["--branchy-epochs", "-1"], "--branchy-epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--loss-weights", "1", "-1"], "--loss-weights must be finite and >= 0"),
    (["--loss-weights", "nan", "1"], "--loss-weights must be finite and >= 0"),
    (["--loss-weights", "0", "0"], "at least one > 0"),
    (["--loss-weights", "1", "1", "1"], "3 given, but lenet_mnist has 2 exits"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--timing-samples", "-5"], "--timing-samples must be >= 0"),
    (["--timing-samples", "101"], "--timing-samples 101 is more than the 100 test samples"),
    (["--timing-rounds", "0"], "--timing-rounds must be >= 1"),
    (["--batch-size", "301"], "--batch-size 301 is larger than the training set (300 samples)"),
    (["--val-size", "300"], "--val-size"),
    (["--train-limit", "-1"], "--train-limit must be >= 0"),
    (["--grid", "-1"], "--grid values must be >= 0"),
    (["--out", "{tmp}/a_file"], "is a file, not a folder"),
    (["--out", "{tmp}/a_file/sub"], "is a file, not a folder"),
    (["--device", "@nonsense"], "not a usable Chainer device"),
    (["--accuracy-floor", "50"], "give --val-size too"),
    (["--dataset", "mnist", "--data-dir", "{tmp}/empty"], "missing file"),
]


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "net.py").write_text(
        "import chainer.links as L\nfrom branchynet.net import Branch\n"
        "def build():\n    return [Branch(L.Linear(None, 10)), L.Linear(None, 32),\n"
        "            Branch(L.Linear(None, 10))]\n")
    # No download attempts for the missing-MNIST case.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BRANCHYNET_DATA", raising=False)
    import branchynet.datasets as datasets
    monkeypatch.setitem(datasets.LOADERS, "mnist",
                        lambda data_dir=None, seed=0, **kw: datasets.load_mnist(
                            data_dir, mirrors=("http://127.0.0.1:9/",)))
    return tmp_path


@pytest.mark.parametrize("extra, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_refused_before_any_work(extra, message, tmp, capsys):
    out = str(tmp / "run")
    argv = TINY + ["--out", out] + [a.replace("{tmp}", str(tmp)) for a in extra]
    if message is None:  # the control row: the same machinery accepts a good input
        from experiments.run import parse_args
        parse_args(argv)
        return
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(out, "baseline.npz"))
    assert not os.path.exists(os.path.join(out, "baseline"))  # no training started


def test_a_folder_never_mixes_networks_or_data(tmp, capsys):
    """Same --out, same names: other weights' shapes or other data files are refused."""
    out = str(tmp / "run")
    main(TINY + ["--out", out, "--network", f"{tmp}/net.py:build"])
    capsys.readouterr()
    (tmp / "net.py").write_text(
        "import chainer.links as L\nfrom branchynet.net import Branch\n"
        "def build():\n    return [Branch(L.Linear(None, 10)), L.Linear(None, 64),\n"
        "            Branch(L.Linear(None, 10))]\n")
    with pytest.raises(SystemExit) as exit_:
        main(TINY + ["--out", out, "--network", f"{tmp}/net.py:build"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "holds a run on other network parameters" in err and "/trunk/1/0/W" in err


def test_a_folder_never_mixes_two_datasets_of_the_same_kind(tmp, data_dir, capsys):
    """The review's silent mix: the same --out with another idx dataset reused the first
    one's weights, outputs and timings. Now what was read is compared, file by file."""
    from test_user_datasets import NAMES, read_idx, write_idx_folder
    raw = {k: read_idx(os.path.join(data_dir, "mnist", n + ".gz")) for k, n in NAMES.items()}
    first = {k: v[:300] for k, v in raw.items()}
    second = {k: v[300:600] for k, v in raw.items()}
    out = str(tmp / "run")
    argv = TINY + ["--dataset", "idx", "--out", out, "--timing-rounds", "1"]
    main(argv + ["--data-dir", write_idx_folder(tmp / "a", first)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--data-dir", write_idx_folder(tmp / "b", second)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "holds a run on other data" in err
    assert "sha256" in err or "SHA-256" in err
