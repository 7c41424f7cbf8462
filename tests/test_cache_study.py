"""The cache study of the paper's Fig. 6 (experiments.cache_study).

A B-LeNet results folder made here by the runner is measured under callgrind (where
valgrind is installed; otherwise the test is skipped and says why, in CI too); the
committed B-AlexNet study is redrawn from its JSON alone and must give the committed table.
"""
import csv
import os
import shutil
import subprocess

import numpy as np
import pytest

from experiments import cache_study
from experiments.cache_study import main, table_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "results", "fig6-alexnet_cifar10")


def _valgrind():
    if shutil.which("valgrind"):
        return
    where = "in CI, " if os.environ.get("CI") else ""
    pytest.skip(f"{where}valgrind is not installed here, so the cache measurement is not "
                f"tested (Debian/Ubuntu: apt-get install valgrind)")


@pytest.fixture(scope="module")
def lenet_study(data_dir, tmp_path_factory):
    """A B-LeNet folder trained by the runner on 1,500 mnist-5k digits, then measured:
    chainer, this machine's caches, 2 samples, one exit pattern (plus the knee's)."""
    _valgrind()
    from experiments.run import main as run
    base = tmp_path_factory.mktemp("cache")
    folder, out = str(base / "lenet"), str(base / "fig6")
    run(["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "1500",
         "--test-limit", "300", "--baseline-epochs", "1", "--branchy-epochs", "1",
         "--batch-size", "32", "--timing-samples", "20", "--timing-rounds", "1",
         "--no-progress", "--out", folder])
    assert main(["--results", folder, "--runtime", "chainer", "--samples", "2",
                 "--warmup", "1", "--caches", "machine", "--max-points", "1",
                 "--out", out]) == 0
    return folder, out


def test_callgrind_counts_each_job_alone(lenet_study):
    import json
    from branchynet.training import load_weights
    from branchynet.net import BranchyNet
    from networks import get_network
    folder, out = lenet_study
    with open(os.path.join(out, "cache_study.json")) as f:
        doc = json.load(f)
    assert doc["tool"]["name"] == "callgrind"
    machine = doc["tool"]["caches"]["machine"]
    l1d = next(c for c in cache_study.sysfs_caches() if c["level"] == 1 and c["type"] == "Data")
    size, ways, line = cache_study.simulable(l1d["size"], l1d["ways"], l1d["line"])
    assert machine["D1"] == {"size": size, "ways": ways, "line": line}
    (series,) = doc["series"]
    jobs = {name: j["per_sample"] for name, j in series["jobs"].items()}
    # Exit 1 runs the first conv and the branch; the baseline the whole trunk; a sample
    # forced to exit 2 runs the whole trunk and exit 1's branch before it.
    assert (jobs["exit 1 path"]["instructions"] < jobs["baseline"]["instructions"]
            < jobs["exit 2 path"]["instructions"])
    # Each job alone: the repeated baseline counts what the first did (order does not matter).
    assert jobs["baseline (repeated last)"]["instructions"] == pytest.approx(
        jobs["baseline"]["instructions"], rel=0.02)
    for name, f in jobs.items():
        assert 0 <= f["ll_misses"] <= f["d1_misses"] <= f["data_refs"] < f["instructions"], name
    assert series["jobs"]["exit 1 path"]["exits"] == [0, 0]
    assert series["jobs"]["exit 2 path"]["exits"] == [1, 1]
    # From a cold cache the baseline fetches its weights: at least half their 64-byte lines
    # miss in the last level over the 2 samples, far more than in the warm job.
    baseline = BranchyNet(get_network("lenet_mnist").build(), main_only=True)
    load_weights(os.path.join(folder, "baseline.npz"), baseline)
    lines = sum(p.array.nbytes for p in baseline.params()) / 64
    cold = jobs["cold: baseline"]["ll_misses"] * 2
    assert cold > 0.5 * lines
    assert cold > 10 * jobs["baseline"]["ll_misses"] * 2
    # The table recomputes from the JSON alone.
    with open(os.path.join(out, "cache_table.csv")) as f:
        committed = f.read()
    redrawn = os.path.join(out, "redrawn")
    assert main(["--from-results", out, "--out", redrawn]) == 0
    with open(os.path.join(redrawn, "cache_table.csv")) as f:
        assert f.read() == committed


@pytest.mark.skipif(not os.path.isfile(os.path.join(COMMITTED, "cache_study.json")),
                    reason="no committed results/fig6-alexnet_cifar10/cache_study.json")
def test_committed_study_redraws_its_table(tmp_path):
    import json
    with open(os.path.join(COMMITTED, "cache_study.json")) as f:
        doc = json.load(f)
    assert main(["--from-results", COMMITTED, "--out", str(tmp_path)]) == 0
    for name in ("cache_table.csv",):
        with open(os.path.join(COMMITTED, name)) as a, open(tmp_path / name) as b:
            assert a.read() == b.read()
    rows = table_rows(doc)
    per_series = 1 + len(doc["points"])
    assert len(rows) == len(doc["series"]) * per_series
    # Every point of a measured exit pattern is in the table once per series.
    assert len({p["job"] for p in doc["points"]}) == doc["frontier"]["patterns_measured"]
    if doc["frontier"]["patterns_measured"] == doc["frontier"]["patterns"]:
        assert len(doc["points"]) == doc["frontier"]["points"]
    for r in rows:
        assert r["ll_miss_rate_percent"] == pytest.approx(100 * r["ll_misses"] / r["data_refs"])
    # The Chainer runtimes are the results folder's committed batch-size-1 times.
    with open(os.path.join(REPO, doc["results"], "sweep_cpu.csv")) as f:
        sweep = {f"T={float(r['T1']):g},{float(r['T2']):g}": r for r in csv.DictReader(f)}
    for r in rows:
        if r["runtime"] == "chainer" and r["thresholds"] is not None:
            s = sweep[r["point"]]
            want = float(s["measured_ms"] or s["predicted_ms"])
            assert r["runtime_ms"] == pytest.approx(want)
    knee = next(p for p in doc["points"] if p["knee"])
    assert knee["thresholds"] == [0.5, 0.5]


@pytest.mark.skipif(not os.path.isfile(os.path.join(COMMITTED, "cache_study.json")),
                    reason="no committed results/fig6-alexnet_cifar10/cache_study.json")
def test_onnx_runtimes_come_from_the_deploy_record_of_the_same_weights(tmp_path, capsys):
    import json
    deploy = os.path.join(REPO, "results", "deploy-alexnet_cifar10-converged")
    with open(os.path.join(deploy, "deploy_cpu.json")) as f:
        ort = json.load(f)["summary"]["runtimes"]["ort"]
    assert main(["--from-results", COMMITTED, "--out", str(tmp_path),
                 "--deploy-results", deploy]) == 0
    with open(tmp_path / "cache_study.json") as f:
        doc = json.load(f)
    ms = doc["runtimes"]["onnx"]["ms"]
    assert ms["baseline"]["ms"] == ort["baseline"]["median_ms"]
    assert {n: v["ms"] for n, v in ms.items() if n != "baseline"} == {
        n: e["stats"]["median_ms"] for n, e in ort["frontier"].items()}
    assert doc["onnx_runtimes_from"]["deploy_record"].endswith("deploy_cpu.json")
    for r in table_rows(doc):
        if r["runtime"] == "onnx" and r["point"] in ms:
            assert r["runtime_ms"] == ms[r["point"]]["ms"]
    # The committed study already carries the committed record's times.
    with open(os.path.join(COMMITTED, "cache_study.json")) as f:
        committed = json.load(f)["runtimes"]["onnx"]["ms"]
    assert {n: v["ms"] for n, v in committed.items()} == {n: v["ms"] for n, v in ms.items()}
    # Another network's record is refused, naming why.
    other = os.path.join(REPO, "results", "deploy-lenet_mnist-paper")
    assert main(["--from-results", COMMITTED, "--out", str(tmp_path / "x"),
                 "--deploy-results", other]) == 2
    assert "is not the measured folder's weights" in capsys.readouterr().err


def test_bad_input_is_refused_before_work(tmp_path, capsys):
    assert main(["--results", str(tmp_path / "nothing")]) == 2
    assert "not a results folder" in capsys.readouterr().err
    assert main(["--from-results", str(tmp_path)]) == 2
    assert "cache_study.json does not exist" in capsys.readouterr().err


def test_perf_is_chosen_only_with_hardware_counters():
    counters, why = cache_study.perf_counters()
    if counters:
        assert cache_study.choose_tool("auto") == ("perf", "hardware counters")
    else:
        assert why
        with pytest.raises(cache_study.UsageError, match="--tool perf"):
            cache_study.choose_tool("perf")


def test_points_sharing_exits_share_a_job():
    points = [{"name": n} for n in "abcd"]
    exits = np.array([[0, 1], [0, 1], [1, 1], [0, 1]])
    groups = cache_study.group_points(points, exits)
    assert [(p, [q["name"] for q in qs]) for p, qs in groups] == [((0, 1), ["a", "b", "d"]),
                                                                  ((1, 1), ["c"])]


@pytest.mark.parametrize("cache, simulated", [
    ((49152, 12, 64), (49152, 12, 64)),              # 64 sets: as it is
    ((503316480, 16, 64), (503316480, 30, 64)),      # 480 MiB L3, 491,520 sets
    ((12 * 2 ** 20, 16, 64), (12 * 2 ** 20, 24, 64)),  # 12,288 sets (Core iX)
    ((5 * 2 ** 20, 48, 64), (4194304 * 5 // 4, 80, 64)),  # 1,706.7 sets (AMD)
])
def test_caches_are_made_simulable_and_callgrind_takes_them(cache, simulated):
    """Callgrind refuses a set count that is not a power of two ("Bad option: --LL"),
    which a 2-core Intel Xeon with a 480 MiB L3 reports: such a cache is simulated with
    power-of-two sets and more ways, about the same size."""
    assert cache_study.simulable(*cache) == simulated
    _valgrind()
    config = {"I1": (32768, 8, 64), "D1": (32768, 8, 64), "LL": simulated}
    done = subprocess.run(["valgrind"] + cache_study.callgrind_options(config)
                          + ["--callgrind-out-file=/dev/null", "true"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    machine = cache_study.machine_caches(cache_study.sysfs_caches())
    done = subprocess.run(["valgrind"] + cache_study.callgrind_options(machine)
                          + ["--callgrind-out-file=/dev/null", "true"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
