"""Training recipes (optimizer, schedule, augmentation) and time-boxed, resumable training."""
import itertools
from dataclasses import replace
import math
import os
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from branchynet.net import Branch, BranchyNet
from branchynet.training import (FAST_RECIPE, PAPER_RECIPE, Recipe, TimeBudgetExhausted,
                                 augmentation_rng, crop_flip, train, train_or_load)

CPU = chainer.get_device("@numpy")


def test_crop_flip_is_a_padded_crop_or_its_mirror_and_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 8, 8)).astype(np.float32)
    out = crop_flip(x, augmentation_rng(7, 3), pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.array_equal(out, crop_flip(x, augmentation_rng(7, 3), pad=2))
    assert not np.array_equal(out, crop_flip(x, augmentation_rng(7, 4), pad=2))
    assert not np.array_equal(out, crop_flip(x, augmentation_rng(8, 3), pad=2))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    flips = 0
    for i in range(len(x)):
        crops = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(np.array_equal(out[i], c) for c in crops)
        mirrored = any(np.array_equal(out[i], c[:, :, ::-1]) for c in crops)
        assert plain or mirrored, i
        flips += mirrored and not plain
    assert 0 < flips < len(x)  # both happen among 16 images
    assert np.array_equal(crop_flip(x, augmentation_rng(0, 0), pad=0)[:, :, :, ::-1] == x,
                          crop_flip(x, augmentation_rng(0, 0), pad=0)[:, :, :, ::-1] == x)


def test_learning_rate_schedules():
    cosine = Recipe(optimizer="momentum-sgd", lr=0.1, schedule="cosine")
    assert cosine.learning_rate(0, 10) == pytest.approx(0.1)
    assert cosine.learning_rate(5, 10) == pytest.approx(0.05)
    assert cosine.learning_rate(10, 10) == pytest.approx(0.0, abs=1e-12)
    assert cosine.learning_rate(2.5, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))
    step = Recipe(lr=0.1, schedule="step")
    assert [step.learning_rate(e, 100) for e in (0, 49.9, 50, 74.9, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = Recipe(lr=0.1, schedule="cosine", warmup_epochs=1)
    assert warm.learning_rate(0, 11) == pytest.approx(0.01)
    assert warm.learning_rate(0.5, 11) == pytest.approx(0.055)
    assert warm.learning_rate(1, 11) == pytest.approx(0.1)
    assert warm.learning_rate(6, 11) == pytest.approx(0.05)
    assert PAPER_RECIPE.learning_rate(37.2, 50) == 0.001
    assert FAST_RECIPE.stage_lr("baseline") == 0.1
    assert FAST_RECIPE.stage_lr("branchynet") == pytest.approx(0.01)
    assert FAST_RECIPE.learning_rate(3, 4, lr=0.01) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


def test_bad_recipes_name_the_problem():
    with pytest.raises(ValueError, match="optimizer 'sgd' is not one of adam, momentum-sgd"):
        Recipe(optimizer="sgd")
    with pytest.raises(ValueError, match="lr must be a positive number.*momentum must be below 1"):
        Recipe(lr=0, momentum=1.5)


def _tiny_net():
    """A two-exit net with BatchNorm and dropout (both stateful or random), 3x8x8 inputs."""
    return BranchyNet([
        L.Convolution2D(3, 4, 3, pad=1), L.BatchNormalization(4), F.relu,
        Branch([L.Linear(256, 5)]),
        lambda h: F.max_pooling_2d(h, 2), lambda h: F.dropout(h, 0.3),
        L.Linear(64, 16), F.relu,
        Branch([L.Linear(16, 5)]),
    ])


def _data():
    rng = np.random.RandomState(1)
    y = rng.randint(5, size=96).astype(np.int32)
    x = (rng.normal(size=(96, 3, 8, 8)) + y[:, None, None, None] * 0.3).astype(np.float32)
    return x, y


def _params(net):
    return {name: np.array(p.array) for name, p in net.namedparams()}


@pytest.mark.parametrize("recipe", [PAPER_RECIPE, Recipe(
    optimizer="momentum-sgd", lr=0.05, weight_decay=5e-4, schedule="cosine",
    warmup_epochs=0.5, augment="crop-flip", pad=2)], ids=["adam", "sgd-cosine-crop-flip"])
def test_budget_stop_mid_epoch_then_resume_equals_uninterrupted(recipe, tmp_path):
    x, y = _data()
    options = dict(recipe=recipe, seed=3, progress=False)
    np.random.seed(0)
    whole = _tiny_net()
    log = train(whole, x, y, 3, 20, str(tmp_path / "whole"), CPU, **options)

    np.random.seed(0)
    first = _tiny_net()
    ticks = itertools.count()  # a fake clock: one tick per stop-trigger check
    with pytest.raises(TimeBudgetExhausted) as stopped:
        train(first, x, y, 3, 20, str(tmp_path / "cut"), CPU, time_budget_s=7,
              clock=lambda: next(ticks), **options)
    assert 1 < stopped.value.epoch_detail < 2  # 96 / 20 = 4.8 iterations per epoch
    assert stopped.value.epochs == 3 and os.path.isfile(stopped.value.snapshot)
    # A copy or checkout can make the end of epoch 1 look newer than the stop in epoch 2:
    # the run continues from the stop (snapshots are ordered by name) and never reads it.
    ended_epoch_1 = tmp_path / "cut" / "snapshot_epoch_1"
    ended_epoch_1.write_bytes(b"not a snapshot")
    now = time.time()
    os.utime(stopped.value.snapshot, (now - 120, now - 120))
    os.utime(ended_epoch_1, (now - 60, now - 60))
    # A new process: other weights and global random state until the snapshot is loaded.
    np.random.seed(99)
    resumed = _tiny_net()
    log_resumed = train(resumed, x, y, 3, 20, str(tmp_path / "cut"), CPU, **options)
    expected, got = _params(whole), _params(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name
    for a, b in zip(log, log_resumed):
        assert a["epoch"] == b["epoch"] and a["main/loss"] == pytest.approx(b["main/loss"], rel=1e-6)
    # The end-of-epoch snapshot replaced the mid-epoch one.
    assert sorted(os.listdir(tmp_path / "cut"))[-1] == "snapshot_epoch_3"


def _one_step(rank, global_seed, recipe):
    """The weights after one update of ``_tiny_net`` (same initial weights, same batch) by
    rank ``rank``'s updater, NumPy's global generator seeded ``global_seed`` before it."""
    from branchynet.net import JointLoss
    from branchynet.training import _RecipeUpdater, make_optimizer
    x, y = _data()
    np.random.seed(0)
    net = _tiny_net()
    model = JointLoss(net)
    optimizer = make_optimizer(recipe, recipe.lr)
    optimizer.setup(model)
    iterator = chainer.iterators.SerialIterator(chainer.datasets.TupleDataset(x, y), 32,
                                                shuffle=False)
    updater = _RecipeUpdater(iterator, optimizer, CPU, recipe, recipe.lr, 1, len(x), seed=3,
                             rank=rank)
    np.random.seed(global_seed)
    updater.update()
    return _params(net)


@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_each_rank_draws_its_own_dropout_and_augmentation(augment):
    """Rank 1 of a data-parallel run masks and crops otherwise than rank 0 (before, every
    rank drew the same masks and crops), and independently of NumPy's global state, which
    no snapshot keeps for it; rank 0 still draws from that state, as a single process."""
    recipe = Recipe(optimizer="momentum-sgd", lr=0.1, augment=augment, pad=2)
    rank0, rank1 = _one_step(0, 5, recipe), _one_step(1, 5, recipe)
    assert not np.array_equal(rank0["/trunk/0/0/W"], rank1["/trunk/0/0/W"])
    again = _one_step(1, 6, recipe)
    assert all(np.array_equal(rank1[n], again[n]) for n in rank1)
    assert not np.array_equal(rank0["/trunk/0/0/W"], _one_step(0, 6, recipe)["/trunk/0/0/W"])
    if augment == "crop-flip":  # rank 0's crops are those of a single process
        x = _data()[0][:32]
        assert np.array_equal(crop_flip(x, augmentation_rng(3, 0, rank=0), 2),
                              crop_flip(x, np.random.default_rng([3, 0]), 2))


def test_train_or_load_saves_nothing_when_the_budget_stops_it(tmp_path):
    x, y = _data()
    path = str(tmp_path / "baseline.npz")
    np.random.seed(0)
    ticks = itertools.count()
    with pytest.raises(TimeBudgetExhausted) as stopped:
        train_or_load(_tiny_net(), path, x, y, 2, 32, CPU, log=lambda m: None,
                      time_budget_s=2, clock=lambda: next(ticks), progress=False)
    assert not os.path.exists(path)
    assert os.path.basename(stopped.value.snapshot) == "snapshot_epoch_0_iter_1"
    # A budget already spent: no iteration, no new snapshot, the old one stays.
    with pytest.raises(TimeBudgetExhausted) as stopped:
        train_or_load(_tiny_net(), path, x, y, 2, 32, CPU, log=lambda m: None,
                      time_budget_s=0, progress=False)
    assert stopped.value.snapshot is None and stopped.value.epoch_detail == pytest.approx(32 / 96)
    assert os.listdir(tmp_path / "baseline") == ["snapshot_epoch_0_iter_1"]
    said = []
    train_or_load(_tiny_net(), path, x, y, 2, 32, CPU, log=said.append, progress=False)
    assert os.path.exists(path)
    snapshot = os.path.join(str(tmp_path), "baseline", "snapshot_epoch_0_iter_1")
    assert said[1] == f"[baseline] continuing from {snapshot}"


# The runner: recipe flags, config, time budget.
from experiments.experiment import TRAINING_DEFAULTS  # noqa: E402
from branchynet.io import read_json  # noqa: E402
from experiments import run  # noqa: E402

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "320",
        "--test-limit", "100", "--baseline-epochs", "1", "--branchy-epochs", "1",
        "--batch-size", "32", "--timing-samples", "20", "--no-progress"]


def test_runner_recipe_flags_and_presets():
    args = run.parse_args(["--network", "resnet110_cifar10", "--recipe", "fast"])
    assert args.recipe_obj == replace(FAST_RECIPE, lr=0.2) and args.lr == 0.2
    assert (args.batch_size, args.train_limit, args.test_limit) == (256, 0, 0)
    assert (args.baseline_epochs, args.branchy_epochs) == (20, 4)
    assert args.dataset == "cifar10" and args.out.endswith("resnet110_cifar10-cifar10-fast")
    args = run.parse_args(["--network", "resnet110_cifar10", "--recipe", "fast",
                           "--weight-decay", "1e-4", "--lr-schedule", "step", "--lr", "0.05"])
    assert args.recipe_obj.weight_decay == 1e-4 and args.recipe_obj.schedule == "step"
    assert args.lr == 0.05 and args.recipe_obj.augment == "crop-flip"
    args = run.parse_args(["--network", "alexnet_cifar10", "--recipe", "fast"])
    assert args.recipe_obj == replace(FAST_RECIPE, lr=0.05) and args.batch_size == 128
    assert (args.baseline_epochs, args.branchy_epochs, args.train_limit, args.test_limit) == (
        30, 10, 0, 0)
    assert args.dataset == "cifar10" and args.out.endswith("alexnet_cifar10-cifar10-fast")
    args = run.parse_args(["--network", "lenet_mnist"])
    assert args.recipe_obj == PAPER_RECIPE and args.lr == 0.001 and args.deadline is None
    recorded = {k: v for k, v in args.recipe_obj.to_dict().items() if k != "lr"}
    assert recorded == TRAINING_DEFAULTS["recipe"]  # what folders without the key had


@pytest.mark.parametrize("argv, message", [
    (["--paper", "--recipe", "fast"], "--paper trains with the authors' recipe"),
    (["--recipe", "fast"], "lenet_mnist has no fast preset"),
    (["--momentum", "1.2"], "momentum must be below 1"),
    (["--time-budget", "0"], "--time-budget must be a positive number of minutes"),
    (["--optimizer", "sgd"], "invalid choice: 'sgd'"),
])
def test_runner_rejects_bad_recipe_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--network", "lenet_mnist"] + argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_runner_stops_at_the_time_budget_and_continues(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    # A clock far in the past when the budget is set: the deadline has passed at once.
    clock = iter([-1e12])
    monkeypatch.setattr(run, "_clock", lambda: next(clock, run.time.monotonic()))
    with pytest.raises(SystemExit) as exited:
        run.main(TINY + ["--out", out, "--time-budget", "5", "--augment", "crop-flip",
                         "--weight-decay", "1e-4"])
    assert exited.value.code == run.EXIT_TIME_BUDGET == 3
    printed = capsys.readouterr().out
    assert "[baseline] stopped at the time budget after epoch 0.00 of 1; run again to continue" in printed
    assert sorted(os.listdir(out)) == ["baseline", "config.json"]  # no weights, no sweep
    config = read_json(os.path.join(out, "config.json"))
    assert config["recipe"]["augment"] == "crop-flip" and config["recipe"]["weight_decay"] == 1e-4
    assert config["recipe_preset"] == "paper" and config["lr"] == 0.001
    # Another recipe in the same folder is refused; the same one (any budget) continues.
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run.main(TINY + ["--out", out])
    assert refused.value.code == 2
    assert "holds a run with other settings (recipe" in capsys.readouterr().err
    summary = run.main(TINY + ["--out", out, "--time-budget", "30", "--augment", "crop-flip",
                               "--weight-decay", "1e-4"])
    assert os.path.exists(os.path.join(out, "branchynet.npz")) and summary["devices"]["cpu"]


def test_runner_train_only_stops_before_the_sweep(tmp_path, capsys):
    out = str(tmp_path / "run")
    summary = run.main(TINY + ["--out", out, "--train-only"])
    assert summary["trained_only"] and "--train-only: both networks are trained" in capsys.readouterr().out
    assert {"baseline.npz", "branchynet.npz"} <= set(os.listdir(out))
    assert not any(n.startswith(("exit_outputs", "table_", "timing_")) for n in os.listdir(out))


def test_baseline_from_starts_the_baseline_from_another_folders_weights(tmp_path, capsys):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    run.main(TINY + ["--out", first, "--train-only"])
    start = os.path.join(first, "baseline.npz")
    # A step size of 1e-12: the continued baseline ends where it started, at the first's
    # weights, not at a fresh initialisation (whose weights are far from them).
    again = TINY + ["--out", second, "--train-only", "--lr", "1e-12"]
    run.main(again + ["--baseline-from", start])
    with np.load(start) as a, np.load(os.path.join(second, "baseline.npz")) as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.allclose(a[k], b[k], atol=1e-6) for k in a.files)
    fresh = str(tmp_path / "fresh")
    run.main(TINY + ["--out", fresh, "--train-only", "--lr", "1e-12"])
    with np.load(start) as a, np.load(os.path.join(fresh, "baseline.npz")) as b:
        assert not all(np.allclose(a[k], b[k], atol=1e-3) for k in a.files)
    config = read_json(os.path.join(second, "config.json"))
    assert config["baseline_from"] == config["baseline_from_record"]["sha256"]
    assert config["baseline_from_record"]["folder_settings"]["baseline_epochs"] == 1
    assert read_json(os.path.join(fresh, "config.json"))["baseline_from"] is None
    # Other starting weights in the same folder are refused, as any other training setting.
    other = str(tmp_path / "other.npz")
    with np.load(start) as a:
        np.savez(other, **{k: a[k] + (k == sorted(a.files)[0]) for k in a.files})
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run.main(again + ["--baseline-from", other])
    assert refused.value.code == 2
    assert "holds a run with other settings (baseline_from" in capsys.readouterr().err


@pytest.mark.parametrize("given, message", [
    ("missing.npz", "no such file"),
    ("alien.npz", "is not a baseline of lenet_mnist"),
    ("out/baseline.npz", "is the baseline of --out"),
])
def test_baseline_from_refuses_what_cannot_start_the_baseline(given, message, tmp_path,
                                                               capsys):
    np.savez(tmp_path / "alien.npz", W=np.zeros((3, 3), np.float32))  # another network's
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "baseline.npz").write_bytes((tmp_path / "alien.npz").read_bytes())
    with pytest.raises(SystemExit) as refused:
        run.parse_args(TINY + ["--out", str(tmp_path / "out"),
                               "--baseline-from", str(tmp_path / given)])
    assert refused.value.code == 2 and message in capsys.readouterr().err
