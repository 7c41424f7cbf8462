"""The benchmark scripts run end to end on tiny settings and write figures that are what they
say they are.

Speed is not asserted (these are reported figures, not timed tests). What is asserted holds
by construction of the measurement, so each check fails for a real defect: every latency
comes from ``branchynet.timing.interleave`` with --timing-rounds rounds of every variant;
a reported figure is the median of the per-round values stored in the JSON, a gain the
median of the per-round paired ratios with their [min, max] as interval; derived limits
are the fraction-weighted sums of the stored exit-path rounds; figures agree across the
JSON (exit fractions, the plain forward, the knee's profile); the cached sweep and brute
force give identical results.
"""
import json
import os
import sys

import branchynet  # noqa: F401
import numpy as np
import pytest

import branchynet.routing as routing

# benchmarks/ is not an installed package: import it from the repository.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from benchmarks import batch_throughput, latency, sweep_cost, training_throughput  # noqa: E402

TINY_WEIGHTS = ["--train-limit", "256", "--epochs", "1", "--train-batch-size", "32"]
ROUNDS = 3
MODULES = (latency, sweep_cost, training_throughput, batch_throughput)


@pytest.fixture(scope="module")
def common(data_dir, tmp_path_factory):
    """Arguments every tiny run shares: the data, one weights cache, the rounds."""
    cache = str(tmp_path_factory.mktemp("weights"))
    return (["--data-dir", data_dir, "--weights-cache", cache, "--timing-rounds", str(ROUNDS)]
            + TINY_WEIGHTS)


def run(module, argv, tmp_path, name):
    out = str(tmp_path / f"{name}.json")
    doc = module.main(argv + ["--out", out])
    with open(out) as f:
        assert json.load(f)["figures"].keys() == doc["figures"].keys()
    assert doc["machine"]["cpu"] and len(doc["load_at_start"]) == 3
    assert doc["threads"]["environment"].get("OPENBLAS_NUM_THREADS") == \
        os.environ.get("OPENBLAS_NUM_THREADS")
    for figure in doc["figures"].values():
        assert len(figure["load_before"]) == 3 and len(figure["load_after"]) == 3
    return doc


def check_timing(timing, samples, names=None):
    """A stored ``Interleaved``: --timing-rounds per-round means of every variant."""
    assert timing["rounds"] == ROUNDS and timing["samples"] == samples
    assert all(len(v) == ROUNDS for v in timing["rounds_ms"].values())
    if names is not None:
        assert set(timing["rounds_ms"]) == set(names)
    return {k: np.asarray(v) for k, v in timing["rounds_ms"].items()}


def check_stats(stats, per_round, key="median_ms"):
    """Median and quartiles of the stored per-round values, in order."""
    suffix = key[len("median"):]
    assert stats[key] == pytest.approx(np.median(per_round), rel=1e-12)
    assert (stats["min" + suffix] <= stats["q1" + suffix] <= stats[key]
            <= stats["q3" + suffix] <= stats["max" + suffix])
    assert stats["min" + suffix] == pytest.approx(np.min(per_round), rel=1e-12)


def check_ratio(r, numerator, denominator, shift=0.0):
    """A paired gain: median and [min, max] of the per-round ratios, moved by ``shift``
    (-1: an overhead); significant exactly when the ratios' interval excludes 1."""
    per_round = np.asarray(numerator) / np.asarray(denominator)
    assert r["median"] - shift == pytest.approx(np.median(per_round), rel=1e-12)
    assert r["low"] - shift == pytest.approx(per_round.min(), rel=1e-12)
    assert r["high"] - shift == pytest.approx(per_round.max(), rel=1e-12)
    assert r["low"] <= r["median"] <= r["high"]
    assert r["significant"] == bool(per_round.min() > 1 or per_round.max() < 1)


def weighted(rounds, names, fractions):
    return sum(f * rounds[name] for name, f in zip(names, fractions))


def test_every_benchmark_times_five_rounds_by_default():
    for module in MODULES:
        assert module.parse_args([]).timing_rounds == 5


def test_latency(common, tmp_path, capsys):
    doc = run(latency, common + ["--timing-samples", "8", "--eval-samples", "100", "--block", "4",
                                 "--warmup", "1", "--profile-samples", "4",
                                 "--routing-samples", "20"], tmp_path, "latency")
    knee, lat = doc["figures"]["knee"], doc["figures"]["latency"]
    paths, alone = ["exit1", "exit2"], ["exit1_alone", "exit2_alone"]
    r = check_timing(lat["timing"], 8, ["baseline", "baseline_trunk", "knee",
                                        "knee_batched_routing", "baseline_plain",
                                        "baseline_plain_type_check_off", "exit2_cascade"]
                     + paths + alone + [p + "_trunk" for p in paths])
    for name, stats in lat["stats"].items():
        check_stats(stats, r[name])
    assert lat["baseline_ms"] == lat["stats"]["baseline"]["median_ms"]
    assert lat["path_ms"] == [lat["stats"][p]["median_ms"] for p in paths]

    # The knee is the runner's, from an exit-path profile interleaved the same way.
    profile = check_timing(knee["profile"], 8)
    assert knee["path_ms"] == pytest.approx([np.median(profile[p]) for p in paths], rel=1e-12)
    assert knee["predicted_ms"] == pytest.approx(np.dot(knee["exit_fractions"], knee["path_ms"]))
    assert knee["thresholds"] in knee["frontier_thresholds"]
    assert lat["thresholds"] == knee["thresholds"] and knee["eval_samples"] == 100

    counts = np.asarray(lat["exit_counts_timed"])
    fractions = counts / 8
    assert counts.sum() == 8 and lat["exit_fractions_timed"] == pytest.approx(fractions)
    assert lat["other_exit_than_sweep"] == lat["other_exit_borderline"]
    assert lat["fast_path_same_decisions"]

    limit = weighted(r, alone, fractions)
    cascade = weighted(r, ["exit1_alone", "exit2_cascade"], fractions)
    trunk = weighted(r, [p + "_trunk" for p in paths], fractions)
    assert lat["zero_overhead_limit_ms"] == pytest.approx(np.median(limit), rel=1e-12)
    assert lat["cascade_limit_ms"] == pytest.approx(np.median(cascade), rel=1e-12)
    assert lat["trunk_only_knee_ms"] == pytest.approx(np.median(trunk), rel=1e-12)
    check_ratio(lat["gain"], r["baseline"], r["knee"])
    check_ratio(lat["zero_overhead_gain"], r["baseline"], limit)
    check_ratio(lat["trunk_only_gain"], r["baseline_trunk"], trunk)
    check_ratio(lat["routing_overhead"], r["knee"], limit, shift=-1)
    check_ratio(lat["earlier_heads_overhead"], cascade, limit, shift=-1)
    check_ratio(lat["decision_overhead"], r["knee"], cascade, shift=-1)
    check_ratio(lat["checks"]["vs_prediction"], r["knee"], weighted(r, paths, fractions))
    saving = 1e3 * (r["knee_batched_routing"] - r["knee"])
    assert lat["fast_path_saving_us"]["median"] == pytest.approx(np.median(saving), rel=1e-12)

    flops = doc["figures"]["flops"]
    assert flops["exit_fractions"] == pytest.approx(fractions)
    assert flops["expected_macs"] == pytest.approx(np.dot(fractions, flops["path_macs"]))
    assert flops["path_macs"][-1] == flops["baseline_macs"]
    assert 1 <= flops["flop_gain_with_earlier_heads"] <= flops["flop_ideal_gain"]
    framework = doc["figures"]["framework_overhead"]
    assert framework["forward_ms"] == lat["stats"]["baseline_plain"]["median_ms"]
    assert framework["functions_per_sample"] == 12  # LeNet: 12 Chainer function calls
    code = doc["figures"]["routing_code"]
    stub = check_timing(code["timing"], 20)
    assert code["fast_path_us"] == pytest.approx([1e3 * np.median(stub[f"fast{n}"])
                                                  for n in range(2)], rel=1e-12)
    printed = capsys.readouterr().out
    assert "zero-overhead limit" in printed and "FLOP-ideal gain" in printed
    assert f"(gain {lat['gain']['median']:.2f}x [{lat['gain']['low']:.2f}, " in printed
    assert f"median of {ROUNDS} interleaved rounds" in printed


def test_latency_at_a_given_exit_mix(common, tmp_path):
    doc = run(latency, common + ["--timing-samples", "4", "--eval-samples", "100", "--block", "4",
                                 "--warmup", "1", "--profile-samples", "2",
                                 "--routing-samples", "20", "--exit-mix", "0.5", "0.5"],
              tmp_path, "latency_mix")
    point = doc["figures"]["knee"]["timed_point"]
    assert point["source"].startswith("--exit-mix") and point["exit_fractions"] == [0.5, 0.5]
    assert doc["figures"]["latency"]["thresholds"] == point["thresholds"]
    assert doc["figures"]["latency"]["timed_point"] == point["source"]


def test_latency_with_a_results_folder_takes_its_weights_and_knee(common, tmp_path):
    """A results folder's weights, exit outputs and timing record are used as they are: the
    knee is ``Experiment.select`` on the folder's profile."""
    from experiments.experiment import SELECTION_KEYS, Experiment
    from branchynet.io import write_json
    tiny = ["--timing-samples", "4", "--eval-samples", "100", "--block", "4", "--warmup", "1",
            "--profile-samples", "2", "--routing-samples", "10"]
    quick = run(latency, common + tiny, tmp_path, "quick")
    folder = quick["weights"]["cache"]
    settings = {k: getattr(Experiment.from_results(folder).s, k) for k in SELECTION_KEYS}
    write_json(os.path.join(folder, "timing_cpu.json"),
               {"settings": {**settings, "grid": list(settings["grid"])},
                "profile": quick["figures"]["knee"]["profile"], "machine": quick["machine"]})
    try:
        doc = run(latency, common + tiny + ["--results", folder], tmp_path, "from_results")
    finally:
        os.remove(os.path.join(folder, "timing_cpu.json"))
    assert doc["weights"]["source"] == "results folder"
    assert doc["weights"]["sha256"] == quick["weights"]["sha256"]
    knee, quick_knee = doc["figures"]["knee"], quick["figures"]["knee"]
    assert knee["path_ms_source"].startswith("results folder (timing_cpu.json")
    assert knee["profile"] == quick_knee["profile"]
    for key in ("thresholds", "path_ms", "predicted_ms", "frontier_thresholds"):
        assert knee[key] == quick_knee[key], key


def check_brute_force(doc, samples, points_run):
    """Brute force is identical to the cached sweep, and its time is the sum of the stored
    per-sample latencies (extrapolated to the grid when sampled)."""
    brute, cached = doc["figures"]["brute_force"], doc["figures"]["cached_sweep"]
    assert brute["points_run"] == len(brute["points"]) == points_run
    assert brute["grid_points"] == 17 and brute["extrapolated"] == (points_run < 17)
    assert brute["identical"]
    for point in brute["points"]:
        assert point["identical"] and point["exit_counts"] == point["sweep_exit_counts"]
        assert point["accuracy"] == point["sweep_accuracy"] and sum(point["exit_counts"]) == samples
    r = check_timing(brute["timing"], samples)
    assert len(r) == points_run
    for name, point in zip(r, brute["points"]):
        check_stats(point["ms_per_sample"], r[name])
    per_round = sum(r.values()) * samples / 1e3 * 17 / points_run
    check_stats(brute["brute_force_s"], per_round, key="median")
    cached_s = np.add(cached["per_round"]["collect_exit_outputs_s"],
                      cached["per_round"]["evaluate_grid_s"])
    check_stats(cached["cached_sweep_s"], cached_s, key="median")
    check_ratio(doc["figures"]["speedup"]["speedup"], per_round, cached_s)
    paths = doc["figures"]["exit_path_timing"]
    p = check_timing(paths["timing"], int(doc["settings"]["path_samples"]), ["exit1", "exit2"])
    assert paths["path_ms"] == pytest.approx([np.median(p["exit1"]), np.median(p["exit2"])])
    check_ratio(doc["figures"]["speedup"]["speedup_with_path_timing"], per_round,
                cached_s + (p["exit1"] + p["exit2"]) * paths["samples"] / 1e3)


def test_sweep_cost_identical_to_brute_force(common, tmp_path):
    doc = run(sweep_cost, common + ["--samples", "20", "--path-samples", "4", "--warmup", "1"],
              tmp_path, "sweep")
    check_brute_force(doc, 20, 17)


def test_sweep_cost_samples_grid_points_and_says_so(common, tmp_path, capsys):
    doc = run(sweep_cost, common + ["--samples", "20", "--path-samples", "2", "--warmup", "1",
                                    "--brute-points", "3"], tmp_path, "sweep_sampled")
    check_brute_force(doc, 20, 3)
    assert "extrapolated" in capsys.readouterr().out


def test_training_throughput(common, tmp_path):
    doc = run(training_throughput, common + ["--batch-size", "16", "--iterations", "2",
                                             "--warmup", "1"], tmp_path, "training")
    r = check_timing(doc["figures"]["timing"]["timing"], 2, ["baseline", "joint"])
    for key in ("baseline", "joint"):
        check_stats(doc["figures"][key]["images_per_s"], 16e3 / r[key], key="median")
    assert doc["figures"]["joint"]["exits_trained"] == 2
    check_ratio(doc["figures"]["ratio"]["joint_over_baseline_time"], r["joint"], r["baseline"])
    assert doc["fast_cpu_kernels"] is True
    assert doc["figures"]["timing"]["fast_cpu_kernels"] == {"baseline": True, "joint": True}
    assert "speedup" not in doc["figures"]


def test_training_throughput_against_stock_chainer(common, tmp_path):
    """--compare-stock: both networks also on Chainer's kernels, in the same rounds."""
    from branchynet import cpu_kernels
    before = dict(cpu_kernels.calls)
    doc = run(training_throughput, common + ["--batch-size", "8", "--iterations", "1",
                                             "--warmup", "1", "--compare-stock",
                                             "--latency-samples", "4"],
              tmp_path, "training_stock")
    names = ["baseline", "joint", "baseline_stock", "joint_stock"]
    r = check_timing(doc["figures"]["timing"]["timing"], 1, names)
    assert doc["figures"]["timing"]["fast_cpu_kernels"] == {
        "baseline": True, "joint": True, "baseline_stock": False, "joint_stock": False}
    for key in names:
        check_stats(doc["figures"][key]["images_per_s"], 8e3 / r[key], key="median")
    for key in ("baseline", "joint"):
        check_ratio(doc["figures"]["speedup"][f"{key}_stock_over_fast_time"],
                    r[f"{key}_stock"], r[key])
    latency = doc["figures"]["latency_batch1"]
    r = check_timing(latency["timing"], 4, ["baseline", "bnet", "baseline_stock", "bnet_stock"])
    for key in ("baseline", "bnet"):
        check_stats(latency[f"{key}_ms"], r[key])
        check_ratio(latency[f"{key}_stock_over_fast_time"], r[f"{key}_stock"], r[key])
    assert cpu_kernels.calls["conv"] > before["conv"] and cpu_kernels.is_enabled()


def test_training_throughput_against_the_previous_default(common, tmp_path):
    """--compare-previous: both networks also on the cpu_kernels 'conv' group alone, in the
    same rounds, with wall and CPU-time speed-ups; the two comparisons are separate runs."""
    from branchynet import cpu_kernels
    before = dict(cpu_kernels.calls)
    doc = run(training_throughput, common + ["--batch-size", "8", "--iterations", "1",
                                             "--warmup", "1", "--compare-previous"],
              tmp_path, "training_previous")
    names = ["baseline", "joint", "baseline_previous", "joint_previous"]
    r = check_timing(doc["figures"]["timing"]["timing"], 1, names)
    previous = {"conv": True, "fused": False}
    assert doc["figures"]["timing"]["fast_cpu_kernels"] == {
        "baseline": True, "joint": True, "baseline_previous": previous,
        "joint_previous": previous}
    for key in ("baseline", "joint"):
        check_ratio(doc["figures"]["speedup"][f"{key}_previous_over_new_time"],
                    r[f"{key}_previous"], r[key])
    cpu = doc["figures"]["cpu_time"]
    assert cpu["calls_per_round"] == 2  # the block's untimed opening call and the timed one
    rounds = {k: np.asarray(v) for k, v in cpu["rounds_cpu_s"].items()}
    assert set(rounds) == set(names) and all(len(v) == ROUNDS for v in rounds.values())
    for key in names:
        check_stats(cpu[f"{key}_cpu_s"], rounds[key], key="median")
    for key in ("baseline", "joint"):
        check_ratio(cpu[f"{key}_previous_over_new_cpu_time"], rounds[f"{key}_previous"],
                    rounds[key])
    assert "latency_batch1" not in doc["figures"]
    assert cpu_kernels.calls["conv"] > before["conv"] and cpu_kernels.enabled_groups() == (
        "conv", "fused")
    with pytest.raises(SystemExit):
        training_throughput.parse_args(common + ["--compare-previous", "--compare-stock"])


def test_batch_throughput(common, tmp_path):
    doc = run(batch_throughput, common + ["--batch-sizes", "1", "4", "--min-images", "8",
                                          "--eval-samples", "100", "--path-samples", "4",
                                          "--warmup", "1"], tmp_path, "batch")
    thresholds = doc["figures"]["thresholds"]
    assert thresholds["source"] == "knee" and len(thresholds["thresholds"]) == 1
    for bs in (1, 4):
        figure = doc["figures"][f"batch_{bs}"]
        assert figure["images"] == figure["batches"] * bs == 8
        r = check_timing(figure["timing"], figure["batches"], ["baseline", "bnet"])
        check_stats(figure["baseline_images_per_s"], bs * 1e3 / r["baseline"], key="median")
        check_stats(figure["bnet_images_per_s"], bs * 1e3 / r["bnet"], key="median")
        check_ratio(figure["speedup"], r["baseline"], r["bnet"])
    # The same 8 images with the same thresholds: the batch size does not change an exit.
    assert doc["figures"]["batch_1"]["exit_counts"] == doc["figures"]["batch_4"]["exit_counts"]
    assert sum(doc["figures"]["batch_1"]["exit_counts"]) == 8


@pytest.mark.parametrize("thresholds", [[0.0], [0.05], [0.5], [np.inf]])
def test_batch_size_one_fast_path_makes_the_batched_loops_decisions(lenet_pair, mnist,
                                                                    thresholds, monkeypatch):
    _, branchy = lenet_pair
    x = mnist.test_x[:150]
    fast = [branchy.predict(x[i:i + 1], thresholds) for i in range(len(x))]
    monkeypatch.setattr(routing, "SINGLE_SAMPLE_FAST_PATH", False)
    slow = [branchy.predict(x[i:i + 1], thresholds) for i in range(len(x))]
    for (fl, fe), (sl, se) in zip(fast, slow):
        assert fl.dtype == sl.dtype and fe.dtype == se.dtype
        np.testing.assert_array_equal(fl, sl)
        np.testing.assert_array_equal(fe, se)


def test_benchmarks_run_as_files():
    import subprocess
    files = [os.path.join(REPO, "benchmarks", f"{m.__name__.split('.')[-1]}.py") for m in MODULES]
    runs = [subprocess.Popen([sys.executable, path, "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd="/") for path in files]
    for process in runs:
        out, err = process.communicate()
        assert process.returncode == 0 and "--timing-rounds" in out, err


def test_curve_cost(common, tmp_path):
    from benchmarks import curve_cost
    doc = run(curve_cost, common + ["--batch-size", "16", "--iterations", "2", "--warmup", "1",
                                    "--eval-samples", "50", "--epoch-images", "1000",
                                    "--test-images", "200"], tmp_path, "curve")
    r = check_timing(doc["figures"]["timing"]["timing"], 2, ["baseline", "joint", "evaluation"])
    per_image = {"evaluation": r["evaluation"] / 1e3 / 50, "joint": r["joint"] / 1e3 / 16}
    check_stats(doc["figures"]["timing"]["seconds_per_image"]["evaluation"],
                per_image["evaluation"], key="median")
    share = 200 * per_image["evaluation"] / (1000 * per_image["joint"])
    check_stats(doc["figures"]["joint_epoch_share"]["evaluation_over_epoch"], share, key="median")
