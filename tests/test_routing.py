"""Early-exit routing against hand-computed examples, and threshold validation."""
import math

import branchynet  # noqa: F401
import numpy as np
import pytest
import scipy.stats

from branchynet.net import Branch, BranchyNet
from branchynet.routing import check_thresholds, entropy


class Recorder:
    """A trunk layer that records the batch sizes it sees and passes its input on."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, h):
        self.batch_sizes.append(len(h))
        return h


def toy_net():
    """Three exits whose logits are columns 0-2, 3-5 and 6-8 of the input itself."""
    second, third = Recorder(), Recorder()
    layers = [Branch([lambda h: h[:, 0:3]]), second, Branch([lambda h: h[:, 3:6]]),
              third, Branch([lambda h: h[:, 6:9]])]
    return BranchyNet(layers), second, third


def rows(*logits):
    return np.array(logits, np.float32)


def test_entropy_hand_values():
    # Uniform over 3 classes: ln 3. One-hot in float32 (others underflow): exactly 0, no NaN.
    logits = rows([0, 0, 0], [0, -1e4, -1e4], [math.log(3), 0, 0])
    e = entropy(logits)
    assert e[0] == pytest.approx(math.log(3), rel=1e-6)
    assert e[1] == 0.0
    p = np.array([0.6, 0.2, 0.2])  # softmax of [ln 3, 0, 0]
    assert e[2] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-6)


def test_entropy_matches_scipy():
    logits = np.random.RandomState(0).randn(50, 10).astype(np.float32) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(entropy(logits), scipy.stats.entropy(p, axis=1), rtol=1e-5)


def test_routing_hand_example():
    net, second, third = toy_net()
    x = rows(
        # exit 1 confident (entropy ~0.0009) -> leaves at exit 1 with label 2
        [0, 0, 10, 0, 0, 0, 0, 0, 0],
        # exit 1 uniform (ln 3 = 1.0986), exit 2 confident -> exit 2, label 0
        [0, 0, 0, 9, 0, 0, 0, 0, 0],
        # uncertain at exits 1 and 2 -> last exit, label 1 (argmax of the last logits)
        [0, 0, 0, 0, 0, 0, 0, 1, 0],
        # exit 1 entropy 0.9503 (softmax [0.6,0.2,0.2]) < 1.0 -> exit 1, label 0
        [math.log(3), 0, 0, 0, 0, 0, 0, 0, 0],
    )
    labels, exits = net.predict(x, [1.0, 0.1])
    np.testing.assert_array_equal(labels, [2, 0, 1, 0])
    np.testing.assert_array_equal(exits, [0, 1, 2, 0])
    # Samples that left are not carried on: 2 reach the 2nd segment, 1 the 3rd.
    assert second.batch_sizes == [2] and third.batch_sizes == [1]


def test_threshold_comparison_is_strict():
    net, _, _ = toy_net()
    x = rows([0] * 9)
    at = float(entropy(x[:, :3])[0])  # exactly ln 3 in float32
    _, exits = net.predict(x, [at, at])
    assert exits[0] == 2  # entropy == threshold does not exit
    _, exits = net.predict(x, [np.nextafter(np.float32(at), np.float32(9)), 0])
    assert exits[0] == 0


def test_zero_threshold_keeps_all_and_inf_releases_all():
    net, second, _ = toy_net()
    x = rows([0, -1e4, -1e4] + [0] * 6)  # entropy exactly 0 at exit 1
    assert net.predict(x, [0.0, 0.0])[1][0] == 2
    assert net.predict(x, [np.inf, 0.0])[1][0] == 0


def test_all_samples_leaving_early_stops_the_trunk():
    net, second, third = toy_net()
    labels, exits = net.predict(rows([0, 0, 10] + [0] * 6), [np.inf, np.inf])
    assert exits.tolist() == [0] and second.batch_sizes == [] and third.batch_sizes == []


@pytest.mark.parametrize("bad, message", [
    ([0.1], "needs 2 threshold"),
    ([0.1, 0.2, 0.3], "needs 2 threshold"),
    ([-0.1, 0.2], "must be >= 0"),
    ([float("nan"), 0.2], "must be >= 0"),
    (["a", 0.2], "sequence of numbers"),
    (0.5, "sequence of numbers"),
])
def test_bad_thresholds_are_rejected_clearly(bad, message):
    net, _, _ = toy_net()
    with pytest.raises(ValueError, match=message):
        net.predict(rows([0] * 9), bad)
    with pytest.raises(ValueError, match=message):
        check_thresholds(bad, 3)


def test_network_list_must_end_with_a_branch():
    with pytest.raises(ValueError, match="must end with a Branch"):
        BranchyNet([Branch([abs]), abs])


def test_a_sample_with_nan_logits_is_never_certain():
    """NaN logits (a broken input or network) give a NaN score at every criterion, so the
    sample goes on to the last exit, as in the authors' code, instead of leaving first."""
    from branchynet.routing import CRITERIA
    logits = np.array([[np.nan, 1.0, 0.0], [5.0, 0.0, 0.0]], np.float32)
    for name, score in CRITERIA.items():
        values = score(logits)
        assert np.isnan(values[0]) and np.isfinite(values[1]), name
        assert not (values < np.float32(np.inf))[0]
