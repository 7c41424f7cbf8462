"""Data-parallel training with ChainerMN: 2 processes on the CPU under ``mpiexec``.

Each test launches ``mpiexec -n 2`` in a subprocess (communicator ``naive``). Without
mpiexec and mpi4py (the ``distributed`` extra) they skip, except in CI (``$CI`` set), where
they fail: CI installs the extra (``./dev.sh setup`` does).
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "mpi_worker.py")
SAMPLES, BATCH, EPOCHS, RANKS = 256, 16, 2, 2  # 8 steps of 2 x 16 per epoch
TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "640",
        "--test-limit", "200", "--baseline-epochs", "1", "--branchy-epochs", "1",
        "--batch-size", "16", "--timing-samples", "40", "--timing-rounds", "3",
        "--no-progress"]


def _mpiexec():
    """The mpiexec beside this Python (the MPICH wheel), else on PATH; None without mpi4py."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def mpiexec():
    path = _mpiexec()
    if path is None:
        message = ("no mpiexec with mpi4py: install the distributed extra "
                   "(./dev.sh setup-distributed)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def launch(mpiexec, ranks, args, timeout=120):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([mpiexec, "-n", str(ranks), sys.executable] + args, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(mpiexec, tmp_path_factory):
    """B-LeNet trained by 2 ranks (BATCH each) on the first SAMPLES mnist-5k images."""
    out = str(tmp_path_factory.mktemp("mn"))
    done = launch(mpiexec, RANKS, [WORKER, out, str(SAMPLES), str(BATCH), str(EPOCHS)])
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _reference(skip_first_step=False):
    """One process, batch 2 x BATCH, the same initialisation and the same samples in every
    step as the 2-rank run: scatter_dataset's seeded permutation split in two shards, and
    each rank's iterator order (ShuffleOrderSampler with RandomState(seed), the same on
    both ranks); step t takes each shard's t-th batch."""
    import branchynet  # noqa: F401
    from chainer import optimizers
    from branchynet.datasets import load_dataset
    from branchynet.net import BranchyNet, JointLoss
    from networks import get_network
    data = load_dataset("mnist-5k", seed=0)
    x, y = data.train_x[:SAMPLES], data.train_y[:SAMPLES]
    shards = np.split(np.random.RandomState(0).permutation(SAMPLES), RANKS)
    np.random.seed(0)
    net = BranchyNet(get_network("lenet_mnist").build())
    model = JointLoss(net)
    optimizer = optimizers.Adam(alpha=0.001)
    optimizer.setup(model)
    order_rng = np.random.RandomState(0)
    step = 0
    for _ in range(EPOCHS):
        order = order_rng.permutation(SAMPLES // RANKS)
        for t in range(SAMPLES // RANKS // BATCH):
            index = np.concatenate([s[order[t * BATCH:(t + 1) * BATCH]] for s in shards])
            if not (skip_first_step and step == 0):
                optimizer.update(model, x[index], y[index])
            step += 1
    return {name.lstrip("/"): p.array for name, p in net.namedparams()}


def test_ranks_hold_bit_identical_parameters(trained):
    rank0, rank1 = _params(f"{trained}/rank0.npz"), _params(f"{trained}/rank1.npz")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert np.array_equal(rank0[name], rank1[name]), name
    # Only rank 0 wrote the run's files, and recorded the global batch.
    assert sorted(os.listdir(f"{trained}/train")) == ["distributed.json", "log",
                                                      f"snapshot_epoch_{EPOCHS}"]
    record = json.load(open(f"{trained}/train/distributed.json"))
    assert record["ranks"] == 2 and record["global_batch_size"] == 2 * BATCH


def test_two_ranks_equal_one_process_with_twice_the_batch(trained):
    """2 ranks x batch b == 1 process x batch 2b, same init and sample order (float32
    tolerance: the mean over 2b samples is summed in another order). The check can fail:
    ChainerMN's own first step only broadcasts; without our pre-broadcast the result would
    be the reference that skips step 1, which is far outside the tolerance."""
    got = _params(f"{trained}/rank0.npz")
    expected = _reference()
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
    skipped = _reference(skip_first_step=True)
    assert max(np.abs(got[n] - skipped[n]).max() for n in got) > 1e-4


def test_resume_needs_the_same_number_of_ranks(trained, mpiexec, tmp_path):
    import branchynet  # noqa: F401
    import chainer
    from branchynet.distributed import DistributedError
    from branchynet.net import BranchyNet
    from branchynet.training import train
    from networks import get_network
    out = str(tmp_path / "mn")
    shutil.copytree(trained, out)
    x = np.zeros((SAMPLES, 1, 28, 28), np.float32)
    y = np.zeros(SAMPLES, np.int32)
    with pytest.raises(DistributedError, match="with 2 process.*this run has 1.*mpiexec -n 2"):
        train(BranchyNet(get_network("lenet_mnist").build()), x, y, EPOCHS + 1, BATCH,
              f"{out}/train", chainer.get_device("@numpy"), progress=False)
    # The same 2 ranks resume from the snapshot: one more epoch, still identical.
    done = launch(mpiexec, RANKS, [WORKER, out, str(SAMPLES), str(BATCH), str(EPOCHS + 1)])
    assert done.returncode == 0, done.stdout + done.stderr
    log = json.load(open(f"{out}/train/log"))
    assert [entry["epoch"] for entry in log] == list(range(1, EPOCHS + 2))
    rank0, rank1 = _params(f"{out}/rank0.npz"), _params(f"{out}/rank1.npz")
    assert all(np.array_equal(rank0[n], rank1[n]) for n in rank0)


def test_collective_time_budget_stops_every_rank_at_one_iteration(trained, mpiexec, tmp_path):
    """Rank 0's clock ends the budget after 4 of 8 steps of epoch 1; rank 1's own clock
    would have ended it at once (a rank deciding alone would leave the other waiting in
    the all-reduce, and the launch would time out). One snapshot, by rank 0; the same
    command without a budget then ends with the weights of the uninterrupted run."""
    out = str(tmp_path / "mn")
    done = launch(mpiexec, RANKS, [WORKER, out, str(SAMPLES), str(BATCH), str(EPOCHS), "5"])
    assert done.returncode == 3, done.stdout + done.stderr
    stops = [json.load(open(f"{out}/rank{r}.json")) for r in range(RANKS)]
    assert [s["epoch_detail"] for s in stops] == [0.5, 0.5]
    assert stops[0]["snapshot"].endswith("snapshot_epoch_0_iter_4") and stops[1]["snapshot"] is None
    assert sorted(os.listdir(f"{out}/train")) == ["distributed.json", "snapshot_epoch_0_iter_4"]
    rank0, rank1 = _params(f"{out}/rank0.npz"), _params(f"{out}/rank1.npz")
    assert all(np.array_equal(rank0[n], rank1[n]) for n in rank0)
    done = launch(mpiexec, RANKS, [WORKER, out, str(SAMPLES), str(BATCH), str(EPOCHS)])
    assert done.returncode == 0, done.stdout + done.stderr
    expected = _params(f"{trained}/rank0.npz")
    for r in range(RANKS):
        got = _params(f"{out}/rank{r}.npz")
        assert all(np.array_equal(expected[n], got[n]) for n in expected), r
    assert sorted(os.listdir(f"{out}/train")) == ["distributed.json", "log",
                                                  f"snapshot_epoch_{EPOCHS}"]


def test_runner_with_two_ranks_and_a_time_budget(mpiexec, tmp_path):
    """--time-budget with --communicator: exit status 3 on every rank, one message."""
    out = str(tmp_path / "run")
    done = launch(mpiexec, RANKS, ["-m", "experiments.run"] + TINY
                  + ["--out", out, "--communicator", "naive", "--time-budget", "1e-6"])
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.count("[baseline] stopped at the time budget after epoch 0.00") == 1
    assert sorted(os.listdir(out)) == ["baseline", "config.json"]
    # Not trained yet: another number of processes would change the training, refused.
    again = launch(mpiexec, 1, ["-m", "experiments.run"] + TINY + ["--out", out])
    assert again.returncode == 2
    assert "ranks: [2] there, [1] now" in again.stderr and "Traceback" not in again.stderr


def test_runner_with_two_ranks(mpiexec, tmp_path):
    """mpiexec -n 2 ... --communicator naive: one standard results folder (re-derivable by
    --from-results), the global batch in config.json; another rank count is refused."""
    out = str(tmp_path / "run")
    done = launch(mpiexec, RANKS, ["-m", "experiments.run"] + TINY
                  + ["--out", out, "--communicator", "naive"], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Table I rows") == 1  # rank 0 alone reports
    config = json.load(open(f"{out}/config.json"))
    assert (config["ranks"], config["batch_size"], config["global_batch_size"]) == (2, 16, 32)
    assert config["distributed"]["communicator"] == "NaiveCommunicator"
    assert not glob.glob(f"{out}/**/*.tmp", recursive=True)
    from experiments.run import main
    assert main(["--from-results", out]) is True
    # Trained: one process may use the folder (e.g. to time it on a GPU); it trains
    # nothing and the record of the 2-rank training stays.
    weights = open(f"{out}/branchynet.npz", "rb").read()
    again = launch(mpiexec, 1, ["-m", "experiments.run"] + TINY + ["--out", out])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was trained by 2 processes and its training is complete" in again.stdout
    assert open(f"{out}/branchynet.npz", "rb").read() == weights
    config = json.load(open(f"{out}/config.json"))
    assert (config["ranks"], config["global_batch_size"]) == (2, 32)
    assert config["distributed"]["communicator"] == "NaiveCommunicator"
    assert main(["--from-results", out]) is True


FAILING_NET = '''
import os
import chainer
from networks.lenet_mnist import build as lenet

CALLS = [0]

def fail_on_rank_1(h):
    """Identity, except that training on rank 1 fails in its second epoch."""
    rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK"))  # MPICH, Open MPI
    if chainer.config.train and rank == "1":
        CALLS[0] += 1
        if CALLS[0] > 25:
            raise RuntimeError("injected failure on rank 1")
    return h

def build():
    return [fail_on_rank_1] + lenet()
'''


def test_a_failing_rank_ends_the_job_cleanly(mpiexec, tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_NET)
    out = str(tmp_path / "run")
    argv = TINY + ["--out", out, "--network", f"{tmp_path}/failing.py:build",
                   "--baseline-epochs", "2", "--communicator", "naive"]
    done = launch(mpiexec, RANKS, ["-m", "experiments.run"] + argv)
    assert done.returncode != 0
    assert "error: rank 1 of 2 failed: RuntimeError: injected failure on rank 1" in done.stderr
    # Finished epoch 1 is kept as a snapshot; no weights, outputs or reports; no temp files.
    files = sorted(os.path.relpath(p, out) for p in glob.glob(f"{out}/**", recursive=True)
                   if os.path.isfile(p))
    assert files == ["baseline/distributed.json", "baseline/log", "baseline/snapshot_epoch_1",
                     "config.json"], files


def test_throughput_benchmark(mpiexec, tmp_path):
    from benchmarks import distributed_throughput
    doc = distributed_throughput.main([
        "--ranks", "1", "2", "--batch-size", "32", "--iterations", "2", "--warmup", "1",
        "--samples", "256", "--repeats", "1", "--out", str(tmp_path / "b.json")])
    figures = doc["figures"]
    assert sorted(figures) == ["no_mpi", "strong_1", "strong_2", "weak_1", "weak_2"]
    assert (figures["strong_2"]["per_rank_batch"], figures["strong_2"]["global_batch"]) == (16, 32)
    assert figures["weak_2"]["global_batch"] == 64
    assert all(f["images_per_s"] > 0 for f in figures.values())
    assert 0 < figures["strong_2"]["allreduce_fraction"] < 1
    assert json.load(open(tmp_path / "b.json"))["speedup"]["strong"]["1"] == 1.0


def test_throughput_benchmark_against_the_previous_default(mpiexec, tmp_path):
    from benchmarks import distributed_throughput
    doc = distributed_throughput.main([
        "--ranks", "2", "--batch-size", "32", "--iterations", "2", "--warmup", "1",
        "--samples", "256", "--repeats", "2", "--stage", "baseline", "--compare-previous",
        "--out", str(tmp_path / "b.json")])
    figures = doc["figures"]
    assert sorted(figures) == ["current_1thread", "current_all_cores", "previous_1thread",
                               "previous_all_cores", "strong_2", "weak_2"]
    assert doc["settings"]["stage"] == "baseline" and "of baseline training steps" in doc["note"]
    assert "speedup" not in doc  # one rank count: no scaling to report
    assert not any("load_before" in f or "wall_s" in f for f in figures.values())
    over = doc["speedup_over_previous_default"]
    previous = over["strong_2"]["previous"]
    assert previous in ("previous_1thread", "previous_all_cores") and previous not in over
    base = figures[previous]["images_per_s_rounds"]
    for key, v in over.items():
        expected = [a / b for a, b in zip(figures[key]["images_per_s_rounds"], base)]
        assert v["rounds"] == pytest.approx(expected) and len(expected) == 2
        assert v["min"] <= v["median"] <= v["max"]
    other = ({"previous_1thread", "previous_all_cores"} - {previous}).pop()
    assert figures[other]["images_per_s"] <= figures[previous]["images_per_s"]


def test_the_previous_default_is_the_conv_group_alone_at_its_threads(monkeypatch):
    """--compare-previous times each in-process setting with the kernels and BLAS threads
    its name says, and leaves the process's own setting as it was."""
    from benchmarks import distributed_throughput
    from branchynet import cpu_kernels
    from branchynet.threads import blas_info, cores
    seen = {}

    def record(args, batch, comm=None):
        seen[len(seen)] = (cpu_kernels.enabled_groups(), {p["num_threads"] for p in blas_info()})
        return 1.0, 0.0
    monkeypatch.setattr(distributed_throughput, "steps_per_second", record)
    before = (cpu_kernels.enabled_groups(), {p["num_threads"] for p in blas_info()})
    for key in distributed_throughput.IN_PROCESS:
        distributed_throughput.in_process(None, 32, key)
    assert before[0] == ("conv", "fused")
    assert list(seen.values()) == [(("conv",), {1}), (("conv",), {cores()}),
                                   (("conv", "fused"), {1}), (("conv", "fused"), {cores()})]
    assert (cpu_kernels.enabled_groups(), {p["num_threads"] for p in blas_info()}) == before


def test_communicator_without_mpi4py_is_refused(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from experiments.run import main\n"
            f"main({TINY + ['--out', str(tmp_path / 'run'), '--communicator', 'naive']!r})")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--communicator naive needs mpi4py" in done.stderr
    assert "setup-distributed" in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "run")


def test_latest_snapshot_is_ordered_by_epoch_then_budget_stop(tmp_path):
    """The end of epoch E comes before a budget stop during epoch E + 1 (named
    snapshot_epoch_E_iter_I), which comes before the end of epoch E + 1."""
    from branchynet.distributed import snapshots
    names = ["snapshot_epoch_2", "snapshot_epoch_1_iter_12", "snapshot_epoch_10",
             "snapshot_epoch_9_iter_100", "snapshot_epoch_1", "log"]
    for name in names:
        (tmp_path / name).write_text("")
    assert snapshots(str(tmp_path)) == ["snapshot_epoch_1", "snapshot_epoch_1_iter_12",
                                         "snapshot_epoch_2", "snapshot_epoch_9_iter_100",
                                         "snapshot_epoch_10"]
