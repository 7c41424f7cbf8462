"""Choosing thresholds on validation data: exit criteria, budgets, searches, no test leakage."""
import json
import math
import os
import shutil

import branchynet  # noqa: F401
import numpy as np
import pytest

from branchynet.net import Branch, BranchyNet
from branchynet.routing import entropy, margin, max_prob
from branchynet.selection import (AccuracyFloor, InfeasibleBudget, LatencyBudget, choose,
                                  coordinate_search, grid_search, quantile_search,
                                  quantile_thresholds, select, select_knee)
from branchynet.sweep import (CRITERION_GRIDS, collect_exit_outputs, default_grid,
                              evaluate_grid, exit_indices)
from branchynet.synthetic import synthetic_exit_outputs
from networks import get_network

LENET_GRID = get_network("lenet_mnist").grid
PATH_MS = [0.25, 1.0]  # a fixed stand-in for measured B-LeNet exit-path latencies


def rows(*logits):
    return np.array(logits, np.float32)


# ------------------------------------------------------------------------------ criteria

def test_criteria_scores_hand_values():
    logits = rows([0, 0, 0],                        # p = 1/3 each
                  [math.log(3), 0, 0],              # p = .6, .2, .2
                  [math.log(6), math.log(3), 0],    # p = .6, .3, .1
                  [0, -1e4, -1e4])                  # p = 1, 0, 0 (float32 underflow)
    np.testing.assert_allclose(max_prob(logits), [2 / 3, 0.4, 0.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(margin(logits), [1.0, 0.6, 0.7, 0.0], atol=1e-6)
    assert max_prob(logits)[3] == 0 and margin(logits)[3] == 0
    # A very confident row keeps a nonzero score (1 - p1 is not rounded away in float32).
    confident = max_prob(rows([20, 0, 0]))[0]
    assert 0 < confident == pytest.approx(2 * math.exp(-20), rel=1e-4)
    # Lower is more confident for every criterion: ranks agree on these rows.
    for score in (entropy, max_prob, margin):
        assert np.argsort(score(logits[[3, 1, 0]])).tolist() == [0, 1, 2]


def toy_net():
    """Three exits whose logits are columns 0-2, 3-5 and 6-8 of the input."""
    return BranchyNet([Branch([lambda h: h[:, 0:3]]), Branch([lambda h: h[:, 3:6]]),
                       Branch([lambda h: h[:, 6:9]])])


def test_routing_with_each_criterion_hand_example():
    net = toy_net()
    ln3, ln6 = math.log(3), math.log(6)
    x = rows(
        # A: exit 1 p = (.6,.2,.2): max-prob score .4, margin .6, entropy .950
        [ln3, 0, 0, 0, 0, 0, 0, 0, 0],
        # B: exit 1 uniform; exit 2 p = (.1,.6,.3): max-prob .4, margin .7; exit 3 label 2
        [0, 0, 0, 0, ln6, ln3, 0, 0, 1],
        # C: exit 1 uniform; exit 2 confident in class 2 (scores ~2.5e-4)
        [0, 0, 0, 0, 0, 9, 0, 0, 0],
    )
    # max-prob, T = (0.5, 0.35): exit when p1 > 0.5 at exit 1, p1 > 0.65 at exit 2.
    labels, exits = net.predict(x, [0.5, 0.35], criterion="max-prob")
    assert exits.tolist() == [0, 2, 1] and labels.tolist() == [0, 2, 2]
    # margin, T = (0.65, 0.75): exit when p1 - p2 > 0.35 at exit 1, > 0.25 at exit 2.
    labels, exits = net.predict(x, [0.65, 0.75], criterion="margin")
    assert exits.tolist() == [0, 1, 1] and labels.tolist() == [0, 1, 2]
    # entropy, T = (0.9, 0.9): A's 0.950 stays; B's exit-2 entropy 0.898 leaves.
    labels, exits = net.predict(x, [0.9, 0.9])
    assert exits.tolist() == [2, 1, 1] and labels.tolist() == [0, 1, 2]
    # The comparison stays strict: a score equal to its threshold does not exit.
    at = float(max_prob(x[:1, :3])[0])
    assert net.predict(x[:1], [at, 0.0], criterion="max-prob")[1][0] == 2
    assert net.predict(x[:1], [np.nextafter(np.float32(at), np.float32(1)), 0.0],
                       criterion="max-prob")[1][0] == 0


def test_unknown_criterion_is_a_clear_error(lenet_pair):
    _, branchy = lenet_pair
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match="unknown exit criterion 'maxprob'.*max-prob"):
        branchy.predict(x, [0.1], criterion="maxprob")
    with pytest.raises(ValueError, match="unknown exit criterion"):
        collect_exit_outputs(branchy, x, [0, 0], criterion="confidence")
    assert default_grid("entropy", LENET_GRID) == LENET_GRID
    assert default_grid("margin", LENET_GRID) == CRITERION_GRIDS["margin"]


@pytest.mark.parametrize("criterion", ["max-prob", "margin"])
def test_criterion_sweep_equals_real_inference(lenet_pair, mnist, criterion):
    from branchynet.timing import exit_path_latency, time_early_exit
    _, branchy = lenet_pair
    x, y = mnist.test_x[:300], mnist.test_y[:300]
    outputs = collect_exit_outputs(branchy, x, y, batch_size=100, criterion=criterion)
    assert outputs.criterion == criterion and (outputs.scores >= 0).all()
    assert (outputs.scores <= 1 + 1e-6).all()
    grid = np.array(CRITERION_GRIDS[criterion])[:, None]
    chosen = exit_indices(outputs, grid)
    mixed = 0
    for i in range(1, len(grid), 3):
        labels, exits = branchy.predict(x, grid[i], criterion=criterion)
        np.testing.assert_array_equal(exits, chosen[i])
        mixed += 0 < exits.sum() < len(x)
    assert mixed >= 2  # the default grid really splits the samples
    # Batch size 1 (the timed path) routes the same way.
    t = grid[len(grid) // 2]
    _, labels, exits = time_early_exit(branchy, x[:50], t, warmup=0, criterion=criterion)
    np.testing.assert_array_equal(exits, chosen[len(grid) // 2][:50])
    assert exit_path_latency(branchy, x[:3], warmup=1, criterion=criterion).shape == (2,)


# ------------------------------------------------------------------- budgets on validation

@pytest.fixture(scope="module")
def lenet_val(lenet_pair, mnist):
    """B-LeNet exit outputs on 2,000 training images the fixture's nets never trained on."""
    _, branchy = lenet_pair
    return collect_exit_outputs(branchy, mnist.train_x[4000:6000], mnist.train_y[4000:6000])


@pytest.mark.parametrize("method", ["grid", "coordinate", "quantile"])
def test_budgets_are_respected_on_validation(lenet_val, method):
    grid = grid_search(lenet_val, PATH_MS, LENET_GRID)
    assert grid.runtime_ms.min() == 0.25 < grid.runtime_ms.max() < 1.0  # a real trade-off
    for ms in np.linspace(grid.runtime_ms.min(), 1.0, 7):
        budget = LatencyBudget(ms)
        chosen = choose(lenet_val, PATH_MS, budget, method, LENET_GRID)
        c = chosen.candidates
        assert chosen.runtime_ms <= ms
        # The most accurate candidate that fits; among equals, the fastest.
        fits = c.runtime_ms <= ms
        assert chosen.accuracy == c.accuracy[fits].max()
        assert chosen.runtime_ms == c.runtime_ms[fits & (c.accuracy == chosen.accuracy)].min()
        # Exact on validation: re-evaluating the chosen vector gives the same numbers.
        again = evaluate_grid(lenet_val, [chosen.thresholds])
        assert again.accuracy[0] == chosen.accuracy
        if method != "quantile":  # same values as the grid: one exit to set, so same answer
            assert chosen.accuracy == grid.accuracy[grid.runtime_ms <= ms].max()
    for floor in np.linspace(grid.accuracy.min(), grid.accuracy.max(), 7):
        chosen = choose(lenet_val, PATH_MS, AccuracyFloor(floor), method, LENET_GRID)
        c = chosen.candidates
        assert chosen.accuracy >= floor
        assert chosen.runtime_ms == c.runtime_ms[c.accuracy >= floor].min()


def test_infeasible_budgets_say_what_can_be_had(lenet_val):
    grid = grid_search(lenet_val, PATH_MS, LENET_GRID)
    with pytest.raises(InfeasibleBudget, match=r"latency <= 0\.1 ms.*fastest of the 17 "
                       r"candidates \(grid search\) is predicted at 0\.2[56]\d* ms") as err:
        select(grid, LatencyBudget(0.1))
    assert err.value.achievable == grid.runtime_ms.min()
    best = grid.accuracy.max()
    with pytest.raises(InfeasibleBudget, match=rf"accuracy >= .*reaches {100 * best:.2f}%"):
        choose(lenet_val, PATH_MS, AccuracyFloor(best + 0.001), "coordinate", LENET_GRID)
    with pytest.raises(ValueError, match="positive"):
        LatencyBudget(0)


def test_knee_on_validation_is_on_the_frontier(lenet_val):
    chosen = choose(lenet_val, PATH_MS, "knee", "grid", LENET_GRID, inc_amt=-0.0001)
    c = chosen.candidates
    assert chosen.index == select_knee(c, -0.0001)
    # No candidate is both faster and more accurate than the knee.
    assert not ((c.runtime_ms < chosen.runtime_ms) & (c.accuracy > chosen.accuracy)).any()


# ------------------------------------------------------------------------------ searches

def test_quantile_thresholds_set_exit_fractions():
    outputs = synthetic_exit_outputs(2000, 3, seed=1)
    assert len(np.unique(outputs.scores[:, 0])) > 1900  # (nearly) no ties
    t = quantile_thresholds(outputs, 0.5)
    counts = evaluate_grid(outputs, [t]).exit_counts[0]
    # Half of the 2000 leave at exit 1, half of the remaining 1000 at exit 2.
    assert abs(counts[0] - 1000) <= 2 and abs(counts[1] - 500) <= 2
    assert quantile_thresholds(outputs, 0.0) == [0.0, 0.0]
    assert quantile_thresholds(outputs, 1.0)[0] == np.inf
    # Thresholds are float32 scores, so real float32 routing agrees with the sweep.
    assert all(float(np.float32(v)) == v for v in t)


def test_quantile_thresholds_route_real_samples_as_evaluated(lenet_pair, lenet_val, mnist):
    _, branchy = lenet_pair
    x, outputs = mnist.train_x[4000:4500], lenet_val.take(slice(0, 500))
    candidates = quantile_search(outputs, PATH_MS, steps=11)
    chosen = exit_indices(outputs, candidates.thresholds)
    for i in range(0, len(candidates), 3):
        np.testing.assert_array_equal(branchy.predict(x, candidates.thresholds[i])[1], chosen[i])


def test_coordinate_search_matches_the_grid_without_enumerating_it():
    # Four exits: the grid is 17^3 = 4,913 vectors.
    outputs = synthetic_exit_outputs(2000, 4, seed=3)
    path_ms = [2.0, 4.0, 6.0, 8.0]
    grid = grid_search(outputs, path_ms, LENET_GRID)
    assert len(grid) == 17 ** 3
    knee_search = coordinate_search(outputs, path_ms, LENET_GRID)
    assert knee_search.evaluations < len(grid) / 2
    shortfall = []
    for ms in (3.0, 4.0, 5.0, 6.0, 7.0):
        budget = LatencyBudget(ms)
        found = coordinate_search(outputs, path_ms, LENET_GRID, budget=budget)
        best = grid.accuracy[select(grid, budget)]
        got = found.accuracy[select(found, budget)]
        assert found.runtime_ms[select(found, budget)] <= ms
        assert got <= best  # searches the same values: never beats the grid
        shortfall.append(best - got)
    assert max(shortfall) <= 0.01 and np.mean(shortfall) <= 0.005
    # Several budgets: trace the frontier once, refine per budget from its vectors.
    budget = LatencyBudget(5.0)
    refined = coordinate_search(outputs, path_ms, LENET_GRID, budget=budget, warm=knee_search)
    assert refined.evaluations < knee_search.evaluations / 5
    assert refined.accuracy[select(refined, budget)] >= knee_search.accuracy[select(knee_search, budget)]


# --------------------------------------------------------------------------- the runner

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "1240",
        "--test-limit", "200", "--baseline-epochs", "2", "--branchy-epochs", "2",
        "--batch-size", "32", "--timing-samples", "30", "--no-progress", "--val-size", "240"]


def _selected(out, tag="cpu"):
    with open(os.path.join(out, f"selection_{tag}.json")) as f:
        return [{k: s.get(k) for k in ("rule", "thresholds", "val_accuracy", "val_predicted_ms",
                                       "infeasible")} for s in json.load(f)["selections"]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One runner run with a validation split and two budgets: (folder, summary, stdout)."""
    import contextlib
    import io
    from experiments.run import main
    out = str(tmp_path_factory.mktemp("selection") / "run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = main(TINY + ["--out", out, "--accuracy-drop", "1",
                               "--latency-budget-fraction", "5"])
    return out, summary, printed.getvalue()


def test_runner_selects_on_validation_and_reports_on_test(tiny_run, capsys):
    from experiments.run import main
    from branchynet.datasets import load_dataset, split_validation
    out, summary, printed = tiny_run
    assert "train 1000, val 240, test 200" in printed
    assert "accuracy on 240 validation samples" in printed
    # The recorded validation split is the seeded one, carved from the 1240 training samples.
    data = load_dataset("mnist-5k")
    data.train_x, data.train_y = data.train_x[:1240], data.train_y[:1240]
    expected = split_validation(data, 240, seed=0).val_index
    np.testing.assert_array_equal(np.load(os.path.join(out, "val_index.npy")), expected)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["val_size"] == 240 and config["validation"]["samples"] == 240
    assert os.path.getsize(os.path.join(out, "exit_outputs_val.npz")) > 0
    with open(os.path.join(out, "table_cpu.json")) as f:
        table = json.load(f)
    with open(os.path.join(out, "timing_cpu.json")) as f:
        timing = json.load(f)
    # Exit paths for the choice were timed on validation inputs; the chosen points on test.
    assert timing["profile_inputs"] == "validation" and timing["measured_on"]["inputs"] == "test"
    profile_baseline_ms = np.median(timing["profile"]["rounds_ms"]["baseline"])
    rows = {r["selection"]: r for r in table["rows"][1:]}
    assert list(rows)[0] == "test knee (as paper)"
    knee = rows["val knee (grid)"]
    drop = next(r for s, r in rows.items() if s.startswith("val accuracy >= "))
    assert "(baseline " in drop["selection"] and "- 1 pp)" in drop["selection"]
    fits = rows[next(s for s in rows if s.startswith("val latency <= "))]
    for row in (knee, drop, fits):  # measured on the test set, at batch size 1
        assert row["time_ms"] > 0 and 0 < row["accuracy"] <= 100
        assert sum(row["exit_percent"]) == pytest.approx(100) and row["val_accuracy"] > 0
    assert drop["val_accuracy"] >= summary["val_baseline_accuracy"] * 100 - 1 - 1e-9
    assert fits["val_predicted_ms"] <= 5 * profile_baseline_ms
    assert "Val acc.(%)" in printed and "val knee (grid)" in printed

    # Another criterion and search in the same folder reuse the weights; files get a suffix.
    main(TINY + ["--out", out, "--criterion", "margin", "--search", "quantile"])
    printed = capsys.readouterr().out
    assert "[baseline] reusing" in printed and "] training" not in printed
    with open(os.path.join(out, "table_cpu-margin.json")) as f:
        rows = json.load(f)["rows"]
    assert [r["selection"] for r in rows[1:]] == ["test knee", "val knee (quantile)"]
    assert os.path.exists(os.path.join(out, "exit_outputs_val_margin.npz"))

    # An infeasible budget: a marked row with the reason, everything written, exit status 1.
    with pytest.raises(SystemExit, match=r"no threshold vector meets the budget latency <= "
                       r"0\.001 ms: the fastest of the 17 candidates .* is predicted at"):
        main(TINY + ["--out", out, "--latency-budget-ms", "0.001", "--search", "coordinate"])
    with open(os.path.join(out, "table_cpu.json")) as f:
        rows = json.load(f)["rows"]
    marked = rows[-1]
    assert marked["selection"] == "val latency <= 0.001 ms (coordinate): INFEASIBLE"
    assert marked["accuracy"] is None and "fastest" in marked["note"]


def fixed_latency(branchy, baseline, x, device=None, points=None, rounds=5, block=10,
                  criterion="entropy", progress=False):
    """``measure_latency`` with latencies fixed in advance, so budgets are exact and two
    runs compare without timing noise; the points still run, for their exits and labels."""
    from branchynet.timing import Interleaved, latency_variants
    variants = latency_variants(branchy, baseline, x, device, criterion, points)
    for name in points or {}:
        for i in range(len(x)):
            variants[name](i)
    fixed = {"baseline": 0.9, "baseline_trunk": 0.8, "exit1": 0.3, "exit1_trunk": 0.1,
             "exit2": 1.0, "exit2_trunk": 0.8}
    return Interleaved({name: [fixed.get(name, 0.5)] * rounds for name in variants}, len(x)), variants


def test_runner_choice_reads_no_test_data(tiny_run, tmp_path, monkeypatch, capsys):
    """Replace the test images and labels with noise: the T chosen on validation is the same.

    Both runs start from the same trained weights, in new folders with the same fixed
    timings; in the second every test-set output is recomputed from the noise.
    """
    import experiments.experiment as experiment
    import experiments.run as run
    monkeypatch.setattr(experiment, "measure_latency", fixed_latency)
    budgets = ["--latency-budget-ms", "0.65", "--latency-budget-fraction", "0.8",
               "--accuracy-floor", "50", "--accuracy-drop", "0.5"]
    real, noisy = str(tmp_path / "real"), str(tmp_path / "noisy")
    for out in (real, noisy):
        os.makedirs(out)
        for name in ("baseline.npz", "branchynet.npz"):
            shutil.copy(os.path.join(tiny_run[0], name), out)
    run.main(TINY + ["--out", real] + budgets)

    load = experiment.load_dataset

    def load_with_noise_as_test(*args, **kwargs):
        data = load(*args, **kwargs)
        rng = np.random.RandomState(7)
        data.test_x = rng.rand(*data.test_x.shape).astype(np.float32)
        data.test_y = rng.randint(10, size=len(data.test_y)).astype(np.int32)
        return data

    monkeypatch.setattr(experiment, "load_dataset", load_with_noise_as_test)
    run.main(TINY + ["--out", noisy] + budgets)
    capsys.readouterr()
    chosen_real, chosen_noisy = _selected(real), _selected(noisy)
    assert [s["rule"] for s in chosen_real] == [
        "knee", "latency <= 0.65 ms", "latency <= 0.72 ms (0.8 x baseline 0.900 ms)",
        "accuracy >= 50.00%", chosen_real[4]["rule"]]
    assert all(s["infeasible"] is None for s in chosen_real)
    assert chosen_real[1]["val_predicted_ms"] <= 0.65 and chosen_real[2]["val_predicted_ms"] <= 0.72
    assert 0.3 < chosen_real[1]["val_predicted_ms"]  # a real mix of exits, not all at exit 1
    assert chosen_noisy == chosen_real
    # ... while everything measured on the test set did change.
    with open(os.path.join(real, "table_cpu.json")) as f, \
            open(os.path.join(noisy, "table_cpu.json")) as g:
        real_rows, noisy_rows = json.load(f)["rows"], json.load(g)["rows"]
    assert [r["accuracy"] for r in real_rows] != [r["accuracy"] for r in noisy_rows]
    assert noisy_rows[0]["accuracy"] < 30  # the baseline on noise: chance level


@pytest.mark.parametrize("argv, message", [
    (["--latency-budget-ms", "1"], "--latency-budget-ms choose(s) T on validation data: give --val-size"),
    (["--search", "coordinate"], "give --val-size too"),
    (["--val-size", "abc"], "--val-size: not a number: 'abc'"),
    (["--val-size", "1.5"], "neither a sample count"),
    (["--val-size", "10", "--latency-budget-fraction", "-1"], "must be a positive number"),
    (["--val-size", "10", "--accuracy-floor", "101"], "percentage in [0, 100]"),
    (["--criterion", "confidence"], "invalid choice"),
])
def test_bad_selection_arguments_are_reported(argv, message, capsys):
    from experiments.run import parse_args
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_search_benchmark_runs_and_reports_each_search(tmp_path, capsys):
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from benchmarks import selection_search
    out = str(tmp_path / "search.json")
    doc = selection_search.main(["--exits", "3", "--val-samples", "600", "--test-samples", "600",
                                 "--budgets", "3", "--floors", "2", "--out", out, "--markdown"])
    printed = capsys.readouterr().out
    assert list(doc["figures"]) == ["synthetic-3exits-alexnet-values", "synthetic-3exits-17-values"]
    figure = doc["figures"]["synthetic-3exits-alexnet-values"]
    assert figure["grid"]["evaluations"] == 121 and figure["quantile"]["evaluations"] <= 201
    assert figure["grid"]["summary"]["val_shortfall_pp_max"] == 0
    assert figure["coordinate"]["summary"]["val_shortfall_pp_mean"] >= 0  # same values as the grid
    assert len(figure["coordinate"]["latency"]) == 3 and len(figure["quantile"]["floors"]) == 2
    assert "synthetic-3exits-17-values (289 grid vectors): grid" in printed
    assert "| synthetic, 3 exits, 11 values per exit | 121 | grid |" in printed
    with open(out) as f:
        assert json.load(f)["figures"].keys() == doc["figures"].keys()
