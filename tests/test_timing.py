"""Repeated, interleaved timing: the order of the calls, the statistics, and the
self-consistency checks the runner prints (hand-made rounds, no clock involved)."""
import numpy as np
import pytest

from branchynet.timing import (Interleaved, check_point, check_trunks, interleave,
                               interval_coverage)


def test_interleave_alternates_variants_per_block_in_varying_order_after_a_warm_call():
    calls = []

    def variant(name):
        def run(i):
            calls.append((name, i))
            return {"a": 0.001, "b": 0.002, "c": 0.004}[name]
        return run

    t = interleave({n: variant(n) for n in "abc"}, n_samples=40, rounds=2, block=4, warmup=1)
    # Warm-up: every variant once on sample 0, untimed.
    assert calls[:3] == [("a", 0), ("b", 0), ("c", 0)]
    runs = [calls[k:k + 5] for k in range(3, len(calls), 5)]
    assert len(runs) == 2 * 10 * 3  # rounds x blocks x variants
    for run in runs:
        # One variant at a time: an untimed call on the block's first sample, then the
        # block's 4 samples.
        name, first = run[0]
        assert run == [(name, first)] + [(name, first + k) for k in range(4)]
    # Every variant, sample and round timed exactly once.
    timed = sorted(c for run in runs for c in run[1:])
    assert timed == sorted((n, i) for n in "abc" for i in range(40) for _ in range(2))
    # The order within blocks varies, so no variant always follows the same one.
    orders = {tuple(run[0][0] for run in runs[k:k + 3]) for k in range(0, len(runs), 3)}
    assert len(orders) > 2
    assert t.rounds == 2 and t.samples == 40
    assert t.stats("c") == pytest.approx({"median_ms": 4, "q1_ms": 4, "q3_ms": 4,
                                          "min_ms": 4, "max_ms": 4})
    assert t.ratio("c", "a") == {"median": 4.0, "low": 4.0, "high": 4.0, "significant": True}
    assert set(t.load) == {"before", "after"}


def test_gain_is_paired_per_round_and_its_interval_can_include_one():
    # Load doubles in round 2 and hits both alike: the paired gain stays 2 in every round,
    # while a ratio of medians would be blurred by the unpaired spread.
    t = Interleaved({"base": [1.0, 2.0, 1.0, 1.1, 0.9], "fast": [0.5, 1.0, 0.5, 0.55, 0.45],
                     "same": [1.0, 1.9, 1.1, 1.0, 0.95]}, samples=10)
    assert t.ratio("base", "fast") == pytest.approx(
        {"median": 2.0, "low": 2.0, "high": 2.0, "significant": True})
    same = t.ratio("base", "same")
    assert same["low"] < 1 < same["high"] and same["significant"] is False
    assert t.stats("base")["median_ms"] == 1.0
    assert (t.stats("base")["q1_ms"], t.stats("base")["q3_ms"]) == (1.0, 1.1)
    assert Interleaved.from_json(t.to_json()).rounds_ms["same"].tolist() == [1.0, 1.9, 1.1, 1.0, 0.95]
    assert interval_coverage(5) == pytest.approx(0.9375)


def test_a_gain_against_a_point_named_by_its_grid_index():
    """The notebooks name frontier points by grid index: ratio('baseline', 6) is the gain of
    point 6 (before, an int was taken for per-round milliseconds: baseline / 6, "0.08x")."""
    t = Interleaved({"baseline": [1.0, 1.2, 1.1], 6: [0.5, 0.6, 0.5]}, samples=10)
    assert t.ratio("baseline", 6)["median"] == pytest.approx(2.0)
    assert t.ratio(np.array([2.0, 2.4, 2.2]), "baseline")["median"] == pytest.approx(2.0)
    with pytest.raises(KeyError):
        t.ratio("baseline", 7)


def rounds(**variants):
    return Interleaved({k: np.asarray(v, float) for k, v in variants.items()}, samples=100)


PATHS = dict(exit1=[0.60, 0.62, 0.61], exit2=[1.50, 1.55, 1.52],
             exit1_trunk=[0.10, 0.10, 0.10], exit2_trunk=[1.20, 1.21, 1.22],
             baseline=[0.95, 0.97, 0.96], baseline_trunk=[0.90, 0.91, 0.90])


def test_a_consistent_mixed_point_raises_no_flag():
    # 99% at exit 1: predicted 0.99 x exit1 + 0.01 x exit2, measured within noise of it.
    t = rounds(**PATHS, knee=[0.61, 0.63, 0.62])
    checks, flags = check_point(t, "knee", [0.99, 0.01])
    assert flags == []
    assert checks["vs_prediction"]["median"] == pytest.approx(0.62 / (0.99 * 0.61 + 0.01 * 1.52), rel=1e-6)
    assert check_trunks(t, 2) == []


def test_a_point_faster_than_every_path_it_mixes_is_flagged():
    # The review's case: a knee (99.2% at exit 1) measured faster than exit 1 alone in
    # every round, beyond the tolerance.
    t = rounds(**PATHS, knee=[0.55, 0.56, 0.55])
    _, flags = check_point(t, "knee", [0.992, 0.008])
    assert "faster-than-its-paths" in flags and "off-prediction" in flags
    # ... but not when one round says otherwise (the interval then includes the bound).
    t = rounds(**PATHS, knee=[0.55, 0.63, 0.55])
    assert "faster-than-its-paths" not in check_point(t, "knee", [0.992, 0.008])[1]


def test_slower_than_its_slowest_path_and_trunk_longer_than_end_to_end_are_flagged():
    t = rounds(**{**PATHS, "baseline_trunk": [1.0, 1.02, 1.01]}, mid=[1.7, 1.8, 1.75])
    assert "slower-than-its-paths" in check_point(t, "mid", [0.5, 0.5])[1]
    assert check_trunks(t, 2) == ["baseline: trunk-slower-than-end-to-end"]


def test_identical_work_against_one_noisy_path_is_not_flagged_where_blocks_are_kept():
    # As in results/deploy-resnet110_cifar10: 50 points that run exactly the exit-1
    # path, all compared with one measurement of it; per-block means scatter +-15% (a
    # loaded machine) and the path's rounds came out 1-3% slow. Per round alone (records
    # without blocks) 12 of the 50 are flagged faster than their own path; the paired
    # per-block test sees the difference is within the blocks' scatter and flags none.
    rng = np.random.RandomState(0)
    everything = {name: level * rng.uniform(0.85, 1.15, (3, 10))
                  for name, level in [("exit1", 1.0)] + [(f"p{k}", 1.0) for k in range(50)]
                  + [("exit2", 2.0)]}
    points = [name for name in everything if name.startswith("p")]
    per_round = {k: v.mean(axis=1) for k, v in everything.items()}
    old = Interleaved(per_round, samples=100)
    flagged = [p for p in points if check_point(old, p, [1.0, 0.0])[1]]
    assert len(flagged) == 12
    assert all(check_point(old, p, [1.0, 0.0])[1] == ["faster-than-its-paths"] for p in flagged)
    new = Interleaved(per_round, samples=100, blocks_ms=everything)
    assert [p for p in points if check_point(new, p, [1.0, 0.0])[1]] == []
    assert Interleaved.from_json(new.to_json()).blocks_ms["p3"].shape == (3, 10)


def test_a_real_difference_is_flagged_with_blocks_kept():
    # A point 10% faster than its only path in every block is flagged, with its z.
    rng = np.random.RandomState(1)
    path = rng.uniform(0.98, 1.02, (3, 10))
    knee = path * 0.9 * rng.uniform(0.99, 1.01, path.shape)
    t = Interleaved({"exit1": path.mean(axis=1), "exit2": 2 * path.mean(axis=1),
                     "knee": knee.mean(axis=1)}, samples=100,
                    blocks_ms={"exit1": path, "exit2": 2 * path, "knee": knee})
    checks, flags = check_point(t, "knee", [1.0, 0.0])
    assert "faster-than-its-paths" in flags and checks["vs_fastest_path"]["z"] < -10


def test_interleave_keeps_per_block_means():
    t = interleave({"a": lambda i: 0.001 * (1 + i % 3)}, n_samples=25, rounds=2, block=10,
                   warmup=0)
    assert t.blocks_ms["a"].shape == (2, 3)
    assert t.blocks_ms["a"][0].tolist() == pytest.approx([1.9, 2.0, 2.0])


def test_a_forced_exit_path_does_the_work_of_a_sample_leaving_there(lenet_pair, mnist,
                                                                     monkeypatch):
    """The prediction from the forced paths needs no decision term: a forced path scores
    and decides at every exit it passes, as a sample of a mixed point does."""
    from branchynet import routing
    from branchynet.timing import EndToEnd, forced_exit_thresholds
    _, net = lenet_pair
    calls = []
    entropy = routing.CRITERIA["entropy"]
    monkeypatch.setitem(routing.CRITERIA, "entropy",
                        lambda logits: calls.append(len(logits)) or entropy(logits))
    x = mnist.test_x[:50]
    point = EndToEnd(net, x, [0.05])
    for i in range(len(x)):
        point(i)
    for n in range(net.n_exits):
        forced = EndToEnd(net, x, forced_exit_thresholds(n, net.n_exits))
        leaving = np.flatnonzero(point.exits == n)
        assert len(leaving), f"no sample leaves at exit {n + 1} at T=0.05"
        for i in leaving:
            calls.clear()
            point(i)
            at_point = len(calls)
            calls.clear()
            forced(i)
            assert len(calls) == at_point == min(n + 1, net.n_exits - 1)
