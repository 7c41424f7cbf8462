"""The experiment runner end to end on a tiny setting, its resume, and its bad-input errors."""
import json
import os

import branchynet  # noqa: F401
import numpy as np
import pytest

from experiments.run import main, parse_args

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "640",
        "--test-limit", "200", "--baseline-epochs", "1", "--branchy-epochs", "1",
        "--batch-size", "32", "--timing-samples", "40", "--no-progress"]


def test_progress_bars_only_when_both_streams_are_terminals(tmp_path, monkeypatch):
    """``./dev.sh demo > demo.log``: no bars (carriage-return updates) in a file, the
    stages' and epochs' own lines instead; on a terminal the bars unless --no-progress."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    argv = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--out", str(tmp_path / "o")]
    assert parse_args(argv).no_progress is True  # pytest captures both streams: no terminal
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert parse_args(argv).no_progress is True  # stdout still a file
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert parse_args(argv).no_progress is False
    assert parse_args(argv + ["--no-progress"]).no_progress is True


def test_runner_end_to_end_and_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    summary = main(TINY + ["--out", out])
    printed = capsys.readouterr().out
    assert "Table I rows: LeNet on mnist-5k, cpu" in printed and "B-LeNet" in printed
    for name in ("config.json", "baseline.npz", "branchynet.npz", "exit_outputs.npz",
                 "timing_cpu.json", "sweep_cpu.csv", "table_cpu.csv", "table_cpu.json",
                 "tradeoff_cpu.png", "tradeoff_cpu.pdf", "summary.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "table_cpu.json")) as f:
        table = json.load(f)
    base, knee, paper = table["rows"]
    assert base["network"] == "LeNet" and knee["network"] == "B-LeNet"
    # Table I's T for B-LeNet, timed beside the knee, its accuracy and exits exact.
    assert paper["selection"] == "paper's T (Table I)" and paper["thresholds"] == [0.025]
    import csv
    with open(os.path.join(out, "sweep_cpu.csv")) as f:
        at = next(r for r in csv.DictReader(f) if float(r["T1"]) == 0.025)
    assert paper["accuracy"] == pytest.approx(100 * float(at["accuracy"]))
    assert paper["exit_percent"][0] == pytest.approx(100 * float(at["exit1_fraction"]))
    assert float(at["measured_ms"]) == pytest.approx(paper["time_ms"])
    assert len(knee["thresholds"]) == 1 and sum(knee["exit_percent"]) == pytest.approx(100)
    with open(os.path.join(out, "timing_cpu.json")) as f:
        timing = json.load(f)
    rounds = timing["measurement"]["rounds_ms"]
    knee_name = "T=" + ",".join(repr(float(t)) for t in knee["thresholds"])
    # Every latency is the median of 5 interleaved rounds over the 40 timed samples, and
    # the gain is paired round by round (not a ratio of two medians).
    assert timing["measurement"]["rounds"] == 5 and timing["measurement"]["samples"] == 40
    assert set(rounds) >= {"baseline", "baseline_trunk", "exit1", "exit1_trunk", "exit2",
                           "exit2_trunk", knee_name, "T=0.025"}
    assert paper["time_ms"] == pytest.approx(np.median(rounds["T=0.025"]))
    assert all(len(r) == 5 for r in rounds.values())
    assert base["time_ms"] == pytest.approx(np.median(rounds["baseline"]))
    assert knee["time_ms"] == pytest.approx(np.median(rounds[knee_name]))
    per_round = np.array(rounds["baseline"]) / np.array(rounds[knee_name])
    assert knee["gain"] == pytest.approx(np.median(per_round))
    assert (knee["gain_low"], knee["gain_high"]) == pytest.approx((per_round.min(), per_round.max()))
    assert knee["gain_significant"] == (per_round.min() > 1 or per_round.max() < 1)
    assert knee["time_q1_ms"] <= knee["time_ms"] <= knee["time_q3_ms"]
    assert table["timing_rule"].startswith("end to end at batch size 1")
    assert table["machine"]["chainer"] == "7.8.1"
    assert "median of 5 interleaved rounds over the first 40 test samples" in printed
    # Batch-size-1 timing ran with one thread per BLAS library, and says so; training ran
    # with the thread count measured fastest at the start, recorded in config.json.
    assert "1 BLAS thread" in printed and "for batch-size-1 timing" in printed
    for part in ("profile", "measurement"):
        assert {p["num_threads"] for p in timing[part]["blas"]} == {1}
    assert {p["num_threads"] for p in timing["measurement_key"]["machine"]["blas"]} == {1}
    with open(os.path.join(out, "config.json")) as f:
        blas = json.load(f)["blas"]
    assert blas["setting"] == "auto" and blas["timing_threads"] == 1
    assert blas["cores"] == 1 or blas["training_threads"] in blas["measurement"]["candidates"]
    assert "accuracy and exits over all 200 test samples" in printed
    with open(os.path.join(out, "sweep_cpu.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 + 17  # the paper's LeNet grid
    cpu = summary["devices"]["cpu"]
    assert cpu["knee"] in cpu["frontier"]
    assert all(r for r in cpu["rows"])
    # Multiply-adds: the baseline runs the whole LeNet; the B-net's expected count lies
    # between exit 1 alone and exit 2 with the earlier head (hand counts in test_branchynet).
    assert base["macs"] == 1_140_070 and summary["costs"]["path_macs"] == [220_150, 1_140_070]
    assert 220_150 <= knee["macs"] <= summary["costs"]["macs"][1]
    assert "MACs(M)" in printed
    training = summary["training"]["branchynet"]
    assert training["epochs"] == 1 and len(training["epoch_seconds"]) == 1
    assert training["images_per_second"] == pytest.approx(640 / training["seconds"])
    # 640 mixed training digits, one epoch each: both networks are well above chance (10%).
    assert base["accuracy"] > 50 and summary["exit_accuracies"][-1] > 0.5

    # The README's results table reads the folder back.
    import runpy
    table_script = os.path.join(os.path.dirname(__file__), "..", "scripts", "results_table.py")
    runpy.run_path(table_script)["main"]([out])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| B-LeNet | mnist-5k (640 train / 200 test), batch 32, 1 + 1 epochs | cpu |")
    assert f"| {base['accuracy']:.2f} | {knee['accuracy']:.2f} |" in row
    runpy.run_path(table_script)["main"](["--beside-paper", out])
    lines = capsys.readouterr().out.splitlines()[2:]
    assert [line.split(" | ")[0] for line in lines] == [
        "| LeNet", "| B-LeNet, paper's T = 0.025",
        f"| B-LeNet, knee (stated rule), T = {knee['thresholds'][0]:g}"]
    assert lines[0].endswith("| 99.20 / - / 3.37 / - |")
    assert lines[1].endswith("| 99.25 / 94.3, 5.63 / 0.62 / 5.4x |")
    assert f"| {paper['accuracy']:.2f} | {paper['exit_percent'][0]:.1f} / " in lines[1]

    # A second run reuses the trained weights, cached outputs and timings, even when the
    # record lists the BLAS libraries in another order (threadpoolctl lists them in the
    # order a process loaded them; scipy, a test dependency, brings a second OpenBLAS).
    timing_path = os.path.join(out, "timing_cpu.json")
    with open(timing_path) as f:
        timing = json.load(f)
    assert len(timing["profile_key"]["machine"]["blas"]) >= 2
    for key in ("profile_key", "measurement_key"):
        timing[key]["machine"]["blas"].reverse()
    with open(timing_path, "w") as f:
        json.dump(timing, f)
    main(TINY + ["--out", out])
    printed = capsys.readouterr().out
    assert "[baseline] reusing" in printed and "[branchynet] reusing" in printed
    assert "] training" not in printed and "measuring" not in printed
    assert "timing a training step" not in printed and "as chosen before" in printed
    main(TINY + ["--out", out, "--remeasure"])
    assert "measuring the baseline" in capsys.readouterr().out

    # The folder re-derives without training or timing, identical to its CSVs, and the
    # weights reproduce its exit outputs; a tampered CSV is caught.
    assert main(["--from-results", out, "--verify-outputs", "100"]) is True
    printed = capsys.readouterr().out
    assert "sweep_cpu.csv: identical" in printed and "reproduce the committed exit outputs" in printed
    sweep_csv = os.path.join(out, "sweep_cpu.csv")
    with open(sweep_csv) as f:
        original = f.read()
    with open(sweep_csv, "w") as f:
        f.write(original.replace("0.", "0.0", 1))
    assert main(["--from-results", out]) is False
    assert "sweep_cpu.csv: row 1, column T1: committed" in capsys.readouterr().out

    # Other weights (same name, same settings) make every cache stale: exit outputs and
    # timings are computed again, never reused.
    from branchynet.net import BranchyNet
    from branchynet.training import load_weights, save_weights
    from networks import get_network
    net = load_weights(os.path.join(out, "branchynet.npz"), BranchyNet(get_network("lenet_mnist").build()))
    net.heads[0][-1].b.array[:] += 1.0
    save_weights(os.path.join(out, "branchynet.npz"), net)
    main(TINY + ["--out", out])
    printed = capsys.readouterr().out
    assert "[exit_outputs.npz] made with other weights or inputs: computing it again" in printed
    assert "weights.branchynet" in printed and "measuring the baseline" in printed

    # Other training settings in the same folder are refused with a clear message.
    with pytest.raises(SystemExit) as exit_:
        main(TINY + ["--out", out, "--seed", "1"])
    assert exit_.value.code == 2
    assert "holds a run with other settings (seed" in capsys.readouterr().err


def test_paper_preset_uses_the_authors_settings():
    args = parse_args(["--network", "lenet_mnist", "--paper"])
    assert (args.dataset, args.batch_size, args.baseline_epochs, args.branchy_epochs) == \
        ("mnist", 512, 50, 100)
    assert args.grid[0] == 0.0001 and args.grid[-1] == 10.0 and len(args.grid) == 17
    assert (args.train_limit, args.test_limit) == (0, 0)


@pytest.mark.parametrize("network, quick_limits, paper", [
    ("alexnet_cifar10", (5000, 2000), (512, 50, 100)),
    ("resnet110_cifar10", (1000, 1000), (64, 100, 100)),
])
def test_cifar_presets(network, quick_limits, paper):
    """Quick runs use part of CIFAR-10 (minutes on a CPU); --paper all of it."""
    quick = parse_args(["--network", network])
    assert quick.dataset == "cifar10" and (quick.train_limit, quick.test_limit) == quick_limits
    assert parse_args(["--network", network, "--train-limit", "0"]).train_limit == 0
    full = parse_args(["--network", network, "--paper"])
    assert (full.train_limit, full.test_limit) == (0, 0)
    assert (full.batch_size, full.baseline_epochs, full.branchy_epochs) == paper


# Bad arguments and missing data: tests/test_bad_input.py (one table, every case).


def test_batch_size_one_exits_are_compared_with_the_sweep():
    """Samples that leave elsewhere at batch size 1 are counted, and those scoring within
    float rounding of the threshold are told apart from real disagreements."""
    import numpy as np
    from branchynet.sweep import ExitOutputs
    from experiments.run import compare_with_sweep
    outputs = ExitOutputs(scores=np.array([[0.5, 0.1, 0], [0.9999999, 0.1, 0], [0.2, 2.0, 0]],
                                          np.float32),
                          predictions=np.zeros((3, 3), np.int32), labels=np.zeros(3, np.int32))
    # T = (1, 1): the sweep sends the samples out at exits 0, 0, 0.
    assert compare_with_sweep(outputs, [1.0, 1.0], np.array([0, 0, 0])) == (0, 0)
    # Sample 1 (score 1 - 1e-7 at exit 1) went on to exit 2: borderline.
    assert compare_with_sweep(outputs, [1.0, 1.0], np.array([0, 1, 0])) == (1, 1)
    # Sample 2 (score 0.2) went to the last exit: a real disagreement.
    assert compare_with_sweep(outputs, [1.0, 1.0], np.array([0, 1, 2])) == (2, 1)


def test_the_summary_keeps_the_devices_timed_by_earlier_runs(tmp_path, capsys):
    """A folder timed on one device and later on another (the CPU rows, then a GPU's)
    keeps both in summary.json, which scripts/results_table.py reads; a record made with
    other weights is left out, and said."""
    import shutil
    out = str(tmp_path / "run")
    main(TINY + ["--out", out])
    # The record another device's run leaves (here the CPU's, under the GPU's name).
    shutil.copy(os.path.join(out, "timing_cpu.json"), os.path.join(out, "timing_gpu0.json"))
    summary = main(TINY + ["--out", out])
    assert set(summary["devices"]) == {"cpu", "gpu0"}
    assert [r["time_ms"] for r in summary["devices"]["gpu0"]["rows"]] == [
        r["time_ms"] for r in summary["devices"]["cpu"]["rows"]]
    with open(os.path.join(out, "summary.json")) as f:
        assert set(json.load(f)["devices"]) == {"cpu", "gpu0"}
    with open(os.path.join(out, "timing_gpu0.json")) as f:
        record = json.load(f)
    record["measurement_key"]["weights"]["branchynet"] = "0" * 64
    with open(os.path.join(out, "timing_gpu0.json"), "w") as f:
        json.dump(record, f)
    capsys.readouterr()
    summary = main(TINY + ["--out", out])
    assert set(summary["devices"]) == {"cpu"}
    assert "timing_gpu0.json was made with other weights: not in summary.json" in \
        capsys.readouterr().out
