"""Calibration and thresholds with a guarantee (branchynet/calibration.py, branchynet/risk.py,
experiments/guarantee.py, benchmarks/risk_validity.py).

The statistical claim, "with probability at least 1 - delta over the calibration draw the
accuracy lost is at most epsilon", is checked over 200 random calibration/test splits and
must hold within three standard errors; the same check must fail for the plain rule (no
guarantee) on the badly calibrated synthetic case, so the check is able to fail.
"""
import contextlib
import io
import json
import math
import os
import sys

import branchynet  # noqa: F401
import chainer
import numpy as np
import pytest
from scipy.stats import binom

from branchynet.calibration import ece, confidence, fit_temperature, rescore
from branchynet.risk import (binomial_pvalue, common_family, family_vectors,
                             hoeffding_bentkus_pvalue, ltt_select, sample_losses)
from branchynet.sweep import ExitOutputs, collect_exit_outputs, exit_indices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from benchmarks import risk_validity  # noqa: E402

LENET = os.path.join(REPO, "results", "cpu-lenet_mnist")
ALEXNET_VAL = os.path.join(REPO, "results", "cpu-alexnet_cifar10-val")


def _calibrated_draw(n=20000, classes=10, seed=0):
    """Logits and labels drawn from softmax(logits): calibrated at T = 1 by construction."""
    rng = np.random.RandomState(seed)
    z = rng.normal(0, 3, size=(n, classes))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return z, labels


# ------------------------------------------------------------------------ calibration

def test_temperature_fit_recovers_a_known_temperature():
    z, labels = _calibrated_draw()
    for true_t in (0.5, 2.5):
        # logits * T0 are calibrated at temperature T0.
        assert fit_temperature(z * true_t, labels) == pytest.approx(true_t, rel=0.05)


def test_ece_is_small_when_calibrated_and_large_when_not():
    z, labels = _calibrated_draw()
    correct = z.argmax(axis=1) == labels
    assert ece(confidence(z), correct) < 0.015
    assert ece(confidence(z * 3), correct) > 0.1   # overconfident
    assert ece(confidence(z * 3, 3.0), correct) < 0.015


def test_rescore_keeps_predictions_and_needs_the_logits():
    outputs = ExitOutputs.load(os.path.join(LENET, "exit_outputs.npz"))
    same = rescore(outputs, [1.0, 1.0])
    np.testing.assert_array_equal(same.scores, outputs.scores)
    hot = rescore(outputs, [2.0, 0.5])
    np.testing.assert_array_equal(hot.predictions, outputs.predictions)
    assert (hot.scores[:, 0] >= same.scores[:, 0] - 1e-6).mean() > 0.99  # hotter: less sure
    with pytest.raises(ValueError, match="2 exits need 2 temperatures"):
        rescore(outputs, [1.0])
    with pytest.raises(ValueError, match="hold no logits"):
        rescore(ExitOutputs(outputs.scores, outputs.predictions, outputs.labels), [1.0, 1.0])


def test_routing_with_temperatures_agrees_with_the_rescored_sweep(lenet_pair, mnist):
    _, branchy = lenet_pair
    x, y = mnist.test_x[:300], mnist.test_y[:300]
    device = chainer.get_device("@numpy")
    outputs = collect_exit_outputs(branchy, x, y, device=device)
    temperatures = [2.0, 1.0]
    rescored = rescore(outputs, temperatures)
    t = float(np.median(rescored.scores[:, 0]))
    _, exits = branchy.predict(x, [t], temperatures=temperatures)
    np.testing.assert_array_equal(exits, exit_indices(rescored, [t])[0])
    _, plain = branchy.predict(x, [t])
    assert (plain != exits).any()  # the temperature changed who leaves
    with pytest.raises(ValueError, match="one temperature > 0 per exit"):
        branchy.predict(x[:1], [t], temperatures=[1.0])


# ------------------------------------------------------------------- p-values and LTT

def test_binomial_pvalue_matches_scipy_and_a_hand_case():
    assert binomial_pvalue(1, 4, 0.5) == pytest.approx(5 / 16, rel=1e-12)
    for k, n, eps in ((3, 100, 0.05), (0, 460, 0.005), (40, 5000, 0.01), (120, 10000, 0.01)):
        assert binomial_pvalue(k, n, eps) == pytest.approx(binom.cdf(k, n, eps), rel=1e-9)


def test_hoeffding_bentkus_pvalue():
    # Above the level: no evidence at all.
    assert hoeffding_bentkus_pvalue(0.6, 1000, 0.5) == 1.0
    n, alpha, mean = 2000, 0.505, 0.45
    hoeffding = math.exp(-n * (mean * math.log(mean / alpha)
                               + (1 - mean) * math.log((1 - mean) / (1 - alpha))))
    bentkus = math.e * binom.cdf(math.ceil(n * mean), n, alpha)
    assert hoeffding_bentkus_pvalue(mean, n, alpha) == pytest.approx(min(hoeffding, bentkus))


def test_losses_bound_the_accuracy_lost():
    outputs = ExitOutputs.load(os.path.join(LENET, "exit_outputs.npz"))
    family = family_vectors(common_family("entropy", 10), 2)
    correct = outputs.predictions[np.arange(len(outputs))[:, None],
                                  exit_indices(outputs, family).T] == outputs.labels[:, None]
    drop = correct[:, 0].mean() - correct.mean(axis=0)
    signed = sample_losses(outputs, family, "signed").mean(axis=0)
    np.testing.assert_allclose(signed, drop)
    assert (sample_losses(outputs, family, "accuracy").mean(axis=0) >= drop - 1e-12).all()
    assert (sample_losses(outputs, family, "disagreement").mean(axis=0) >= drop - 1e-12).all()


def test_ltt_certifies_on_lenet_and_states_its_guarantee():
    outputs = ExitOutputs.load(os.path.join(LENET, "exit_outputs.npz")).take(slice(0, 5000))
    family = family_vectors(common_family("entropy", 10), 2)
    chosen = ltt_select(outputs, [0.43, 1.0], 0.005, 0.1, family)
    assert chosen.feasible and 0.5 < chosen.exit_fractions[0] < 1
    assert chosen.pvalue <= 0.1 and (chosen.pvalues[1:chosen.rejected + 1] <= 0.1).all()
    assert chosen.pvalues[chosen.rejected + 1] > 0.1  # the sequence stopped there
    assert "P(accuracy lost vs the last exit > 0.5 pp) <= 0.1" in chosen.statement()


def test_infeasible_epsilon_names_a_sample_count_that_makes_it_feasible():
    outputs = ExitOutputs.load(os.path.join(LENET, "exit_outputs.npz"))
    family = family_vectors(common_family("entropy", 10), 2)
    small = outputs.take(slice(0, 200))
    chosen = ltt_select(small, [0.43, 1.0], 0.005, 0.1, family)
    assert not chosen.feasible and chosen.thresholds == (0.0,)
    assert chosen.samples_needed == math.ceil(math.log(0.1) / math.log(1 - 0.005))  # 460
    assert f"about {chosen.samples_needed} validation samples" in chosen.infeasible_message()
    copies = math.ceil(chosen.samples_needed / len(small))
    more = small.take(np.tile(np.arange(len(small)), copies))
    assert ltt_select(more, [0.43, 1.0], 0.005, 0.1, family).feasible
    # With losses at the first candidate: the count comes from the binomial test.
    losses = sample_losses(outputs, family)
    j = int(np.argmax(losses.sum(axis=0) >= 2))
    picked = np.concatenate([np.flatnonzero(losses[:, j])[:2], np.flatnonzero(~losses[:, j])[:98]])
    lossy = outputs.take(picked)
    first = ltt_select(lossy, [0.43, 1.0], 0.05, 0.1, family[[0, j]])
    assert not first.feasible and first.first_risk == 0.02 and first.samples_needed > 100
    copies = math.ceil(first.samples_needed / len(lossy))
    more = lossy.take(np.tile(np.arange(len(lossy)), copies))
    assert ltt_select(more, [0.43, 1.0], 0.05, 0.1, family[[0, j]]).feasible
    fewer = lossy.take(np.tile(np.arange(len(lossy)), copies - 1))
    assert not ltt_select(fewer, [0.43, 1.0], 0.05, 0.1, family[[0, j]]).feasible


# ------------------------------------------------------------- the guarantee, checked

@pytest.fixture(scope="module")
def synthetic_validity():
    return risk_validity.run_case(risk_validity.synthetic_case(), splits=200, delta=0.1, seed=0)


def _holds(rule, key="violation_rate", delta=0.1, splits=200):
    """The violation rate is at most delta plus three standard errors."""
    return rule[key] <= delta + 3 * math.sqrt(delta * (1 - delta) / splits)


def test_guaranteed_rule_keeps_its_promise_over_200_splits(synthetic_validity):
    for variant in ("raw", "calibrated"):
        rules = synthetic_validity["variants"][variant]["rules"]
        for rule in ("ltt-accuracy", "ltt-signed"):
            assert _holds(rules[rule]) and _holds(rules[rule], "own_loss_violation_rate")
    # Not vacuous: on calibrated scores it certifies early exits on every split, and its
    # own loss comes near its limit.
    ltt = synthetic_validity["variants"]["calibrated"]["rules"]["ltt-accuracy"]
    assert ltt["everything_to_last_exit_rate"] == 0 and ltt["mean_exit_percent"][0] > 10
    assert ltt["own_loss_violation_rate"] > 0


def test_the_same_check_fails_for_the_plain_rule(synthetic_validity):
    for variant in ("raw", "calibrated"):
        plain = synthetic_validity["variants"][variant]["rules"]["plain"]
        assert not _holds(plain), plain["violation_rate"]
        assert plain["passes"] is False


def test_guaranteed_rule_on_real_lenet_outputs():
    case = risk_validity.lenet_case()
    doc = risk_validity.run_case(case, splits=200, delta=0.1, seed=1)
    for variant in doc["variants"].values():
        assert _holds(variant["rules"]["ltt-accuracy"])
        assert variant["rules"]["ltt-accuracy"]["everything_to_last_exit_rate"] < 0.05


# ------------------------------------------------------------------------ the runner

def test_cli_refuses_bad_combinations(capsys):
    from experiments.run import parse_args
    for argv, message in ((["--calibrate"], "give --val-size too"),
                          (["--risk-epsilon", "1"], "give --val-size too"),
                          (["--val-size", "100", "--risk-delta", "0.1"], "give --risk-epsilon"),
                          (["--val-size", "100", "--risk-epsilon", "0"], "in (0, 100)"),
                          (["--val-size", "100", "--risk-epsilon", "1", "--risk-delta", "1"],
                           "probability in (0, 1)"),
                          (["--from-results", LENET, "--calibrate"], "no validation exit outputs")):
        with pytest.raises(SystemExit) as stop:
            parse_args(argv)
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_committed_guarantees_recompute_and_a_change_is_caught(tmp_path):
    import shutil
    from experiments.run import main
    folder = str(tmp_path / "alexnet-val")
    # (the training logs in baseline/ and branchynet/ come along: summary.json re-derives from them)
    shutil.copytree(ALEXNET_VAL, folder, ignore=shutil.ignore_patterns("*.npz", "*.pdf", "*.png"))
    for name in ("exit_outputs.npz", "exit_outputs_baseline.npz", "exit_outputs_val.npz",
                 "exit_outputs_val_baseline.npz", "exit_logits.npz", "exit_logits_val.npz",
                 "branchynet.npz", "baseline.npz"):
        shutil.copy(os.path.join(ALEXNET_VAL, name), folder)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--from-results", folder]) is True
    for name in ("guarantee_cpu.json", "guarantee_cpu_calibrated.csv", "calibration.json"):
        assert f"{name}: identical" in printed.getvalue()
    path = os.path.join(folder, "calibration.json")
    with open(path) as f:
        report = json.load(f)
    report["exits"][0]["temperature"] *= 1.01
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--from-results", folder]) is False


TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "1240",
        "--test-limit", "300", "--baseline-epochs", "1", "--branchy-epochs", "1",
        "--batch-size", "32", "--timing-samples", "20", "--timing-rounds", "1",
        "--no-progress", "--val-size", "600"]


def test_runner_writes_calibration_and_guarantee(tmp_path, capsys):
    from experiments.run import main
    out = str(tmp_path / "run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(TINY + ["--out", out, "--calibrate", "--risk-epsilon", "2", "--risk-delta", "0.2"])
    for name in ("calibration.json", "reliability.png", "guarantee_cpu_calibrated.json",
                 "guarantee_cpu_calibrated.csv"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    # One cache: the exit outputs keep every exit's logits, and calibration reads them there.
    assert not [n for n in os.listdir(out) if n.startswith("exit_logits")]
    for name in ("exit_outputs.npz", "exit_outputs_val.npz"):
        with np.load(os.path.join(out, name)) as data:
            assert "logits" in data.files and "scores" not in data.files
    with open(os.path.join(out, "guarantee_cpu_calibrated.json")) as f:
        doc = json.load(f)
    assert doc["rows"][2]["guarantee"].startswith("P(accuracy lost vs the last exit > 2 pp) <= 0.2")
    assert doc["rows"][2]["val_samples"] == 300  # the half not used to fit the temperatures
    assert "Guaranteed selection: P(accuracy lost" in printed.getvalue()
    with open(os.path.join(out, "calibration.json")) as f:
        report = json.load(f)
    assert [e["fit"]["samples"] for e in report["exits"]] == [300, 300]
    assert all(e["fit"]["after"]["nll"] <= e["fit"]["before"]["nll"] for e in report["exits"])
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--from-results", out]) is True
    # An epsilon no threshold meets: the row says so with a sample count, and the run
    # exits with status 1 after writing everything (weights, outputs and timings reused).
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as stop:
        main(TINY + ["--out", out, "--risk-epsilon", "0.01"])
    assert "validation samples would be needed" in str(stop.value.code)
    with open(os.path.join(out, "guarantee_cpu.json")) as f:
        doc = json.load(f)
    assert doc["feasible"] is False and doc["samples_needed"] > 600
    assert doc["rows"][2]["selection"] == "Learn-then-Test: INFEASIBLE, last exit kept"
    # The same folder as written before December 2026: scores and predictions, no logits.
    # Its calibration is refused with the fix; --calibrate adds the logits from the weights
    # (with --from-results, and in a run), the stored scores stay, and every file still
    # re-derives identically.
    def written_before():
        for name in ("exit_outputs.npz", "exit_outputs_val.npz"):
            made = ExitOutputs.load(os.path.join(out, name))
            np.savez(os.path.join(out, name), scores=made.scores, predictions=made.predictions,
                     labels=made.labels, criterion=made.criterion, key=made.key)
    written_before()
    capsys.readouterr()
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as stop:
        main(["--from-results", out])
    assert stop.value.code == 2
    assert "hold no logits" in capsys.readouterr().err
    for argv in (["--from-results", out, "--calibrate"], TINY + ["--out", out, "--calibrate"]):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(argv)
        assert "exit_outputs_val.npz: every exit's logits on 600 samples added" in printed.getvalue()
        for name in ("exit_outputs.npz", "exit_outputs_val.npz"):
            with np.load(os.path.join(out, name)) as data:
                assert {"scores", "logits"} <= set(data.files)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--from-results", out]) is True
        written_before()
