"""--seeds: per-seed folders, the aggregate over seeds, resuming, recomputing, bad input."""
import contextlib
import csv
import io
import itertools
import json
import os
import shutil

import branchynet  # noqa: F401
import numpy as np
import pytest

from experiments import run
from experiments.seeds import _common_label, over_seeds

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "640",
        "--test-limit", "200", "--baseline-epochs", "1", "--branchy-epochs", "1",
        "--batch-size", "32", "--timing-samples", "20", "--timing-rounds", "2", "--no-progress"]


def _main(argv):
    """run.main(argv) with its printed lines; (exit status or None, printed, result)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            result = run.main(argv)
        except SystemExit as exited:
            return exited.code, printed.getvalue(), None
    return None, printed.getvalue(), result


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory):
    """Two seeds made the way a long run is: seed 0 by a plain run beforehand, seed 1
    interrupted mid-epoch, both then trained (--train-only), then timed. Each step's
    exit status, printed lines and files are kept for the tests."""
    out = str(tmp_path_factory.mktemp("seeds") / "run")
    steps = {}
    # A plain run with the same settings into DIR/seed-0 is a finished seed 0.
    steps["premade"] = _main(TINY + ["--seed", "0", "--out", os.path.join(out, "seed-0"),
                                     "--train-only"])
    # The clock: the deadline is set at 0 + 5 minutes; seed 1's baseline reads the clock
    # before each iteration and finds the deadline passed after its 6th.
    ticks = itertools.chain([0.0] * 7, itertools.repeat(1e12))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "_clock", lambda: next(ticks))
        steps["interrupted"] = _main(TINY + ["--seeds", "2", "--out", out, "--train-only",
                                             "--time-budget", "5"])
    steps["snapshots"] = sorted(os.listdir(os.path.join(out, "seed-1", "baseline")))
    steps["train_only"] = _main(TINY + ["--seeds", "2", "--out", out, "--train-only"])
    steps["after_train_only"] = sorted(os.listdir(out)), [
        sorted(os.listdir(os.path.join(out, f"seed-{s}"))) for s in (0, 1)]
    steps["train_only_recompute"] = _main(["--from-results", out])
    steps["timed"] = _main(TINY + ["--seeds", "2", "--out", out])
    steps["again"] = _main(TINY + ["--seeds", "2", "--out", out])
    return out, steps


def test_seeds_resume_train_only_then_time(seeds_run):
    out, steps = seeds_run
    assert steps["premade"][0] is None
    code, printed, _ = steps["interrupted"]
    assert code == run.EXIT_TIME_BUDGET
    assert f"[baseline] reusing {out}/seed-0/baseline.npz" in printed  # the finished seed
    assert "[baseline] stopped at the time budget after epoch 0.30 of 1" in printed
    assert any(name.startswith("snapshot_epoch_0_iter_6") for name in steps["snapshots"])
    code, printed, summary = steps["train_only"]
    assert code is None and summary["seeds"] == [0, 1]
    assert f"[branchynet] reusing {out}/seed-0/branchynet.npz" in printed
    assert printed.count("] training 1 epoch(s)") == 2  # seed 1's baseline goes on, then its B-net
    assert "--train-only: 2 seeds trained and evaluated" in printed
    top, folders = steps["after_train_only"]
    assert top == ["seed-0", "seed-1", "seeds.json", "seeds_accuracy.csv",
                   "seeds_accuracy.json", "seeds_accuracy.md"]
    for files in folders:  # exit outputs, no timing, no table
        assert "exit_outputs.npz" in files and not any(f.startswith(("timing_", "table_"))
                                                       for f in files)
    code, printed, identical = steps["train_only_recompute"]
    assert code is None and identical and "(trained with --train-only)" in printed
    # Timing later: every seed's weights and exit outputs are reused; both are timed.
    code, printed, summary = steps["timed"]
    assert code is None and "] training" not in printed
    assert printed.count("[cpu] measuring the baseline") == 2
    assert "seeds_cpu.md" in summary["aggregates"] and "Table I over seeds, cpu" in printed
    # The same command once more reuses everything, the timings too.
    code, printed, _ = steps["again"]
    assert code is None and "] training" not in printed and "measuring" not in printed


def _table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _value(text):
    return [float(v) for v in text.split(";")] if ";" in text else float(text)


def test_seeds_aggregate_is_numpy_over_the_seed_tables(seeds_run):
    out, _ = seeds_run
    tables = [_table(os.path.join(out, f"seed-{s}", "table_cpu.csv")) for s in (0, 1)]
    aggregate = _table(os.path.join(out, "seeds_cpu.csv"))
    assert [(r["network"], r["selection"]) for r in aggregate] == [
        ("LeNet", "baseline"), ("B-LeNet", "test knee (as paper)"),
        ("B-LeNet", "paper's T (Table I)")]
    for i, row in enumerate(aggregate):
        for key in ("accuracy", "time_ms", "gain", "trunk_gain", "macs", "predicted_ms"):
            if not tables[0][i][key]:
                assert row[f"{key}_mean"] == ""  # the baseline has no gain
                continue
            values = np.array([_value(t[i][key]) for t in tables])
            assert float(row[f"{key}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-12)
            assert (float(row[f"{key}_min"]), float(row[f"{key}_max"])) == (values.min(), values.max())
    knee = [t[1] for t in tables]
    exits = np.array([_value(k["exit_percent"]) for k in knee])  # CSV lists keep 6 digits
    assert float(aggregate[1]["exit1_percent_mean"]) == pytest.approx(exits[:, 0].mean(), rel=1e-5)
    assert float(aggregate[1]["exit2_percent_std"]) == pytest.approx(exits[:, 1].std(ddof=1),
                                                                     rel=1e-5, abs=1e-9)
    assert aggregate[1]["thresholds_per_seed"] == " / ".join(k["thresholds"] for k in knee)
    # The paper's question: each seed's B-LeNet (at its own knee) minus its LeNet.
    difference = np.array([float(k["accuracy"]) - float(t[0]["accuracy"]) for k, t in zip(knee, tables)])
    with open(os.path.join(out, "seeds_cpu.json")) as f:
        paper = json.load(f)["paper"]
    assert paper["paper_difference_pp"] == pytest.approx(0.05)
    assert paper["difference_pp"]["mean"] == pytest.approx(difference.mean())
    assert paper["difference_pp"]["std"] == pytest.approx(difference.std(ddof=1))
    assert paper["within_range"] == bool(difference.min() <= 0.05 <= difference.max())
    # Accuracy alone: the paper's T = 0.025 on each seed is that row of its sweep.
    with open(os.path.join(out, "seeds_accuracy.json")) as f:
        accuracy = json.load(f)
    at_paper_t = [next(100 * float(r["accuracy"]) for r in _table(os.path.join(out, f"seed-{s}", "sweep_cpu.csv"))
                       if float(r["T1"]) == 0.025) for s in (0, 1)]
    row = accuracy["rows"][-1]
    assert row["selection"] == "paper T = 0.025"
    assert row["stats"]["accuracy"]["mean"] == pytest.approx(np.mean(at_paper_t))
    assert row["stats"]["accuracy"]["std"] == pytest.approx(np.std(at_paper_t, ddof=1))
    assert accuracy["paper"]["row"] == "paper T = 0.025"
    with open(os.path.join(out, "seeds_cpu.md")) as f:
        markdown = f.read()
    mean, std = np.mean(at_paper_t), np.std(at_paper_t, ddof=1)
    assert "| LeNet | baseline | 2 |" in markdown and "Paper: 99.25% vs 99.20% (+0.05 pp" in markdown
    with open(os.path.join(out, "seeds_accuracy.md")) as f:
        assert f"| B-LeNet | paper T = 0.025 | 2 | {mean:.2f} ± {std:.2f} [" in f.read()


def test_seeds_from_results_recomputes_each_seed_and_catches_tampering(seeds_run, tmp_path):
    out, _ = seeds_run
    code, printed, identical = _main(["--from-results", out])
    assert code is None and identical
    assert f"{out}/seed-1/table_cpu.csv: identical" in printed
    assert f"{out}/seeds_cpu.csv: identical to what the seeds' folders give" in printed
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    path = os.path.join(copy, "seeds_cpu.csv")
    rows = _table(path)

    def written(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()
    with open(path, newline="") as f:
        assert written(rows) == f.read()  # rewriting alone changes nothing
    rows[1]["accuracy_mean"] = repr(float(rows[1]["accuracy_mean"]) + 0.01)  # the knee's mean
    with open(path, "w", newline="") as f:
        f.write(written(rows))
    code, printed, identical = _main(["--from-results", copy])
    assert not identical and f"{copy}/seeds_cpu.csv: differs from what the seeds' folders give" in printed
    # Each seed's folder re-derives on its own too.
    assert _main(["--from-results", os.path.join(out, "seed-0")])[2]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds 0: give 2 or more seeds"),
    (["--seeds", "1"], "--seeds 1: give 2 or more seeds (a standard deviation needs two); "
                       "for one run use --seed N without --seeds"),
    (["--seeds", "3", "--seed", "-1"], "seeds must lie in [0, 2**32 - 1]"),
    (["--seeds", "2", "--communicator", "naive"], "does not work with --communicator"),
])
def test_seeds_bad_input_is_refused_first(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        run.main(["--network", "lenet_mnist"] + argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_seeds_and_single_run_folders_are_not_mixed(tmp_path, capsys):
    single, several = tmp_path / "single", tmp_path / "several"
    single.mkdir(), several.mkdir()
    (single / "config.json").write_text("{}")
    (several / "seeds.json").write_text("{}")
    for argv, message in ((["--seeds", "2", "--out", str(single)], "holds a single run"),
                          (["--out", str(several)], "holds a --seeds run (seeds.json): add --seeds K")):
        with pytest.raises(SystemExit) as exited:
            run.parse_args(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err
    assert run.parse_args(["--seeds", "3"]).out == os.path.join("results", "lenet_mnist-mnist-5k-seeds")


def test_over_seeds_and_row_labels():
    stats = over_seeds([98.5, None, 99.0, 98.0])
    assert stats == {"mean": 98.5, "std": 0.5, "min": 98.0, "max": 99.0, "seeds": 3}
    assert over_seeds([None, None]) is None
    # A budget's label names each seed's own baseline: those numbers become *.
    assert _common_label(["val latency <= 0.55 ms (0.8 x baseline 0.687 ms) (grid)",
                          "val latency <= 0.6 ms (0.8 x baseline 0.75 ms) (grid)"]) == \
        "val latency <= * ms (0.8 x baseline * ms) (grid)"
    assert _common_label(["val knee (grid)"] * 2) == "val knee (grid)"
