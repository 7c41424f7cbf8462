"""Side by side with the authors' code (experiments.authors, branchynet.authors).

The fixture tests need nothing but the committed ``tests/fixtures/authors_lenet/`` (made
once by ``python -m experiments.authors ... --write-fixture``, see its meta.json): their
B-LeNet weights, their logits, entropies and exit decisions on 300 MNIST test images, and
their losses for a few Adam steps; our implementation must reproduce them. The live tests
run the tool against the authors' code and need Python 2.7, their environment and a
checkout (``$BRANCHYNET_AUTHORS_REPO``); elsewhere they skip with the reason.
"""
import json
import os
import subprocess
import sys

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import numpy as np
import pytest

from branchynet import authors as A
from branchynet.net import BranchyNet
from experiments import authors as tool
from networks import get_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "authors_lenet")


@pytest.fixture(scope="module")
def fixture():
    meta = json.load(open(os.path.join(FIXTURE, "meta.json")))
    return {"meta": meta,
            "weights": A.load_interchange(os.path.join(FIXTURE, "weights.npz")),
            "outputs": A.load_interchange(os.path.join(FIXTURE, "outputs.npz")),
            "training": A.load_interchange(os.path.join(FIXTURE, "training.npz"))}


def _nets(weights):
    spec = get_network("lenet_mnist")
    net = A.from_interchange(BranchyNet(spec.build()), weights, "branchy")
    baseline = A.from_interchange(BranchyNet(spec.build(), main_only=True), weights, "main")
    return net, baseline


def test_fixture_is_small_and_from_their_trained_model(fixture):
    size = sum(os.path.getsize(os.path.join(FIXTURE, f)) for f in os.listdir(FIXTURE))
    assert size < 5e6
    assert fixture["meta"]["network"] == "lenet_mnist"
    assert "trained by their utils.train" in fixture["meta"]["source"]
    assert fixture["meta"]["their_model"]["trunk_copies_equal_main"]


def test_weights_map_both_ways_exactly(fixture):
    net, baseline = _nets(fixture["weights"])
    back = A.to_interchange(net, "branchy")
    back.update(A.to_interchange(baseline, "main"))
    assert set(back) == set(fixture["weights"])
    for key, value in fixture["weights"].items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_their_final_classifier_copy_is_kept_apart(fixture):
    """Their main's final classifier is a copy joint training does not train: after their
    joint epochs it differs from the B-net's final exit, and each side keeps its own."""
    w = fixture["weights"]
    assert not np.array_equal(w["main/exit2/0/W"], w["branchy/exit2/0/W"])
    np.testing.assert_array_equal(w["main/trunk1/2/W"], w["branchy/trunk1/2/W"])
    net, baseline = _nets(w)
    np.testing.assert_array_equal(net.exit2[0].W.array, w["branchy/exit2/0/W"])
    np.testing.assert_array_equal(baseline.exit2[0].W.array, w["main/exit2/0/W"])


def test_logits_and_entropies_match_theirs(fixture):
    out = fixture["outputs"]
    net, baseline = _nets(fixture["weights"])
    ours = net.predict_all_exits(out["x"])
    for n in range(2):
        cmp = A.compare_logits(ours[n], out[f"logits{n + 1}"])
        assert cmp["max_rel"] < tool.LOGIT_RTOL, (n, cmp)
        assert cmp["argmax_equal"] == 1.0
        entropy = A.our_entropies(ours[n])
        assert np.abs(entropy - out[f"entropy{n + 1}"]).max() < tool.ENTROPY_ATOL
    main = baseline.predict_all_exits(out["x"])[0]
    assert A.compare_logits(main, out["main"])["max_rel"] < tool.LOGIT_RTOL


def test_exit_decisions_accuracy_and_counts_match_theirs(fixture):
    out, vectors = fixture["outputs"], fixture["meta"]["vectors"]
    net, _ = _nets(fixture["weights"])
    x, y = out["x"], out["y"]
    entropies = [A.our_entropies(z) for z in net.predict_all_exits(x)]
    assert 0 < (entropies[0] < vectors[0][0]).mean() < 1  # the paper's T splits the samples
    for v, ts in enumerate(vectors):
        exits, correct = [], []
        for i in range(len(x)):  # batch size 1, as their test() was run
            label, exit_ = net.predict(x[i:i + 1], A.our_thresholds(ts))
            exits.append(int(exit_[0]))
            correct.append(int(label[0]) == y[i])
        cmp = A.compare_decisions(exits, out[f"exits_{v}"], entropies, ts, tool.NEAR)
        assert cmp["differ_far"] == 0, (ts, cmp)
        if cmp["differ"] == 0:
            assert np.mean(correct) == out[f"correct_{v}"].mean()
            np.testing.assert_array_equal(np.bincount(exits, minlength=2),
                                          np.bincount(out[f"exits_{v}"], minlength=2))


def test_training_losses_match_theirs(fixture):
    """Same weights, same minibatches, fresh Adam: the baseline phase (from their
    initialisation) and the joint phase (from their trained B-LeNet) give their losses."""
    t = fixture["training"]
    spec = get_network("lenet_mnist")
    baseline = A.from_interchange(BranchyNet(spec.build(), main_only=True),
                                  {k: t[k] for k in t if k.startswith("main/")}, "main")
    ours = A.run_train_steps(baseline, t["x"], t["y"])
    np.testing.assert_allclose(ours, t["theirs_main"], rtol=tool.LOSS_RTOL)
    assert ours[-1, 0] < ours[0, 0]  # training moved the weights
    net, _ = _nets(fixture["weights"])
    ours = A.run_train_steps(net, t["x"], t["y"])
    np.testing.assert_allclose(ours, t["theirs_joint"], rtol=tool.LOSS_RTOL)


def test_training_check_tells_the_paper_text_adam_apart(fixture, monkeypatch):
    """Adam with the paper text's beta1 = 0.99 (their code: Chainer's 0.9) misses their
    losses by far more than the tolerance: the check can see the optimiser's settings."""
    import chainer
    t = fixture["training"]
    adam = chainer.optimizers.Adam
    monkeypatch.setattr(chainer.optimizers, "Adam", lambda alpha: adam(alpha=alpha, beta1=0.99))
    baseline = A.from_interchange(BranchyNet(get_network("lenet_mnist").build(), main_only=True),
                                  {k: t[k] for k in t if k.startswith("main/")}, "main")
    ours = A.run_train_steps(baseline, t["x"], t["y"])
    gap = np.max(np.abs(ours - t["theirs_main"]) / t["theirs_main"])
    assert gap > 10 * tool.LOSS_RTOL, gap


def test_interchange_for_another_network_is_refused(fixture):
    spec = get_network("alexnet_cifar10")
    with pytest.raises(ValueError, match="another network"):
        A.from_interchange(BranchyNet(spec.build()), fixture["weights"], "branchy")


@pytest.mark.parametrize("name", ["lenet_mnist", "alexnet_cifar10", "resnet110_cifar10"])
def test_our_weights_round_trip_through_interchange(name):
    spec = get_network(name)
    for main_only, view in ((False, "branchy"), (True, "main")):
        net = BranchyNet(spec.build(), main_only=main_only)
        arrays = A.to_interchange(net, view)
        other = A.from_interchange(BranchyNet(spec.build(), main_only=main_only), arrays, view)
        for (k, p), (_, q) in zip(sorted(net.namedparams()), sorted(other.namedparams())):
            np.testing.assert_array_equal(p.array, q.array, err_msg=k)


def test_decisions_compare_counts_near_threshold_apart():
    entropies = [np.array([0.5, 0.0250000004, 0.01, 0.9])]
    cmp = A.compare_decisions([1, 0, 0, 1], [1, 1, 0, 0], entropies, [0.025], near=1e-6)
    assert cmp == {"samples": 4, "differ": 2, "differ_near_threshold": 1, "differ_far": 1}


# ---------------------------------------------------------------------------------------
# The command line, without their code


def _run_tool(*args, env=None):
    return subprocess.run([sys.executable, "-m", "experiments.authors", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)


def test_help_describes_the_tool():
    out = _run_tool("--help")
    assert out.returncode == 0
    assert "--authors-repo" in out.stdout and "--timing-samples" in out.stdout


def test_missing_checkout_is_a_clear_error(tmp_path):
    out = _run_tool("--authors-repo", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert "not a checkout of the authors' code" in out.stderr
    assert "git clone https://github.com/kunglab/branchynet" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_python2_is_a_clear_error(tmp_path):
    checkout = tmp_path / "branchynet"
    for f in A.CHECKOUT_FILES:
        (checkout / f).parent.mkdir(parents=True, exist_ok=True)
        (checkout / f).write_text("")
    out = _run_tool("--authors-repo", str(checkout), "--env", str(tmp_path / "env"),
                    "--python2", sys.executable)
    assert out.returncode == 2
    assert "needs Python 2.7" in out.stderr and "--python2" in out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------
# Live: against the authors' code (Python 2.7, their environment, a checkout)


def _live():
    checkout = os.environ.get("BRANCHYNET_AUTHORS_REPO")
    if not checkout:
        pytest.skip("set BRANCHYNET_AUTHORS_REPO to a checkout of github.com/kunglab/branchynet "
                    "(and have Python 2.7) to run the tool against the authors' code")
    try:
        A.check_checkout(checkout)
        A.find_python2()
    except A.AuthorsSetupError as err:
        pytest.skip(str(err))
    env = os.environ.get("BRANCHYNET_AUTHORS_ENV") or A.default_env_dir()
    if not A.env_ready(env):
        pytest.skip(f"the authors' environment {env} is not set up: run "
                    f"`python -m experiments.authors --authors-repo {checkout}` once")
    return checkout, env


def test_live_lenet_their_init_is_equivalent(tmp_path, data_dir):
    checkout, env = _live()
    tool.main(["--authors-repo", checkout, "--env", env, "--data-dir", data_dir,
               "--test-samples", "100", "--route-samples", "30", "--train-steps", "2",
               "--out", str(tmp_path)])
    result = json.load(open(tmp_path / "equivalence.json"))
    assert result["problems"] == []
    assert result["info"]["roundtrip_exact"]
    assert len(result["training"]["joint"]["theirs"]) == 2


def test_live_ours_to_theirs(tmp_path, data_dir):
    from branchynet.training import save_weights
    checkout, env = _live()
    net = BranchyNet(get_network("lenet_mnist").build())
    save_weights(str(tmp_path / "ours.npz"), net)
    tool.main(["--authors-repo", checkout, "--env", env, "--data-dir", data_dir,
               "--weights", str(tmp_path / "ours.npz"), "--test-samples", "50",
               "--train-steps", "0", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "ours_as_theirs.bn").stat().st_size > 0
    result = json.load(open(tmp_path / "out" / "equivalence.json"))
    assert result["info"]["ours_to_theirs_exact"] and result["problems"] == []
    back = A.load_interchange(str(tmp_path / "out" / "theirs_interchange.npz"))
    for key, value in A.to_interchange(net, "branchy").items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("name", ["alexnet_cifar10", "resnet110_cifar10"])
def test_live_cifar_networks_at_their_init(name, tmp_path, data_dir):
    checkout, env = _live()
    if not os.path.isdir(os.path.join(data_dir, "cifar10")):
        pytest.skip(f"no CIFAR-10 under {data_dir}")
    # Their ResNet's BatchNorm variances start at 0 (Chainer 1.17): a few of their own
    # training steps first make its inference finite.
    extra = ["--authors-train-steps", "2", "--train-batch", "8"] if "resnet" in name else []
    tool.main(["--authors-repo", checkout, "--env", env, "--data-dir", data_dir,
               "--network", name, "--test-samples", "10", "--route-samples", "3",
               "--train-steps", "0", "--out", str(tmp_path), *extra])
    assert json.load(open(tmp_path / "equivalence.json"))["problems"] == []


def test_verdict_tells_rounding_from_a_real_difference():
    def row(rel, ours64, theirs64):
        return {"max_rel": rel, "ours_vs_float64": ours64, "theirs_vs_float64": theirs64,
                "nonfinite_ours": 0, "nonfinite_theirs": 0, "entropy_max_abs": 0.0, "entropy_ours_vs_float64": 0.0,
                "entropy_theirs_vs_float64": 0.0}
    routing = [{"differ_far": 0, "thresholds": [0.025]}]
    fine = {"exits": [row(2e-7, 3e-7, 3e-7)], "baseline": row(2e-7, 3e-7, 3e-7), "routing": routing}
    assert tool.verdict(fine, None) == []
    # ill-conditioned outputs: both float32 results equally far from float64
    sensitive = dict(fine, exits=[row(2e-4, 1.5e-4, 2e-4)])
    assert tool.verdict(sensitive, None) == []
    wrong = dict(fine, exits=[row(2e-2, 3e-7, 2e-2)])
    assert "more than float32 rounding explains" in tool.verdict(wrong, None)[0]
    far = dict(fine, routing=[{"differ_far": 2, "thresholds": [0.025]}])
    assert "2 exit decision(s) differ" in tool.verdict(far, None)[0]
    nan = dict(fine, exits=[dict(row(float("nan"), 0.0, 0.0), nonfinite_ours=0, nonfinite_theirs=3)])
    assert "not finite for 3 sample(s) of theirs" in tool.verdict(nan, None)[0]


def test_live_not_a_model_is_a_clear_error(tmp_path, data_dir):
    checkout, env = _live()
    bogus = tmp_path / "bogus.bn"
    bogus.write_text("not a model")
    out = _run_tool("--authors-repo", checkout, "--env", env, "--data-dir", data_dir,
                    "--model", str(bogus), "--test-samples", "10", "--out", str(tmp_path / "o"))
    assert out.returncode == 1
    assert "is not a model saved by their code" in out.stderr


def test_batchnorm_variance_follows_their_convention():
    """Their Chainer 1.17 BatchNorm divides by sqrt(avg_var) at inference (eps is inside
    their avg_var); ours divides by sqrt(avg_var + eps): the interchange is theirs, and
    loading it reproduces their normalisation."""
    import chainer
    spec = get_network("resnet110_cifar10")
    net = BranchyNet(spec.build())
    arrays = A.to_interchange(net, "branchy")
    bn = net.trunk[0][1]
    rng = np.random.RandomState(0)
    theirs_var = rng.uniform(1e-4, 2.0, 16).astype(np.float32)
    theirs_mean = rng.randn(16).astype(np.float32)
    arrays["branchy/trunk0/1/avg_var"] = theirs_var
    arrays["branchy/trunk0/1/avg_mean"] = theirs_mean
    A.from_interchange(net, arrays, "branchy")
    x = rng.randn(2, 16, 4, 4).astype(np.float32)
    with chainer.using_config("train", False):
        ours = bn(x).array
    g, b = bn.gamma.array[None, :, None, None], bn.beta.array[None, :, None, None]
    theirs = g * (x - theirs_mean[None, :, None, None]) / np.sqrt(theirs_var)[None, :, None, None] + b
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)
    back = A.to_interchange(net, "branchy")
    assert A.same_arrays(back, arrays)
    np.testing.assert_allclose(back["branchy/trunk0/1/avg_var"] - bn.avg_var, bn.eps, atol=5e-7)
