"""Learning curves: test accuracy per epoch in the log (CurveEvaluator), without changing
the training, resumable across its introduction; the plot and its command."""
import itertools
import json
import os
import warnings

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np
import pytest
from chainer import serializers

from branchynet.net import JointLoss
from branchynet.training import CurveEvaluator, Recipe, TimeBudgetExhausted, train
from experiments import learning_curve
from experiments.experiment import training_record
from test_training_recipe import _tiny_net  # a two-exit net with BatchNorm and dropout

CPU = chainer.get_device("@numpy")
# Dropout and BatchNorm (random and stateful in training mode), and crop-flip.
RECIPE = Recipe(optimizer="momentum-sgd", lr=0.05, weight_decay=5e-4, schedule="cosine",
                warmup_epochs=0.5, augment="crop-flip", pad=2)


def _data(n=96, seed=1):
    rng = np.random.RandomState(seed)
    y = rng.randint(5, size=n).astype(np.int32)
    x = (rng.normal(size=(n, 3, 8, 8)) + y[:, None, None, None] * 0.3).astype(np.float32)
    return x, y


def _state(net):
    """Every parameter and persistent value (BatchNorm's running statistics too)."""
    state = {}
    serializers.DictionarySerializer(state).save(net)
    return {k: np.array(v) for k, v in state.items()}


def _train(out, test=None, epochs=3, **options):
    np.random.seed(0)
    net = _tiny_net()
    x, y = _data()
    log = train(net, x, y, epochs, 20, str(out), CPU, seed=3, progress=False, recipe=RECIPE,
                test=test, **options)
    return net, log, np.random.get_state()


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_evaluation_leaves_the_training_unchanged(tmp_path, monkeypatch):
    test = _data(37, seed=2)
    plain, plain_log, plain_rng = _train(tmp_path / "plain")
    curved, curved_log, curved_rng = _train(tmp_path / "curved", test=test)
    assert _same(_state(plain), _state(curved))  # weights and BatchNorm statistics
    # NumPy's global generator (CPU dropout draws from it): no number drawn.
    assert np.array_equal(plain_rng[1], curved_rng[1]) and plain_rng[2:] == curved_rng[2:]
    for a, b in zip(plain_log, curved_log):
        assert a["main/loss"] == b["main/loss"]
        assert "test/main/accuracy/exit1" not in a and "test/main/accuracy/exit2" in b
    # The check can fail: the same evaluation in training mode (dropout draws from
    # NumPy's generator, BatchNorm updates its statistics) changes the training.
    original = CurveEvaluator.evaluate

    def in_training_mode(self):
        with chainer.using_config("train", True):
            return original(self)
    monkeypatch.setattr(CurveEvaluator, "evaluate", in_training_mode)
    spoiled, _, spoiled_rng = _train(tmp_path / "spoiled", test=test)
    assert not _same(_state(plain), _state(spoiled))
    assert not (np.array_equal(plain_rng[1], spoiled_rng[1]) and plain_rng[2:] == spoiled_rng[2:])


def test_logged_test_accuracy_is_the_exact_accuracy_of_every_exit(tmp_path):
    x, y = _data(37, seed=2)  # 37 samples in batches of 10: a short last batch
    net, log, _ = _train(tmp_path / "run", test=(x, y), epochs=3, eval_every=2)
    assert [e["epoch"] for e in log if "test/main/accuracy/exit1" in e] == [2, 3]  # 2nd, last
    with chainer.using_config("train", False):
        exact = [float((o.argmax(1) == y).mean()) for o in net.predict_all_exits(x)]
    last = log[-1]
    assert [last["test/main/accuracy/exit1"], last["test/main/accuracy/exit2"]] == pytest.approx(
        exact, abs=1e-6)
    assert last["test/seconds"] > 0
    evaluator = CurveEvaluator(x, y, JointLoss(net), CPU, batch_size=10)
    result = evaluator()  # standalone: keys without the trainer's "test/" prefix
    assert [result["main/accuracy/exit1"], result["main/accuracy/exit2"]] == pytest.approx(
        exact, abs=1e-6)
    # Weighted by batch size: the plain mean of the 4 batches' accuracies is not exact.
    with chainer.using_config("train", False):
        outputs = net.predict_all_exits(x)
    unweighted = [np.mean([(o[i:i + 10].argmax(1) == y[i:i + 10]).mean()
                           for i in range(0, 37, 10)]) for o in outputs]
    assert unweighted != pytest.approx(exact, abs=1e-3)


@pytest.mark.parametrize("before, after", [(False, True), (True, False)],
                         ids=["snapshot-without-resume-with", "snapshot-with-resume-without"])
def test_resume_across_the_evaluator(before, after, tmp_path):
    """A snapshot written without the evaluation (the runs in progress when it was added)
    resumes with it, and the other way round, exactly as an uninterrupted run."""
    test = _data(37, seed=2)
    whole, _, _ = _train(tmp_path / "whole")
    ticks = itertools.count()
    with pytest.raises(TimeBudgetExhausted) as stopped:
        _train(tmp_path / "cut", test=test if before else None, time_budget_s=8,
               clock=lambda: next(ticks))
    assert 1 < stopped.value.epoch_detail < 2
    np.random.seed(99)  # a new process: other state until the snapshot is loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Chainer's "previous value ... is not saved"
        resumed, log, _ = _train(tmp_path / "cut", test=test if after else None)
    assert _same(_state(whole), _state(resumed))
    assert [("test/main/accuracy/exit2" in e) for e in log] == [before, after, after]


def test_training_record_leaves_out_the_evaluation_time(tmp_path):
    log = [{"epoch": 1, "elapsed_time": 12.0, "test/seconds": 2.0},
           {"epoch": 2, "elapsed_time": 23.0, "test/seconds": 1.0}, {"epoch": 3, "elapsed_time": 33.0}]
    (tmp_path / "log").write_text(json.dumps(log))
    record = training_record(str(tmp_path / "log"), 100)
    assert record["epoch_seconds"] == pytest.approx([10.0, 10.0, 10.0])
    assert record["seconds"] == 30.0 and record["evaluation_seconds"] == 3.0
    assert record["images_per_second"] == pytest.approx(10.0)


def _folder(tmp_path, with_test):
    """A results folder of 2 baseline + 2 joint epochs of a 2-exit net."""
    def entry(epoch, exits):
        values = {f"main/accuracy/{e}": 0.5 + 0.1 * epoch for e in exits}
        if with_test:
            values.update({f"test/main/accuracy/{e}": 0.4 + 0.1 * epoch for e in exits})
        return {"epoch": epoch, "elapsed_time": epoch, **values}
    folder = tmp_path / ("with" if with_test else "without")
    for stage, exits in (("baseline", ["exit2"]), ("branchynet", ["exit1", "exit2"])):
        (folder / stage).mkdir(parents=True)
        (folder / stage / "log").write_text(json.dumps([entry(1, exits), entry(2, exits)]))
    (folder / "config.json").write_text(json.dumps({"network": "net", "baseline_epochs": 2}))
    return folder


def test_curves_put_both_stages_on_one_axis_with_and_without_test_accuracy(tmp_path):
    found, offset, _ = learning_curve.curves(str(_folder(tmp_path, True)))
    assert offset == 2
    assert sorted((c["stage"], c["split"], c["exit"], tuple(c["epochs"])) for c in found) == [
        ("baseline", "test", "exit2", (1, 2)), ("baseline", "train", "exit2", (1, 2)),
        ("branchynet", "test", "exit1", (3, 4)), ("branchynet", "test", "exit2", (3, 4)),
        ("branchynet", "train", "exit1", (3, 4)), ("branchynet", "train", "exit2", (3, 4))]
    test = next(c for c in found if c["split"] == "test" and c["stage"] == "baseline")
    assert test["accuracy"] == pytest.approx([50.0, 60.0])
    found, _, _ = learning_curve.curves(str(_folder(tmp_path, False)))
    assert {c["split"] for c in found} == {"train"} and len(found) == 3
    assert "training accuracy only" in learning_curve.subtitle(False, None)
    assert "solid: 1000 test samples" in learning_curve.subtitle(True, 1000)


def test_a_baseline_started_from_another_folders_counts_on_from_its_epochs(tmp_path):
    folder = _folder(tmp_path, True)
    config = {"network": "net", "baseline_epochs": 2,
              "baseline_from_record": {"folder_settings": {"baseline_epochs": 12}}}
    (folder / "config.json").write_text(json.dumps(config))
    found, offset, _ = learning_curve.curves(str(folder))
    assert offset == 14
    assert {c["stage"]: tuple(c["epochs"]) for c in found} == {"baseline": (13, 14),
                                                               "branchynet": (15, 16)}
    figure = learning_curve.learning_curve_figure(str(folder))
    assert "from the 12 epochs of the weights it started from" in figure.axes[1].get_xlabel()


def test_learning_curve_command(tmp_path, capsys):
    folder = _folder(tmp_path, False)
    path = learning_curve.main([str(folder), "--table"])
    assert path == str(folder / "learning_curve.png") and os.path.getsize(path) > 10_000
    assert "base train exit2" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as refused:
        learning_curve.main([str(tmp_path / "empty")])
    assert refused.value.code == 2 and "has no training log" in capsys.readouterr().err


# The runner: the flags, the record and the plot whenever training stops.
from experiments import run  # noqa: E402

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "320",
        "--test-limit", "100", "--branchy-epochs", "1", "--batch-size", "32",
        "--timing-samples", "20", "--no-progress", "--train-only"]


def test_runner_draws_the_curve_when_the_budget_stops_it(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    ticks = itertools.count()  # one tick per clock read: the budget ends in epoch 3
    monkeypatch.setattr(run, "_clock", lambda: next(ticks))
    with pytest.raises(SystemExit) as stopped:
        run.main(TINY + ["--baseline-epochs", "4", "--out", out, "--time-budget", "0.4",
                         "--eval-limit", "60"])
    assert stopped.value.code == run.EXIT_TIME_BUDGET
    assert f"learning curve: {out}/learning_curve.png" in capsys.readouterr().out
    log = json.load(open(f"{out}/baseline/log"))
    assert [e["epoch"] for e in log] == [1, 2] and all("test/main/accuracy/exit2" in e for e in log)
    config = json.load(open(f"{out}/config.json"))
    assert config["learning_curve"] == {"eval_every": 1, "test_samples": 60}


def test_runner_without_evaluation(tmp_path):
    out = str(tmp_path / "run")
    run.main(TINY + ["--baseline-epochs", "1", "--out", out, "--eval-every", "0"])
    log = json.load(open(f"{out}/branchynet/log"))
    assert not any(k.startswith("test/") for k in log[0])
    assert os.path.exists(f"{out}/learning_curve.png")  # the training curves alone
    assert json.load(open(f"{out}/config.json"))["learning_curve"]["test_samples"] == 0


def test_runner_refuses_negative_evaluation_flags(capsys):
    with pytest.raises(SystemExit) as refused:
        run.parse_args(["--network", "lenet_mnist", "--eval-every", "-1"])
    assert refused.value.code == 2 and "--eval-every and --eval-limit must be >= 0" in \
        capsys.readouterr().err


def test_every_stage_and_exit_has_its_colour_and_the_zoom_holds_the_final_accuracies():
    """On the committed B-LeNet paper run: the baseline's exit 2 and the B-net's exit 2 are
    told apart by colour, and the lower panel spans the final test accuracies (98.62% at
    exit 1, 99.17% at exit 2) in a band of about a point, not the 80-100% of the top."""
    import matplotlib.colors
    import matplotlib.pyplot as plt
    folder = os.path.join(os.path.dirname(__file__), "..", "results", "cpu-lenet_mnist-paper")
    fig = learning_curve.learning_curve_figure(folder)
    top, zoom = fig.axes
    colour = {line.get_label(): matplotlib.colors.to_hex(line.get_color())
              for line in zoom.get_lines() if not line.get_label().startswith("_")}
    by_line = {}
    for label, c in colour.items():
        by_line.setdefault(" ".join(label.split()[:2]), set()).add(c)
    assert set(by_line) == {"baseline exit2", "B-net exit1", "B-net exit2"}
    assert all(len(c) == 1 for c in by_line.values())  # train and test of a line alike
    assert len(set().union(*by_line.values())) == 3
    low, high = zoom.get_ylim()
    finals = [line.get_ydata()[-1] for line in zoom.get_lines()
              if line.get_label().endswith("test") or "test (from" in line.get_label()]
    assert low < min(finals) and max(finals) < high and high - low < 1.5
    assert top.get_ylim()[0] < 85
    plt.close(fig)


def test_the_zoom_of_a_rising_curve_counted_on_shows_its_last_step():
    """A baseline still climbing, counted on from epoch 13 (``--baseline-from``): the lower
    panel spans its last two test accuracies and the half of the epochs drawn, not a band
    of 0.2 points around the last one. Fails with the band of the last value alone."""
    found = [{"stage": "baseline", "exit": "exit3", "split": "test",
              "epochs": list(range(13, 22)),
              "accuracy": [71.90, 64.42, 76.40, 77.44, 83.08, 83.84, 85.08, 87.08, 87.84]}]
    low, high = learning_curve.zoom_band(found)
    assert low < 87.08 and 87.84 < high and high - low < 1.5
