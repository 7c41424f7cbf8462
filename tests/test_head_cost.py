"""Chainer's type checks skipped after the first input of a shape: the same exits and labels
(the B-LeNet trained by the tests, real MNIST), a wrong input still gets Chainer's error;
the per-part profile of an exit path runs what predict runs and counts its multiply-adds."""
import chainer
import numpy as np
import pytest

from branchynet import net as net_module
from branchynet.flops import exit_path_costs
from branchynet.head_cost import PathProfile, path_parts
from branchynet.routing import entropy
from branchynet.net import Branch, BranchyNet
from branchynet.timing import TrunkOnly, forced_exit_thresholds
from networks import get_network


@pytest.fixture
def checks_every_call():
    net_module.INFERENCE_TYPE_CHECK = True
    yield
    net_module.INFERENCE_TYPE_CHECK = False


def _predict_one_by_one(net, x, thresholds):
    out = [net.predict(x[i:i + 1], thresholds) for i in range(len(x))]
    return np.concatenate([a for a, _ in out]), np.concatenate([b for _, b in out])


def test_skipping_type_checks_keeps_every_exit_and_label(lenet_pair, mnist):
    _, branchy = lenet_pair
    x = mnist.test_x[:300]
    median = float(np.median(entropy(branchy.predict_all_exits(x)[0])))
    for thresholds in ([median], [0.0], [np.inf], [median / 10]):
        net_module.INFERENCE_TYPE_CHECK = True
        try:
            ref = _predict_one_by_one(branchy, x, thresholds)
            ref_batched = branchy.predict(x, thresholds)
        finally:
            net_module.INFERENCE_TYPE_CHECK = False
        assert not branchy.type_check_needed(x[:1])
        fast = _predict_one_by_one(branchy, x, thresholds)
        fast_batched = branchy.predict(x, thresholds)
        for a, b in zip(ref + ref_batched, fast + fast_batched):
            np.testing.assert_array_equal(a, b)
    exits = _predict_one_by_one(branchy, x, [median])[1]
    assert 0 < exits.mean() < 1  # both exits taken at the median


def test_first_input_of_a_shape_is_type_checked():
    fresh = net_module.BranchyNet(get_network("lenet_mnist").build(), main_only=True)
    wrong = np.zeros((1, 3, 28, 28), np.float32)  # LeNet takes one channel
    with pytest.raises(chainer.utils.type_check.InvalidType):
        fresh.predict(wrong, [])
    assert fresh.type_check_needed(wrong)  # a failed input is not remembered
    right = np.zeros((1, 1, 28, 28), np.float32)
    fresh.predict(right, [])
    assert not fresh.type_check_needed(right) and fresh.type_check_needed(wrong)


def test_checks_every_call_flag(lenet_pair, checks_every_call):
    _, branchy = lenet_pair
    branchy.predict(np.zeros((1, 1, 28, 28), np.float32), [0.5])
    assert branchy.type_check_needed(np.zeros((1, 1, 28, 28), np.float32))


def test_path_profile_runs_what_predict_runs(lenet_pair, mnist):
    _, branchy = lenet_pair
    x = mnist.test_x[:40]
    costs = exit_path_costs(branchy, x.shape[1:])
    for n in range(branchy.n_exits):
        profile = PathProfile(branchy, x, n)
        for i in range(len(x)):
            assert profile(i) > 0
        labels, exits = _predict_one_by_one(branchy, x, forced_exit_thresholds(n, 2))
        np.testing.assert_array_equal(profile.labels, labels)
        np.testing.assert_array_equal(profile.exits, exits)
        assert (exits == n).all()
        parts = profile.summary()
        assert [p["kind"] for p in parts] == [k for k, _, _ in path_parts(branchy, n, (1, 28, 28))]
        assert len(parts) == profile.best.shape[0] and np.isfinite(profile.best).all()
        # every multiply-add of the path and of the earlier heads, each counted once
        assert sum(p["macs"] for p in parts) == costs["macs"][n]
        kinds = [p["kind"] for p in parts]
        assert kinds[0] == "set-up" and kinds[-1] == "label"
        assert ("score 1" in kinds) == ("decision 1" in kinds) == True  # noqa: E712
        assert sum(k.startswith("head") for k in set(kinds)) == n + 1


def test_trunk_only_timing_skips_type_checks_after_the_first_call_as_predict_does(
        checks_every_call):
    seen = []

    def trunk_layer(h):  # records Chainer's setting whenever the trunk runs
        seen.append(chainer.config.type_check)
        return h

    net = BranchyNet([trunk_layer, Branch([lambda h: h[:, 0:3]]), trunk_layer,
                      Branch([lambda h: h[:, 3:6]])])
    x = np.random.RandomState(0).randn(4, 6).astype(np.float32)
    run = TrunkOnly(net, x, 1)
    net_module.INFERENCE_TYPE_CHECK = False
    for i in range(4):
        run(i)
    assert seen == [True] * 2 + [False] * 6  # both segments, then neither
    net_module.INFERENCE_TYPE_CHECK = True  # checks on every call, as before
    run(0)
    assert seen[-1] is True
