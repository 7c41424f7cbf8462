"""BranchyNet on real MNIST with weights trained by the test session (see conftest)."""
import branchynet  # noqa: F401
import chainer
import numpy as np
import pytest

from branchynet.net import BranchyNet, JointLoss
from branchynet.training import load_weights, save_weights, train
from networks import get_network

SPEC = get_network("lenet_mnist")


@pytest.mark.parametrize("thresholds", [[0.0], [0.01], [0.1], [0.5], [np.inf]])
def test_decisions_do_not_depend_on_batch_size(lenet_pair, mnist, thresholds):
    _, branchy = lenet_pair
    x = mnist.test_x[:300]
    labels, exits = branchy.predict(x, thresholds)
    one_by_one = [branchy.predict(x[i:i + 1], thresholds) for i in range(len(x))]
    np.testing.assert_array_equal(labels, [l[0] for l, _ in one_by_one])
    np.testing.assert_array_equal(exits, [e[0] for _, e in one_by_one])
    if thresholds == [0.1]:  # a real mix of both exits, not a trivial case
        assert 0 < exits.sum() < len(x)


def test_joint_loss_gradients_reach_every_parameter(mnist):
    np.random.seed(1)
    net = BranchyNet(SPEC.build())
    model = JointLoss(net, weights=[1.0, 0.3])
    model.cleargrads()
    loss = model(mnist.train_x[:16], mnist.train_y[:16])
    loss.backward()
    for name, param in net.namedparams():
        assert param.grad is not None, name
        assert np.abs(param.grad).sum() > 0, name
    # The weighted sum is exactly the joint loss of the paper.
    with chainer.no_backprop_mode():
        logits = net(mnist.train_x[:16])
        expected = sum(w * chainer.functions.softmax_cross_entropy(z, mnist.train_y[:16]).array
                       for w, z in zip([1.0, 0.3], logits))
    assert float(loss.array) == pytest.approx(float(expected), rel=1e-6)


def test_baseline_has_only_the_main_branch():
    net, base = BranchyNet(SPEC.build()), BranchyNet(SPEC.build(), main_only=True)
    assert net.n_exits == 2 and base.n_exits == 1
    names = {n for n, _ in base.namedparams()}
    assert not any(n.startswith("/exit1/") for n in names)
    assert names < {n for n, _ in net.namedparams()}


def test_init_from_baseline_copies_trunk_and_final_exit(lenet_pair, mnist):
    baseline, _ = lenet_pair
    np.random.seed(2)
    net = BranchyNet(SPEC.build())
    side_before = net.exit1[2].W.array.copy()
    net.init_from_baseline(baseline)
    x = mnist.test_x[:64]
    np.testing.assert_array_equal(net.predict_all_exits(x)[1], baseline.predict_all_exits(x)[0])
    np.testing.assert_array_equal(net.exit1[2].W.array, side_before)  # side branch untouched
    # The copy is a copy: training the B-net later leaves the baseline as it was.
    net.trunk[0][0].W.array[...] = 0
    assert np.abs(baseline.trunk[0][0].W.array).sum() > 0


def test_init_from_another_network_is_refused(lenet_pair):
    import chainer.links as L
    from branchynet.net import Branch
    baseline, _ = lenet_pair
    other = BranchyNet([L.Linear(784, 10), Branch([L.Linear(10, 10)])])
    with pytest.raises(ValueError, match="has no counterpart|has shape"):
        other.init_from_baseline(baseline)


def test_save_load_round_trip(lenet_pair, mnist, tmp_path):
    baseline, branchy = lenet_pair
    path = str(tmp_path / "b.npz")
    save_weights(path, branchy)
    np.random.seed(3)
    fresh = load_weights(path, BranchyNet(SPEC.build()))
    x = mnist.test_x[:100]
    for a, b in zip(fresh.predict_all_exits(x), branchy.predict_all_exits(x)):
        np.testing.assert_array_equal(a, b)
    # A baseline file lacks the side branch: loading it into the B-net is a clear error.
    save_weights(str(tmp_path / "base.npz"), baseline)
    with pytest.raises(ValueError, match="does not match this network"):
        load_weights(str(tmp_path / "base.npz"), BranchyNet(SPEC.build()))
    with pytest.raises(FileNotFoundError):
        load_weights(str(tmp_path / "missing.npz"), fresh)


def test_training_resumes_from_the_last_epoch(mnist, tmp_path):
    device = chainer.get_device("@numpy")
    x, y = mnist.train_x[:256], mnist.train_y[:256]
    np.random.seed(4)
    net = BranchyNet(SPEC.build(), main_only=True)
    first = train(net, x, y, 1, 64, str(tmp_path), device, progress=False)
    assert [e["epoch"] for e in first] == [1]
    # A new process would rebuild the net: the snapshot restores weights, optimiser and log.
    np.random.seed(5)
    again = BranchyNet(SPEC.build(), main_only=True)
    log = train(again, x, y, 2, 64, str(tmp_path), device, progress=False)
    assert [e["epoch"] for e in log] == [1, 2]
    assert log[0]["main/loss"] == first[0]["main/loss"]


def test_training_learns(lenet_pair, mnist):
    baseline, branchy = lenet_pair
    x, y = mnist.test_x[:2000], mnist.test_y[:2000]
    base_acc = (baseline.predict(x)[0] == y).mean()
    exit_accs = [(z.argmax(1) == y).mean() for z in branchy.predict_all_exits(x)]
    assert base_acc > 0.9 and min(exit_accs) > 0.8, (base_acc, exit_accs)
