"""The CPU checks again on a CUDA GPU ('@cupy:0'), plus what only a GPU can show.

Every test here is marked ``gpu`` and skipped, with the reason, where Chainer cannot use a
CUDA GPU (CuPy missing, no CUDA libraries, no driver or no device). CI has no GPU: run them
on a GPU machine with ``python -m pytest -m gpu tests/test_gpu.py`` (docs/gpu.md).

GPU and CPU do not round alike (cuBLAS and OpenBLAS sum in other orders, and CUDA's exp and
log differ from the host's in the last bit), and cuBLAS may pick another kernel for
another batch size. So where the CPU tests ask for identical decisions, these ask for
identical decisions on every sample whose score is not within a hair of the threshold
(``_ambiguous``), and check that such samples are rare.
"""
import json
import os

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np
import pytest

from branchynet._compat import cuda_status
from branchynet.net import BranchyNet, JointLoss
from branchynet.routing import entropy
from branchynet.sweep import collect_exit_outputs, evaluate_grid, exit_indices, threshold_grid
from branchynet.timing import exit_path_latency, time_early_exit, trunk_latency
from branchynet.training import load_weights, save_weights, train
from networks import get_network
from test_routing import toy_net as cpu_toy_net

GPUS, WHY = cuda_status()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPUS == 0, reason=f"needs a CUDA GPU; none here: {WHY}")]

SPEC = get_network("lenet_mnist")
GPU = "@cupy:0"


@pytest.fixture(scope="module")
def cupy():
    import cupy
    return cupy


def on_gpu(net):
    """A deep copy of ``net`` on the GPU (session fixtures stay on the CPU)."""
    return net.copy(mode="copy").to_device(GPU)


def host(array):
    return chainer.backend.CpuDevice().send(array)


def _ambiguous(scores, threshold):
    """Samples whose score is so close to the threshold that rounding may decide.

    At 0 nothing exits and at infinity everything does, whatever the rounding.
    """
    if not 0 < threshold < np.inf:
        return np.zeros(len(scores), bool)
    return np.abs(scores - threshold) <= 1e-3 * threshold


def _near_tie(logits):
    """Samples whose two largest logits are so close that rounding may pick either."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] <= 1e-4 * (1 + np.abs(top2[:, 1]))


def assert_same_decisions(exits_a, labels_a, exits_b, labels_b, scores, logits, thresholds):
    """Exits and labels agree except on samples at a threshold or a near tie of logits.

    ``scores`` (samples, exits) and ``logits`` (list per exit) come from one of the two runs.
    """
    shaky = np.zeros(len(exits_a), bool)
    for n, t in enumerate(thresholds):
        shaky |= _ambiguous(scores[:, n], t)
    for z in logits:
        shaky |= _near_tie(z)
    assert shaky.mean() < 0.02, f"{shaky.sum()} of {len(shaky)} samples too close to call"
    firm = ~shaky
    np.testing.assert_array_equal(exits_a[firm], exits_b[firm])
    np.testing.assert_array_equal(labels_a[firm], labels_b[firm])
    return firm


class HostReads:
    """Counts every read of a CuPy array by the host while active (``.get()``,
    ``cupy.asnumpy``, ``int()``/``float()``/``bool()``, ``.item()``, ``.tolist()``,
    ``numpy.asarray``), with the size of the array read."""

    NAMES = ("get", "item", "tolist", "__int__", "__float__", "__bool__", "__index__",
             "__array__")

    def __init__(self, cupy, monkeypatch):
        self.reads = []
        for name in self.NAMES:
            original = getattr(cupy.ndarray, name, None)
            if original is not None:
                monkeypatch.setattr(cupy.ndarray, name, self._spy(name, original))
        asnumpy = cupy.asnumpy

        def spy_asnumpy(a, *args, **kwargs):
            self.reads.append(("asnumpy", getattr(a, "size", 1)))
            return asnumpy(a, *args, **kwargs)
        monkeypatch.setattr(cupy, "asnumpy", spy_asnumpy)

    def _spy(self, name, original):
        reads = self.reads

        def spy(array, *args, **kwargs):
            reads.append((name, array.size))
            return original(array, *args, **kwargs)
        return spy


# --------------------------------------------------------------------------- routing

def toy_net():
    """test_routing's three-exit toy network (logits = input columns), on the GPU."""
    net, second, third = cpu_toy_net()
    return net.to_device(GPU), second, third


def test_routing_hand_example_on_the_gpu(cupy, monkeypatch):
    net, second, third = toy_net()
    x = cupy.asarray(np.array([
        [0, 0, 10, 0, 0, 0, 0, 0, 0],         # exit 1 confident -> exit 1, label 2
        [0, 0, 0, 9, 0, 0, 0, 0, 0],          # exit 1 uniform, exit 2 confident -> exit 2, label 0
        [0, 0, 0, 0, 0, 0, 0, 1, 0],          # uncertain twice -> last exit, label 1
        [np.log(3), 0, 0, 0, 0, 0, 0, 0, 0],  # exit 1 entropy 0.9503 < 1.0 -> exit 1, label 0
    ], np.float32))
    spy = HostReads(cupy, monkeypatch)
    labels, exits = net.predict(x, [1.0, 0.1])
    reads = list(spy.reads)
    monkeypatch.undo()
    # Results stay on the GPU; reading them is the caller's one transfer.
    assert isinstance(labels, cupy.ndarray) and isinstance(exits, cupy.ndarray)
    assert labels.device.id == 0 and exits.device.id == 0
    np.testing.assert_array_equal(labels.get(), [2, 0, 1, 0])
    np.testing.assert_array_equal(exits.get(), [0, 1, 2, 0])
    assert second.batch_sizes == [2] and third.batch_sizes == [1]
    # Inside routing the host only ever reads single numbers (how many samples go on),
    # never an array of scores, masks or predictions.
    assert all(size <= 1 for _, size in reads), reads
    assert not any(name == "asnumpy" for name, _ in reads), reads


def test_entropy_on_the_gpu_matches_the_cpu(cupy):
    logits = np.random.RandomState(0).randn(500, 10).astype(np.float32) * 4
    np.testing.assert_allclose(entropy(cupy.asarray(logits)).get(), entropy(logits),
                               rtol=1e-5, atol=1e-6)


def test_routing_reads_back_only_per_exit_counts(lenet_pair, mnist, cupy, monkeypatch):
    """The host reads from the device per exit, not per sample: the number of reads
    during early-exit inference does not grow with the batch, and each is one number."""
    net = on_gpu(lenet_pair[1])
    counts = []
    for size in (8, 512):
        x = cupy.asarray(mnist.test_x[:size])
        spy = HostReads(cupy, monkeypatch)
        _, exits = net.predict(x, [0.1])
        reads = list(spy.reads)
        monkeypatch.undo()
        assert all(s <= 1 for _, s in reads), reads
        assert not any(name == "asnumpy" for name, _ in reads), reads
        counts.append(len(reads))
    assert counts[0] == counts[1] and counts[1] <= 4 * (net.n_exits - 1), counts


# ------------------------------------------------------------- trained net, GPU vs CPU

@pytest.mark.parametrize("thresholds", [[0.0], [0.01], [0.1], [0.5], [np.inf]])
def test_decisions_do_not_depend_on_batch_size_on_the_gpu(lenet_pair, mnist, thresholds):
    net = on_gpu(lenet_pair[1])
    x = mnist.test_x[:300]
    xg = net.device.send(x)
    labels, exits = map(host, net.predict(xg, thresholds))
    one = [tuple(map(host, net.predict(xg[i:i + 1], thresholds))) for i in range(len(x))]
    logits = [host(z) for z in net.predict_all_exits(xg)]
    scores = np.stack([host(entropy(z)) for z in net.predict_all_exits(xg)], axis=1)
    assert_same_decisions(exits, labels, np.array([e[0] for _, e in one]),
                          np.array([l[0] for l, _ in one]), scores, logits, thresholds)
    if thresholds == [0.1]:
        assert 0 < exits.sum() < len(x)


def test_gpu_decisions_match_the_cpu(lenet_pair, mnist):
    _, branchy = lenet_pair
    net = on_gpu(branchy)
    x = mnist.test_x[:1000]
    cpu_logits = branchy.predict_all_exits(x)
    gpu_logits = [host(z) for z in net.predict_all_exits(net.device.send(x))]
    for a, b in zip(cpu_logits, gpu_logits):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)
    scores = np.stack([entropy(z) for z in cpu_logits], axis=1)
    mixed = 0
    for t in SPEC.grid:
        cpu_labels, cpu_exits = branchy.predict(x, [t])
        gpu_labels, gpu_exits = map(host, net.predict(net.device.send(x), [t]))
        assert_same_decisions(cpu_exits, cpu_labels, gpu_exits, gpu_labels, scores,
                              cpu_logits, [t])
        mixed += 0 < cpu_exits.sum() < len(x)
    assert mixed >= 2


def test_cached_sweep_equals_real_early_exit_inference_on_the_gpu(lenet_pair, mnist):
    net = on_gpu(lenet_pair[1])
    x, y = mnist.test_x[:1000], mnist.test_y[:1000]
    device = chainer.get_device(GPU)
    outputs = collect_exit_outputs(net, x, y, batch_size=250, device=device)
    grid = threshold_grid(SPEC.grid, 2)
    sweep = evaluate_grid(outputs, grid)
    chosen = exit_indices(outputs, grid)
    logits = [host(z) for z in net.predict_all_exits(device.send(x))]
    for i in range(0, len(grid), 3):
        labels, exits = map(host, net.predict(device.send(x), grid[i]))
        firm = assert_same_decisions(exits, labels, chosen[i],
                                     outputs.predictions[np.arange(len(x)), chosen[i]],
                                     outputs.scores, logits, grid[i])
        if firm.all():  # nothing close to call: the sweep is exact here too
            assert (labels == y).mean() == sweep.accuracy[i]
            np.testing.assert_array_equal(np.bincount(exits, minlength=2),
                                          sweep.exit_counts[i])


# ---------------------------------------------------------------- training on the GPU

def test_joint_loss_gradients_on_the_gpu_match_the_cpu(mnist):
    np.random.seed(1)
    cpu_net = BranchyNet(SPEC.build())
    gpu_net = on_gpu(cpu_net)
    x, t = mnist.train_x[:16], mnist.train_y[:16]
    losses = []
    for net, (xs, ts) in ((cpu_net, (x, t)), (gpu_net, tuple(map(gpu_net.device.send, (x, t))))):
        model = JointLoss(net, weights=[1.0, 0.3])
        model.cleargrads()
        loss = model(xs, ts)
        loss.backward()
        losses.append(float(loss.array))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    gpu_params = dict(gpu_net.namedparams())
    for name, param in cpu_net.namedparams():
        grad = gpu_params[name].grad
        assert grad is not None and float(abs(grad).sum()) > 0, name
        np.testing.assert_allclose(host(grad), param.grad, rtol=1e-2, atol=1e-4, err_msg=name)


def test_training_on_the_gpu_learns_and_resumes(mnist, tmp_path):
    """Adam's kernel, the LeNet kernels forward and backward, snapshots of GPU state and
    their reload."""
    device = chainer.get_device(GPU)
    x, y = mnist.train_x[:4096], mnist.train_y[:4096]
    np.random.seed(4)
    net = BranchyNet(SPEC.build())
    first = train(net, x, y, 1, 32, str(tmp_path), device, progress=False)
    assert [e["epoch"] for e in first] == [1]
    assert isinstance(next(net.params()).array, device.xp.ndarray)
    np.random.seed(5)
    again = BranchyNet(SPEC.build())
    log = train(again, x, y, 2, 32, str(tmp_path), device, progress=False)
    assert [e["epoch"] for e in log] == [1, 2]
    assert log[0]["main/loss"] == first[0]["main/loss"]
    assert log[1]["main/loss"] < log[0]["main/loss"]
    accuracy = (host(again.predict(device.send(mnist.test_x[:1000]), [0.0])[0])
                == mnist.test_y[:1000]).mean()
    assert accuracy > 0.8, accuracy


def test_save_load_round_trip_from_the_gpu(lenet_pair, mnist, tmp_path):
    net = on_gpu(lenet_pair[1])
    path = str(tmp_path / "b.npz")
    save_weights(path, net)
    np.random.seed(3)
    on_cpu = load_weights(path, BranchyNet(SPEC.build()))
    on_gpu_again = load_weights(path, BranchyNet(SPEC.build()).to_device(GPU))
    gpu_params = dict(net.namedparams())
    for other in (on_cpu, on_gpu_again):
        for name, param in other.namedparams():
            np.testing.assert_array_equal(host(param.array), host(gpu_params[name].array))
    x = net.device.send(mnist.test_x[:100])
    for a, b in zip(on_gpu_again.predict_all_exits(x), net.predict_all_exits(x)):
        np.testing.assert_array_equal(host(a), host(b))


# --------------------------------------------------------------------------- timing

def test_synchronised_timing_on_the_gpu(lenet_pair, mnist, monkeypatch):
    import branchynet.timing as timing
    net = on_gpu(lenet_pair[1])
    device = net.device
    calls = []
    real = timing.synchronize
    monkeypatch.setattr(timing, "synchronize", lambda d: (calls.append(d), real(d))[1])
    x = mnist.test_x[:30]
    seconds, labels, exits = time_early_exit(net, x, [0.1], device, warmup=3)
    # One synchronisation after the warm-up and one inside every measured sample.
    assert len(calls) >= 1 + len(x) and all(d == device for d in calls)
    assert np.isfinite(seconds).all() and (seconds > 0).all()
    # The same decisions as the batched sweep, as on the CPU, except for samples scoring
    # within float32 rounding of the threshold (logits at batch size 1 and 30 may differ
    # in the last bits): those are counted, and must be all the disagreements.
    from experiments.experiment import compare_with_sweep
    outputs = collect_exit_outputs(net, x, mnist.test_y[:30], device=device)
    other, borderline = compare_with_sweep(outputs, [0.1], exits)
    assert other == borderline
    same = exits == exit_indices(outputs, [[0.1]])[0]
    np.testing.assert_array_equal(labels[same], outputs.predictions[same, exits[same]])
    paths = exit_path_latency(net, x, device, warmup=3)
    calls.clear()
    trunk = trunk_latency(net, x, device, warmup=3)
    for figures in (paths, trunk):
        assert figures.shape == (net.n_exits,) and np.isfinite(figures).all()
        assert (figures > 0).all()
    # Each trunk segment is timed between two synchronisations of the GPU: 1 segment up
    # to exit 1, 2 up to exit 2, warm-up included. (Which figure is larger is left to the
    # benchmarks: beside other work on the GPU, one pass can put the trunk above the path.)
    assert calls == [device] * 2 * (1 + 2) * (3 + len(x))


# ---------------------------------------------------------------------- the runner

def test_runner_with_device_all_writes_cpu_and_gpu_results(tmp_path, capsys):
    from experiments.run import main
    out = str(tmp_path / "run")
    tiny = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "640",
            "--test-limit", "200", "--baseline-epochs", "1", "--branchy-epochs", "1",
            "--batch-size", "32", "--timing-samples", "40", "--no-progress"]
    summary = main(tiny + ["--device", "all", "--out", out])
    printed = capsys.readouterr().out
    assert "Table I rows: LeNet on mnist-5k, cpu" in printed
    assert "Table I rows: LeNet on mnist-5k, gpu0" in printed
    for label in ("cpu", "gpu0"):
        for name in (f"timing_{label}.json", f"sweep_{label}.csv", f"table_{label}.csv",
                     f"table_{label}.json", f"tradeoff_{label}.png", f"tradeoff_{label}.pdf"):
            assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "table_gpu0.json")) as f:
        table = json.load(f)
    assert table["machine"]["device"] == GPU and table["machine"]["gpu"]
    assert table["machine"]["cupy"]
    with open(os.path.join(out, "timing_gpu0.json")) as f:
        timing = json.load(f)
    assert timing["measured_on"]["samples"] == 40 and timing["measurement"]["rounds"] == 5
    base, knee, paper = table["rows"]
    assert paper["selection"] == "paper's T (Table I)" and paper["thresholds"] == [0.025]
    assert base["time_ms"] == pytest.approx(np.median(timing["measurement"]["rounds_ms"]["baseline"]))
    assert knee["gain_low"] <= knee["gain"] <= knee["gain_high"]
    assert set(summary["devices"]) >= {"cpu", "gpu0"}


def test_fast_recipe_on_the_gpu_stops_at_the_budget_and_resumes_alike(tmp_path):
    """MomentumSGD's and WeightDecay's kernels, the cosine schedule, host-side crop+flip
    feeding the GPU, dropout masks seeded per iteration: a run stopped mid-epoch by its
    budget and resumed ends where an uninterrupted one does (up to GPU rounding)."""
    import itertools
    from branchynet.training import Recipe, TimeBudgetExhausted
    from test_training_recipe import _data, _tiny_net
    device = chainer.get_device(GPU)
    x, y = _data()
    recipe = Recipe(optimizer="momentum-sgd", lr=0.05, weight_decay=5e-4, schedule="cosine",
                    warmup_epochs=0.5, augment="crop-flip", pad=2)
    np.random.seed(0)
    whole = _tiny_net()
    log = train(whole, x, y, 3, 20, str(tmp_path / "whole"), device, recipe=recipe, seed=3,
                progress=False)
    np.random.seed(0)
    cut = _tiny_net()
    ticks = itertools.count()
    with pytest.raises(TimeBudgetExhausted) as stopped:
        train(cut, x, y, 3, 20, str(tmp_path / "cut"), device, recipe=recipe, seed=3,
              progress=False, time_budget_s=7, clock=lambda: next(ticks))
    assert 1 < stopped.value.epoch_detail < 2
    np.random.seed(99)
    resumed = _tiny_net()
    log2 = train(resumed, x, y, 3, 20, str(tmp_path / "cut"), device, recipe=recipe, seed=3,
                 progress=False)
    assert log2[-1]["main/loss"] == pytest.approx(log[-1]["main/loss"], rel=1e-4)
    expected = dict(whole.namedparams())
    for name, param in resumed.namedparams():
        np.testing.assert_allclose(host(param.array), host(expected[name].array),
                                   rtol=1e-4, atol=1e-6, err_msg=name)
