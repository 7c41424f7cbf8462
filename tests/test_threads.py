"""BLAS threads: the project sets them for every loaded BLAS library, whatever the
environment says (one per library for batch-size-1 timing, the measured choice for
training), and records them with every timing."""
import json
import os
import subprocess
import sys

import branchynet  # noqa: F401
import chainer
import numpy as np
import pytest

from branchynet import threads
from branchynet.net import BranchyNet
from branchynet.provenance import machine_key
from branchynet.timing import measure_latency
from networks import get_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def counts():
    return [p["num_threads"] for p in threads.blas_info()]


def test_numpys_blas_is_visible_and_every_library_follows_the_context():
    info = threads.blas_info()
    assert any(p["package"] == "numpy" for p in info), info  # else nothing would be set
    before = counts()
    with threads.blas_threads(2):
        assert counts() == [2] * len(info)
    with threads.timing_threads():
        assert counts() == [threads.TIMING_THREADS] * len(info) == [1] * len(info)
    assert counts() == before


def test_timing_runs_with_one_thread_and_records_it_whatever_was_set_before():
    np.random.seed(0)
    spec = get_network("lenet_mnist")
    branchy, baseline = BranchyNet(spec.build()), BranchyNet(spec.build(), main_only=True)
    x = np.random.RandomState(0).rand(3, 1, 28, 28).astype(np.float32)
    with threads.blas_threads(2):
        timings, _ = measure_latency(branchy, baseline, x, chainer.get_device("@numpy"),
                                     rounds=1, block=3)
        assert counts() == [2] * len(counts())  # restored after the timing
        key = machine_key(chainer.get_device("@numpy"))
    assert [p["num_threads"] for p in timings.blas] == [1] * len(counts())
    assert timings.to_json()["blas"] == timings.blas
    assert [p["num_threads"] for p in key["blas"]] == [1] * len(counts())


def test_an_environment_variable_does_not_change_what_timing_runs_with():
    """OPENBLAS_NUM_THREADS=2 in a fresh process: timing still sees 1 thread per library,
    and the timing key says so."""
    code = ("import branchynet, chainer, json; from branchynet import threads; "
            "from branchynet.provenance import machine_key; "
            "print(json.dumps([threads.blas_info(), threads.timing_blas(), "
            "machine_key(chainer.get_device('@numpy'))['blas']]))")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    ambient, timing, key = json.loads(out.splitlines()[-1])
    assert {p["num_threads"] for p in ambient} == {2}
    assert {p["num_threads"] for p in timing} == {p["num_threads"] for p in key} == {1}


class FakeClock:
    """A clock that a step advances by a duration that depends on the BLAS threads set."""

    def __init__(self, ms_per_threads):
        self.now, self.ms = 0.0, ms_per_threads

    def __call__(self):
        return self.now

    def step(self):
        self.now += self.ms[counts()[0]] / 1e3


@pytest.mark.parametrize("ms, chosen", [({1: 10.0, 2: 5.0}, 2),    # clearly faster: kept
                                        ({1: 10.0, 2: 9.7}, 1),    # within the margin: 1
                                        ({1: 10.0, 2: 20.0}, 1)])  # slower: 1
def test_fastest_threads_keeps_one_thread_unless_more_are_clearly_faster(ms, chosen):
    clock = FakeClock(ms)
    threads_, record = threads.fastest_threads(clock.step, [1, 2], steps=3, clock=clock)
    assert threads_ == chosen == record["threads"]
    assert record["median_ms"] == {"1": pytest.approx(ms[1]), "2": pytest.approx(ms[2])}
    assert [len(v) for v in record["step_ms"].values()] == [3, 3]


def test_fastest_threads_stops_at_its_budget_after_one_call_each():
    clock = FakeClock({1: 3000.0, 2: 3000.0})
    _, record = threads.fastest_threads(clock.step, [1, 2], steps=3, budget_s=2.0, clock=clock)
    assert [len(v) for v in record["step_ms"].values()] == [1, 1]


def test_training_threads_given_auto_without_a_step_and_reused():
    before = counts()
    try:
        lines = []
        given = threads.training_threads(2, log=lines.append)
        assert counts() == [2] * len(before)
        assert given["training_threads"] == 2 and given["how"] == "--blas-threads"
        assert given["timing_threads"] == 1 and "1 for batch-size-1 timing" in lines[-1]
        gpu = threads.training_threads("auto", None, "training on a GPU", log=lines.append)
        assert counts() == [1] * len(before) and gpu["how"] == "auto: " + (
            "one core" if threads.cores() == 1 else "training on a GPU")
        # An earlier auto choice on this machine is reused without measuring.
        earlier = dict(gpu, training_threads=2, how="auto: measured before")
        reused = threads.training_threads("auto", lambda: pytest.fail("measured again"),
                                          previous=earlier, log=lines.append)
        assert reused is earlier and counts() == [2] * len(before)
        assert "as chosen before on this machine" in lines[-1]
    finally:
        threads.set_blas_threads(before[0])


def test_thread_count_and_describe():
    one = [{"internal_api": "openblas", "version": "0.3.30", "package": "scipy", "num_threads": 1}]
    two = one + [{"internal_api": "openblas", "version": "0.3.31", "package": "numpy",
                  "num_threads": 2}]
    assert threads.thread_count(one) == "1 BLAS thread"
    assert threads.thread_count(two) == "1/2 BLAS threads"
    assert threads.describe(one) == "openblas 0.3.30 (scipy): 1 BLAS thread"
    assert threads.describe([dict(p, num_threads=1) for p in two]).endswith(
        "openblas 0.3.31 (numpy): 1 BLAS thread each")


def test_speed_reference_prints_its_three_figures_on_one_thread(capsys):
    from experiments import speedref
    ref, seconds = speedref.main([])
    line = capsys.readouterr().out
    assert "sum(range(10000))" in line and "GFLOP/s" in line and "ms per sample" in line
    assert all(np.isfinite(ref[k]) and ref[k] > 0 for k in ("python_us", "gemm_gflops", "lenet_ms"))
    assert {p["num_threads"] for p in ref["blas"]} == {1}
