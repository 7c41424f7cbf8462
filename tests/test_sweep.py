"""The cached sweep is exact: it equals real early-exit inference at every checked point."""
import os
import shutil

import branchynet  # noqa: F401
import numpy as np
import pytest

from branchynet.calibration import rescore
from branchynet.frontier import inc_points, knee
from branchynet.routing import get_criterion
from branchynet.sweep import (ExitOutputs, collect_exit_outputs, evaluate_grid, exit_indices,
                              first_exit_curve, predict_runtime, threshold_grid)
from networks import get_network

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def test_threshold_grid_is_the_product_in_the_authors_order():
    grid = threshold_grid([0.1, 1.0, 5.0], 3)
    assert grid.shape == (9, 2)
    assert grid[:4].tolist() == [[0.1, 0.1], [0.1, 1.0], [0.1, 5.0], [1.0, 0.1]]
    assert threshold_grid(get_network("lenet_mnist").grid, 2).shape == (17, 1)
    with pytest.raises(ValueError, match=">= 0"):
        threshold_grid([-1.0, 1.0], 2)


def test_evaluation_on_a_hand_example():
    # 4 samples, 3 exits. Scores (entropies) and predictions per exit; labels all 1.
    outputs = ExitOutputs(scores=np.array([[0.1, 0.1, 0], [0.5, 0.1, 0], [0.5, 0.5, 0],
                                           [0.2, 0.3, 0]], np.float32),
                          predictions=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]]),
                          labels=np.array([1, 1, 1, 1]))
    result = evaluate_grid(outputs, [[0.2, 0.2], [0.0, 0.0], [1.0, 0.0], [0.15, 0.4]])
    # T=(0.2,0.2): s0 exit1 (ok), s1 exit2 (ok), s2 exit3 (ok), s3 exit3 (ok; 0.2 is not < 0.2)
    # T=(0,0): all at exit 3 -> [0,0,1,1]; T=(1,0): all at exit 1 -> [1,0,0,0]
    # T=(0.15,0.4): s0 exit1, s1 exit2, s2 exit3, s3 exit2 -> all correct
    np.testing.assert_array_equal(result.accuracy, [1.0, 0.5, 0.25, 1.0])
    np.testing.assert_array_equal(result.exit_counts,
                                  [[1, 1, 2], [0, 0, 4], [4, 0, 0], [1, 2, 1]])
    assert predict_runtime(result.exit_fractions[3], [1.0, 2.0, 4.0]) == pytest.approx(2.25)


def test_cached_sweep_equals_real_early_exit_inference(lenet_pair, mnist):
    _, branchy = lenet_pair
    x, y = mnist.test_x[:1000], mnist.test_y[:1000]
    outputs = collect_exit_outputs(branchy, x, y, batch_size=250)
    grid = threshold_grid(get_network("lenet_mnist").grid, 2)
    sweep = evaluate_grid(outputs, grid)
    chosen = exit_indices(outputs, grid)
    checked_mixed = 0
    for i in range(0, len(grid), 3):  # every third grid point, at batch size 1000
        labels, exits = branchy.predict(x, grid[i])
        np.testing.assert_array_equal(exits, chosen[i])
        assert (labels == y).mean() == sweep.accuracy[i]
        np.testing.assert_array_equal(np.bincount(exits, minlength=2), sweep.exit_counts[i])
        checked_mixed += 0 < exits.sum() < len(x)
    assert checked_mixed >= 2  # several checked points really split the samples


def test_cached_sweep_equals_batch_size_one_inference(lenet_pair, mnist):
    from branchynet.timing import time_early_exit
    _, branchy = lenet_pair
    x, y = mnist.test_x[:200], mnist.test_y[:200]
    outputs = collect_exit_outputs(branchy, x, y)
    for t in (0.05, 0.5):
        _, labels, exits = time_early_exit(branchy, x, [t], warmup=0)
        expected = evaluate_grid(outputs, [[t]])
        assert (labels == y).mean() == expected.accuracy[0]
        np.testing.assert_array_equal(np.bincount(exits, minlength=2), expected.exit_counts[0])


def test_exit_outputs_round_trip(tmp_path):
    outputs = ExitOutputs(np.random.rand(5, 2).astype(np.float32), np.zeros((5, 2), np.int32),
                          np.arange(5, dtype=np.int32))
    outputs.save(str(tmp_path / "o.npz"))
    back = ExitOutputs.load(str(tmp_path / "o.npz"))
    np.testing.assert_array_equal(back.scores, outputs.scores)
    assert back.criterion == "entropy"


def test_one_file_keeps_the_logits_and_the_scores_derive_from_them(lenet_pair, mnist, tmp_path):
    _, branchy = lenet_pair
    x, y = mnist.test_x[:300], mnist.test_y[:300]
    path = str(tmp_path / "exit_outputs.npz")
    for criterion in ("entropy", "margin"):
        outputs = collect_exit_outputs(branchy, x, y, batch_size=100, criterion=criterion)
        outputs.save(path)
        with np.load(path) as data:
            assert sorted(data.files) == ["criterion", "key", "labels", "logits"]
        back = ExitOutputs.load(path)
        assert back.criterion == criterion and back.derived
        for name in ("logits", "scores", "predictions", "labels"):
            np.testing.assert_array_equal(getattr(back, name), getattr(outputs, name))
        # Bit for bit what the criterion gives on a batch of logits, as the routing scores it.
        score, logits = get_criterion(criterion), branchy.predict_all_exits(x[:100])
        np.testing.assert_array_equal(back.scores[:100], np.stack([score(z) for z in logits], 1))
        np.testing.assert_array_equal(back.predictions[:100],
                                      np.stack([z.argmax(axis=1) for z in logits], 1))


def test_cached_outputs_are_read_only_for_their_key(lenet_pair, mnist, tmp_path):
    """What the runner and the notebooks reuse: a file whose key names these weights on
    these samples; another key, or no file, gives None (compute them again)."""
    _, branchy = lenet_pair
    outputs = collect_exit_outputs(branchy, mnist.test_x[:50], mnist.test_y[:50])
    outputs.key = "weights A on samples B"
    path = str(tmp_path / "exit_outputs.npz")
    assert ExitOutputs.cached(path, outputs.key) is None
    outputs.save(path)
    np.testing.assert_array_equal(ExitOutputs.cached(path, outputs.key).logits, outputs.logits)
    assert ExitOutputs.cached(path, "weights A on samples C") is None


@pytest.mark.parametrize("folder, name", [("cpu-lenet_mnist", "exit_outputs.npz"),
                                          ("cpu-alexnet_cifar10-val", "exit_outputs.npz"),
                                          ("cpu-alexnet_cifar10-val", "exit_outputs_val.npz")])
def test_an_old_folder_loads_its_scores_with_the_logits_kept_beside_them(folder, name):
    """Written before December 2026: scores and predictions, the logits apart in
    exit_logits[_val].npz. One load gives both, and the scores derived from those logits
    are the stored ones, bit for bit."""
    path = os.path.join(RESULTS, folder, name)
    with np.load(path) as data:
        assert "scores" in data.files and "logits" not in data.files
        stored = data["scores"]
    outputs = ExitOutputs.load(path)
    assert outputs.logits is not None and not outputs.derived
    np.testing.assert_array_equal(outputs.scores, stored)
    derived = ExitOutputs.from_logits(outputs.logits, outputs.labels, outputs.criterion)
    np.testing.assert_array_equal(derived.scores, stored)
    np.testing.assert_array_equal(derived.predictions, outputs.predictions)
    np.testing.assert_array_equal(rescore(outputs, [1.0] * outputs.n_exits).scores, stored)


def test_an_old_file_without_its_logits_keeps_its_stored_scores(tmp_path):
    source = os.path.join(RESULTS, "cpu-lenet_mnist-paper", "exit_outputs.npz")
    outputs = ExitOutputs.load(source)
    assert outputs.logits is None and not outputs.derived and len(outputs) == 10000
    with pytest.raises(ValueError, match="hold no logits"):
        rescore(outputs, [1.0, 1.0])
    # Logits of other weights beside it are not taken, nor any for the baseline's outputs.
    for name in ("exit_outputs.npz", "exit_outputs_baseline.npz"):
        shutil.copy(os.path.join(RESULTS, "cpu-lenet_mnist", name), tmp_path)
    shutil.copy(os.path.join(RESULTS, "cpu-lenet_mnist", "exit_logits.npz"), tmp_path)
    assert ExitOutputs.load(str(tmp_path / "exit_outputs.npz")).logits is not None
    assert ExitOutputs.load(str(tmp_path / "exit_outputs_baseline.npz")).logits is None
    shutil.copy(source, tmp_path)
    assert ExitOutputs.load(str(tmp_path / "exit_outputs.npz")).logits is None
    lenet = ExitOutputs.load(os.path.join(RESULTS, "cpu-lenet_mnist", "exit_outputs.npz"))
    with pytest.raises(ValueError, match="do not belong"):
        lenet.with_logits(lenet.logits[::-1])
    # Logits added to stored scores: both saved, and the stored scores stand.
    kept = lenet.take(slice(0, 50))
    ExitOutputs(kept.scores + 1, kept.predictions, kept.labels).with_logits(kept.logits).save(
        str(tmp_path / "both.npz"))
    back = ExitOutputs.load(str(tmp_path / "both.npz"))
    np.testing.assert_array_equal(back.scores, kept.scores + 1)
    np.testing.assert_array_equal(back.logits, kept.logits)


def test_inc_points_follow_the_authors_rule():
    runtime = [5.0, 1.0, 2.0, 3.0, 4.0, 2.0]
    accuracy = [0.99, 0.90, 0.95, 0.9496, 0.97, 0.94]
    # Sorted by runtime: 1 (0.90), 2 (0.95), 5 (0.94), 3 (0.9496), 4 (0.97), 0 (0.99).
    # With inc_amt=-0.0005: keep 1, 2; drop 5 (0.94 <= 0.9495); keep 3 (0.9496 > 0.9495);
    # keep 4 and 0.
    assert inc_points(accuracy, runtime, -0.0005).tolist() == [1, 2, 3, 4, 0]
    assert inc_points(accuracy, runtime, 0.0).tolist() == [1, 2, 4, 0]


def test_knee_is_the_point_farthest_above_the_chord():
    runtime = np.array([1.0, 2.0, 3.0, 10.0])
    accuracy = np.array([0.80, 0.97, 0.98, 0.99])
    frontier = np.arange(4)
    # scaled acc - scaled runtime: 0, 0.895-0.111, 0.947-0.222, 0 -> index 1
    assert knee(accuracy, runtime, frontier) == 1
    assert knee(accuracy, runtime, np.array([2])) == 2


def test_first_exit_curve_on_a_hand_example_and_against_the_sweep():
    # The hand example above: exit-1 scores 0.1, 0.5, 0.5, 0.2; exit-1 right only for s0.
    outputs = ExitOutputs(scores=np.array([[0.1, 0.1, 0], [0.5, 0.1, 0], [0.5, 0.5, 0],
                                           [0.2, 0.3, 0]], np.float32),
                          predictions=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]]),
                          labels=np.array([1, 1, 1, 1]))
    exited, accuracy, max_score = first_exit_curve(outputs)
    # Nobody leaves: all at exit 3 (right for s2, s3). Then s0 (right at exit 1), s3 (wrong
    # at exit 1), then s1 and s2 (both wrong at exit 1) leave.
    np.testing.assert_allclose(exited, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(accuracy, [0.5, 0.75, 0.5, 0.5, 0.25])
    np.testing.assert_allclose(max_score, [0, 0.1, 0.2, 0.5, 0.5], rtol=1e-6)
    # With exit 2 open at T2 = 0.2 (s1 right, s0 would be wrong there): same as the sweep.
    exited, accuracy, _ = first_exit_curve(outputs, [0.2])
    for t1, k in ((0.0, 0), (0.15, 1), (0.3, 2), (1.0, 4)):
        assert accuracy[k] == evaluate_grid(outputs, [[t1, 0.2]]).accuracy[0]
    with pytest.raises(ValueError, match="3 exits need 1 later thresholds"):
        first_exit_curve(outputs, [0.1, 0.2])


def test_paper_table_rows():
    from branchynet.paper import paper_rows
    base, bnet = paper_rows("AlexNet", "gpu0")
    assert (base["accuracy"], base["time_ms"], base["selection"]) == (78.38, 3.15, "paper (gpu)")
    assert bnet["network"] == "B-AlexNet" and bnet["thresholds"] == [0.0001, 0.05]
    assert sum(bnet["exit_percent"]) == pytest.approx(100)
    assert paper_rows("LeNet")[1]["gain"] == 5.4
    with pytest.raises(ValueError, match="no network 'VGG'.*AlexNet"):
        paper_rows("VGG")


def test_pareto_points_drop_dominated_and_duplicate_points():
    from branchynet.frontier import pareto_points
    accuracy = [0.90, 0.95, 0.95, 0.93, 0.97, 0.95]
    runtime = [1.0, 2.0, 2.0, 2.5, 3.0, 1.5]
    # 1 and 2 are identical (2 dropped), 3 is dominated by 5, 1 by 5 (faster, as accurate).
    assert pareto_points(accuracy, runtime).tolist() == [0, 5, 4]
    assert pareto_points(accuracy, runtime, among=[0, 1, 2, 3]).tolist() == [0, 1]


def test_timed_points_are_capped_and_spread_over_runtime():
    from branchynet.frontier import spread_over_runtime
    runtime = np.r_[np.linspace(1, 1.1, 50), np.linspace(2, 10, 50)]
    points = np.arange(100)
    chosen = spread_over_runtime(points, runtime, 10, keep=[7])
    assert len(chosen) == 10 and {0, 99, 7} <= set(chosen.tolist())
    # Spread over runtime, not over the index: the 50 points crowded near 1 ms get few.
    assert (runtime[chosen] < 1.2).sum() <= 3
    assert spread_over_runtime(points[:5], runtime, 10).tolist() == [0, 1, 2, 3, 4]
