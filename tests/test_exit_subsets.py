"""Exit subsets (branchynet.exit_subsets) on real MNIST digits: the B-net without a dropped
exit never runs its head and decides as the full B-net with that exit's threshold at 0;
on a network whose exit-1 head costs far more than its samples save, dropping it wins."""
import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from branchynet import exit_subsets as es
from branchynet.net import Branch, BranchyNet
from branchynet.sweep import collect_exit_outputs, exit_indices
from branchynet.timing import EndToEnd, forced_exit_thresholds, interleave
from branchynet.training import train


class LinearCalls(chainer.LinkHook):
    """Counts the Linear links called."""

    name = "LinearCalls"

    def __init__(self):
        self.calls = 0

    def forward_preprocess(self, args):
        self.calls += isinstance(args.link, L.Linear)


def tiny_net(head1_width):
    """Three exits on flattened digits; exit 1's head has a hidden layer of the given width."""
    np.random.seed(0)
    return BranchyNet([
        L.Linear(784, 32), F.relu,
        Branch([L.Linear(32, head1_width), F.relu, L.Linear(head1_width, 10)]),
        L.Linear(32, 32), F.relu,
        Branch([L.Linear(32, 10)]),
        L.Linear(32, 32), F.relu,
        Branch([L.Linear(32, 10)])])


@pytest.fixture(scope="module")
def digits(mnist):
    x = mnist.train_x[:1500].reshape(1500, -1)
    y = mnist.train_y[:1500]
    return x, y, mnist.test_x[:400].reshape(400, -1), mnist.test_y[:400]


def test_subsets_and_thresholds():
    assert es.all_subsets(3) == [(0, 1, 2), (0, 2), (1, 2), (2,)]
    assert es.all_subsets(2) == [(0, 1), (1,)]
    assert es.full_thresholds((1, 2), [0.3], 3) == [0.0, 0.3]
    assert es.subset_name((0, 2)) == "exits 1+3"
    with pytest.raises(ValueError, match="keeps the last exit"):
        es.check_subset((0, 1), 3)
    with pytest.raises(ValueError, match="takes 1 threshold"):
        es.full_thresholds((0, 2), [0.1, 0.2], 3)


def test_subset_macs_count_only_the_kept_heads():
    from branchynet.flops import exit_path_costs
    costs = exit_path_costs(tiny_net(16), (784,))
    assert es.subset_macs(costs, (0, 1, 2)) == costs["macs"]  # the full B-net's own count
    path, head = costs["path_macs"], costs["head_macs"]
    assert es.subset_macs(costs, (0, 2)) == [path[0], path[2] + head[0]]
    assert es.subset_macs(costs, (1, 2)) == [path[1], path[2] + head[1]]
    assert es.subset_macs(costs, (2,)) == [path[2]]


def test_a_dropped_head_never_runs_and_decisions_match_the_full_net(digits, tmp_path):
    x, y, tx, ty = digits
    net = tiny_net(16)
    train(net, x, y, 1, 50, str(tmp_path), chainer.get_device("@numpy"), progress=False)
    with chainer.using_config("train", False):
        outputs = collect_exit_outputs(net, tx, ty)
    median = [float(np.median(outputs.scores[:, n])) for n in range(2)]
    for keep in [(0, 2), (1, 2), (2,)]:
        sub = es.subset_network(net, keep)
        assert sub.n_exits == len(keep)
        dropped = [n for n in range(3) if n not in keep]
        kept_t = [median[k] for k in keep[:-1]]
        full = es.full_thresholds(keep, kept_t, 3)
        labels, exits = sub.predict(tx, kept_t)
        want = exit_indices(outputs, [full])[0]
        np.testing.assert_array_equal(np.asarray(keep)[exits], want)
        np.testing.assert_array_equal(labels, outputs.predictions[np.arange(len(tx)), want])
        ref_labels, ref_exits = net.predict(tx, full)
        np.testing.assert_array_equal(np.asarray(keep)[exits], ref_exits)
        np.testing.assert_array_equal(labels, ref_labels)
        # the subset holds copies of exactly the kept heads: no layer of a dropped head
        sub_params = {p.array.tobytes() for p in sub.params()}
        for n in dropped:
            assert not any(p.array.tobytes() in sub_params for p in net.heads[n].params())
        # forced to the last exit, the subset runs the trunk (3 Linear) and the Linear
        # layers of the kept heads only (exit 1's head has 2): a dropped head never runs
        hook = LinearCalls()
        with hook:
            sub.predict(tx[:1], forced_exit_thresholds(len(keep) - 1, len(keep)))
        assert hook.calls == 3 + sum(2 if k == 0 else 1 for k in keep)


def test_dropping_an_expensive_exit_wins(digits, tmp_path):
    """Exit 1's head (32 -> 30,000 -> 10, 1.3M multiply-adds against the trunk's 27k) slows
    every sample down at any threshold, so the subset without it is the fastest at the same
    accuracy, predicted and measured."""
    x, y, tx, ty = digits
    net = tiny_net(30000)
    train(net, x, y, 1, 50, str(tmp_path), chainer.get_device("@numpy"), progress=False)
    with chainer.using_config("train", False):
        outputs = collect_exit_outputs(net, tx, ty)
    # "baseline accuracy": exit 3's own (every subset can reach it)
    min_correct = int((outputs.predictions[:, 2] == outputs.labels).sum())
    cpu = chainer.get_device("@numpy")
    xs = tx[:40]
    nets = {keep: es.subset_network(net, keep) for keep in [(0, 1, 2), (1, 2)]}
    variants = {f"{keep}:{j}": EndToEnd(sub, xs, forced_exit_thresholds(j, len(keep)), cpu)
                for keep, sub in nets.items() for j in range(len(keep))}
    t = interleave(variants, len(xs), rounds=3, block=10)
    best = {}
    for keep, sub in nets.items():
        ms = [t.median(f"{keep}:{j}") for j in range(len(keep))]
        cands = es.fastest_candidates(outputs, keep, [0.01, 0.1, 0.5, 1.0, 2.0], ms,
                                      min_correct, count=2)
        assert cands and all(np.rint(c["accuracy"] * len(outputs)) >= min_correct
                             for c in cands)
        assert [c["predicted_ms"] for c in cands] == sorted(c["predicted_ms"] for c in cands)
        measured = interleave({i: EndToEnd(sub, xs, c["thresholds"], cpu)
                               for i, c in enumerate(cands)}, len(xs), rounds=3, block=10)
        best[keep] = es.choose(cands, [measured.median(i) for i in range(len(cands))])
        assert best[keep]["exit_fractions"][0] == 0 or 0 in keep
    assert best[(1, 2)]["measured_ms"] < best[(0, 1, 2)]["measured_ms"]
    assert best[(1, 2)]["predicted_ms"] < best[(0, 1, 2)]["predicted_ms"]
    assert es.choose([], []) is None
