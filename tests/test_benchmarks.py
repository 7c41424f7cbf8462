"""The benchmark scripts run end to end on tiny settings and write the figures they promise.

Speed is not asserted (these are reported figures, not timed tests); the sweep benchmark's
identity check between the cached sweep and brute force is.
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


@pytest.fixture(scope="module")
def common(data_dir, tmp_path_factory):
    """Arguments every tiny run shares: the data, and one weights cache for the module."""
    cache = str(tmp_path_factory.mktemp("weights"))
    return ["--data-dir", data_dir, "--weights-cache", cache] + TINY_WEIGHTS


def run(module, argv, tmp_path, name):
    out = str(tmp_path / f"{name}.json")
    doc = module.main(argv + ["--out", out])
    with open(out) as f:
        assert json.load(f)["figures"].keys() == doc["figures"].keys()
    assert doc["machine"]["cpu"] and doc["load_at_start"] is not None
    for figure in doc["figures"].values():
        assert "load_before" in figure and "load_after" in figure
    return doc


def test_latency(common, tmp_path, capsys):
    doc = run(latency, common + ["--timing-samples", "8", "--eval-samples", "100",
                                 "--repeats", "1", "--block", "4", "--warmup", "1",
                                 "--profile-samples", "4"], tmp_path, "latency")
    lat = doc["figures"]["latency"]
    for key in ("baseline_ms", "baseline_trunk_ms", "knee_ms", "zero_overhead_limit_ms",
                "routing_overhead", "gain", "zero_overhead_gain", "trunk_only_gain",
                "alone_ms", "cascade_ms", "path_ms", "knee_batched_routing_ms"):
        assert lat[key] is not None, key
    assert len(lat["alone_ms"]) == 2 and sum(lat["exit_fractions_timed"]) == pytest.approx(1)
    assert lat["routing_overhead"] == pytest.approx(lat["knee_ms"] / lat["zero_overhead_limit_ms"] - 1)
    assert lat["fast_path_same_decisions"]
    flops = doc["figures"]["flops"]
    assert flops["path_macs"][-1] == flops["baseline_macs"] and flops["flop_ideal_gain"] >= 1
    framework = doc["figures"]["framework_overhead"]
    assert framework["functions_per_sample"] > 0 and framework["peak_gflops"] > 0
    printed = capsys.readouterr().out
    assert "zero-overhead limit" in printed and "FLOP-ideal gain" in printed


def test_latency_at_a_given_exit_mix(common, tmp_path):
    doc = run(latency, common + ["--timing-samples", "4", "--eval-samples", "100",
                                 "--repeats", "1", "--block", "4", "--warmup", "1",
                                 "--profile-samples", "2", "--routing-samples", "20",
                                 "--exit-mix", "0.5", "0.5"], tmp_path, "latency_mix")
    point = doc["figures"]["knee"]["timed_point"]
    assert point["source"].startswith("--exit-mix") and point["exit_fractions"] == [0.5, 0.5]
    assert doc["figures"]["latency"]["thresholds"] == point["thresholds"]


def test_sweep_cost_identical_to_brute_force(common, tmp_path):
    doc = run(sweep_cost, common + ["--samples", "40", "--path-samples", "4", "--warmup", "1"],
              tmp_path, "sweep")
    brute = doc["figures"]["brute_force"]
    assert brute["points_run"] == brute["grid_points"] == 17 and not brute["extrapolated"]
    assert brute["identical"] and all(p["identical"] for p in brute["points"])
    assert doc["figures"]["speedup"]["speedup"] > 0


def test_sweep_cost_samples_grid_points_and_says_so(common, tmp_path, capsys):
    doc = run(sweep_cost, common + ["--samples", "20", "--path-samples", "2", "--warmup", "1",
                                    "--brute-points", "3"], tmp_path, "sweep_sampled")
    brute = doc["figures"]["brute_force"]
    assert brute["points_run"] == 3 and brute["extrapolated"] and brute["identical"]
    assert brute["brute_force_s"] == pytest.approx(brute["per_point_s"] * 17)
    assert "extrapolated" in capsys.readouterr().out


def test_training_throughput(common, tmp_path):
    doc = run(training_throughput, common + ["--batch-size", "16", "--iterations", "1",
                                             "--warmup", "1"], tmp_path, "training")
    for key in ("baseline", "joint"):
        assert doc["figures"][key]["images_per_s"] > 0
    assert doc["figures"]["joint"]["exits_trained"] == 2


def test_batch_throughput(common, tmp_path):
    doc = run(batch_throughput, common + ["--batch-sizes", "1", "4", "--min-images", "8",
                                          "--eval-samples", "100", "--path-samples", "4",
                                          "--warmup", "1", "--repeats", "1"],
              tmp_path, "batch")
    assert len(doc["figures"]["thresholds"]["thresholds"]) == 1
    for bs in (1, 4):
        figure = doc["figures"][f"batch_{bs}"]
        assert figure["bnet_images_per_s"] > 0 and figure["baseline_images_per_s"] > 0
        assert figure["images"] == 8


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
    for name in ("latency", "sweep_cost", "training_throughput", "batch_throughput"):
        result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", f"{name}.py"),
                                 "--help"], capture_output=True, text=True, cwd="/")
        assert result.returncode == 0 and "--network" in result.stdout, result.stderr
