"""ONNX export and early exit on ONNX Runtime (branchynet.deploy, experiments.deploy).

Every exported part is checked against Chainer on real samples, and ONNX Runtime's exits
and labels against ``BranchyNet.predict``: B-LeNet with weights trained here on mnist-5k,
B-AlexNet and B-ResNet-110 initialised, on real CIFAR-10 images. No timing is asserted.
"""
import json
import os

import branchynet  # noqa: F401
import chainer
import numpy as np
import pytest

pytest.importorskip("onnx", reason="the deploy extra is not installed: pip install -e .[deploy]")
pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")

from branchynet.datasets import load_dataset  # noqa: E402
from branchynet.deploy import (DeployError, OnnxBranchyNet, compare_parts,  # noqa: E402
                               export_bnet, read_manifest)
from branchynet.net import BranchyNet  # noqa: E402
from branchynet.routing import entropy  # noqa: E402
from experiments import deploy as cli  # noqa: E402
from networks import get_network  # noqa: E402

# float32 arithmetic in another order: differences relative to the largest output.
RTOL = 1e-5


@pytest.fixture(scope="module")
def lenet_results(tmp_path_factory):
    """A runner results folder: B-LeNet trained here on 1,500 mnist-5k digits (offline)."""
    from experiments.run import main
    out = str(tmp_path_factory.mktemp("deploy") / "lenet")
    main(["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "1500",
          "--test-limit", "300", "--baseline-epochs", "2", "--branchy-epochs", "2",
          "--batch-size", "32", "--timing-samples", "20", "--timing-rounds", "1",
          "--no-progress", "--out", out])
    return out


@pytest.fixture(scope="module")
def cifar(data_dir):
    return load_dataset("cifar10", data_dir, preprocess="standardize", limit=200)


def _trained_lenet(folder):
    from branchynet.training import load_weights
    spec = get_network("lenet_mnist")
    branchy, baseline = BranchyNet(spec.build()), BranchyNet(spec.build(), main_only=True)
    load_weights(os.path.join(folder, "branchynet.npz"), branchy)
    load_weights(os.path.join(folder, "baseline.npz"), baseline)
    return branchy, baseline


def _initialised(name, x):
    """An initialised B-net and baseline; ResNet's BatchNorm statistics set from a real
    batch (with the initial running averages its activations grow without bound)."""
    from benchmarks._common import recalibrate_batchnorm
    np.random.seed(0)
    spec = get_network(name)
    branchy, baseline = BranchyNet(spec.build()), BranchyNet(spec.build(), main_only=True)
    recalibrate_batchnorm(baseline, x, 64)
    branchy.init_from_baseline(baseline)
    recalibrate_batchnorm(branchy, x, 64)
    return branchy, baseline


def _scores(branchy, x):
    return np.stack([entropy(y) for y in branchy.predict_all_exits(x)], axis=1)


def _split_thresholds(scores):
    """Thresholds that send samples out at every exit: medians of the scores there."""
    return [float(np.median(scores[:, n])) for n in range(scores.shape[1] - 1)]


def _check_network(branchy, baseline, x, out):
    """Parts within float32 tolerance, every batch size, and the same exits and labels as
    Chainer at thresholds that use every exit; returns the counts compared."""
    scores = _scores(branchy, x)
    thresholds = _split_thresholds(scores)
    manifest = export_bnet(branchy, baseline, x, out, thresholds=thresholds)
    assert manifest["n_exits"] == branchy.n_exits and manifest["thresholds"] == thresholds
    runtime = OnnxBranchyNet(out)
    parts = compare_parts(branchy, baseline, runtime, x)
    expected = {f"exit{n + 1}" for n in range(branchy.n_exits)} | {"baseline"} | \
        {f"exit{n + 1}.score" for n in range(branchy.n_exits - 1)} | \
        {f"segment{n + 1}" for n in range(branchy.n_exits) if len(branchy.trunk[n])}
    assert set(parts) == expected
    for name, d in parts.items():
        assert d["max_abs"] <= RTOL * max(1.0, d["scale"]), (name, d)
    # The traced batch size is freed: 1, and a size never traced.
    for size in (1, 7):
        for ours, ref in zip(runtime.exit_logits(x[:size]), branchy.predict_all_exits(x[:size])):
            np.testing.assert_allclose(ours, ref, rtol=0, atol=RTOL * max(1, np.abs(ref).max()))
    ref_labels, ref_exits = branchy.predict(x, thresholds)
    near = cli.borderline(scores, thresholds, ref_exits)
    assert near.mean() < 0.05  # the comparison below is about almost every sample
    batched = runtime.predict(x, thresholds)
    one = [runtime.predict(x[i:i + 1], thresholds) for i in range(len(x))]
    graph = [runtime.predict_one(x[i:i + 1], thresholds) for i in range(len(x))]
    for labels, exits in [batched, [np.concatenate(v) for v in zip(*one)],
                          [np.concatenate(v) for v in zip(*graph)]]:
        assert labels.dtype == np.int32 and exits.dtype == np.int32
        differ = (labels != ref_labels) | (exits != ref_exits)
        assert not (differ & ~near).any(), np.flatnonzero(differ & ~near)
    assert set(np.unique(ref_exits)) == set(range(branchy.n_exits))  # every exit was used
    # The baseline graph gives the baseline's labels.
    np.testing.assert_array_equal(runtime.predict_baseline(x), baseline.predict(x, [])[0])
    return manifest


def test_trained_lenet_parts_and_exits_match_chainer(lenet_results, tmp_path):
    branchy, baseline = _trained_lenet(lenet_results)
    x = load_dataset("mnist-5k").test_x[:300]
    manifest = _check_network(branchy, baseline, x, str(tmp_path / "onnx"))
    # The manifest describes the layer list's structure.
    seg = manifest["segments"]
    assert [layer["link"] for layer in seg[0]["layers"]] == ["Convolution2D"]
    assert seg[0]["layers"][0]["params"] == {"W": [5, 1, 5, 5], "b": [5]}
    head = [layer.get("link") or layer["function"] for layer in manifest["exits"][0]["layers"]]
    assert head == ["max_pooling_2d", "relu", "Convolution2D", "max_pooling_2d", "relu", "Linear"]
    assert manifest["exits"][0]["layers"][0]["options"] == {"ksize": 2, "stride": 2}
    assert manifest["criterion"] == "entropy" and manifest["exits"][1]["outputs"] == ["logits"]


@pytest.mark.parametrize("name", ["alexnet_cifar10", "resnet110_cifar10"])
def test_initialised_cifar_nets_parts_and_exits_match_chainer(name, cifar, tmp_path):
    x = cifar.test_x[:64] if name.startswith("alexnet") else cifar.test_x[:24]
    branchy, baseline = _initialised(name, cifar.train_x)
    _check_network(branchy, baseline, x, str(tmp_path / "onnx"))


def test_other_criteria_are_scored_on_the_logits(lenet_results, tmp_path):
    branchy, baseline = _trained_lenet(lenet_results)
    x = load_dataset("mnist-5k").test_x[:200]
    export_bnet(branchy, baseline, x, str(tmp_path), criterion="max-prob")
    runtime = OnnxBranchyNet(str(tmp_path))
    for t in ([0.01], [0.1]):
        ours, ref = runtime.predict(x, t), branchy.predict(x, t, "max-prob")
        assert (ours[1] == ref[1]).mean() > 0.99 and (ours[0] == ref[0]).mean() > 0.99
    with pytest.raises(DeployError, match="decides by entropy"):
        runtime.predict_one(x[:1], [0.1])
    # The in-graph entropy can be replaced by routing's own: the same decisions here.
    np.testing.assert_array_equal(
        OnnxBranchyNet(str(tmp_path)).predict(x, [0.5], "entropy", score_in_graph=False)[1],
        OnnxBranchyNet(str(tmp_path)).predict(x, [0.5], "entropy")[1])


def test_deploy_commands_export_and_time_both_runtimes(lenet_results, capsys):
    assert cli.main(["export", "--results", lenet_results, "--check-samples", "100"]) == 0
    printed = capsys.readouterr().out
    assert "exported B-LeNet (2 exits)" in printed and "0 differ" in printed
    onnx_dir = os.path.join(lenet_results, "onnx")
    with open(os.path.join(onnx_dir, "check.json")) as f:
        check = json.load(f)
    assert set(check["exits"]) == {"batched", "batch_size_1", "composed_graph"}
    assert all(c["differ_elsewhere"] == 0 for c in check["exits"].values())
    manifest = read_manifest(onnx_dir)
    sweep = cli.read_sweep(os.path.join(lenet_results, "sweep_cpu.csv"))
    assert manifest["thresholds"] == sweep["thresholds"][sweep["knee"]]

    assert cli.main(["time", "--results", lenet_results, "--samples", "12", "--rounds", "2",
                     "--block", "4", "--knee-only", "--exit-mix", "0.7", "0.3",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for text in ("Table I rows: LeNet on mnist-5k, Chainer vs ONNX Runtime",
                 "ONNX Runtime, parts: knee", "ONNX Runtime, one graph: knee", "FLOP-ideal gain",
                 "ONNX Runtime, one graph: exit mix", "B-LeNet at exit mix T=",
                 "zero-overhead", "identical at every point"):
        assert text in printed, text
    with open(os.path.join(lenet_results, "deploy_cpu.json")) as f:
        record = json.load(f)
    summary = record["summary"]
    assert set(summary["runtimes"]) == {"chainer", "ort", "ort-1g"}
    assert set(record["summaries"]) == {"knee", "exit mix"}
    mix = record["summaries"]["exit mix"]["exit_fractions"]
    assert mix[0] == pytest.approx(0.7, abs=0.01)  # of all 300 test samples
    # 12 samples in blocks of 4: the first of each block (0, 4, 8) is left out.
    assert record["raw_measurement"]["rounds"] == 2 and record["raw_measurement"]["samples"] == 12
    assert record["measurement"]["samples"] == 9
    assert set(record["block_start_effect"]) == set(record["measurement"]["rounds_ms"])
    # FLOP-ideal gain from the multiply-adds (B-LeNet: 220,150 and 1,140,070 per path).
    f1, f2 = summary["exit_fractions"]
    assert summary["flop_ideal_gain"] == pytest.approx(1_140_070 / (f1 * 220_150 + f2 * 1_140_070))
    for name in ("deploy_table_cpu.csv", "tradeoff_deploy_cpu.png", "tradeoff_deploy_cpu.pdf"):
        assert os.path.getsize(os.path.join(lenet_results, name)) > 0

    # Every figure re-derives from the stored per-sample seconds, and a changed one fails.
    assert cli.main(["recompute", "--results", lenet_results]) == 0
    assert "identical to what deploy_cpu_seconds.npz gives" in capsys.readouterr().out
    path = os.path.join(lenet_results, "deploy_cpu_seconds.npz")
    with np.load(path) as data:
        seconds = {k: data[k] for k in data.files}
    seconds["chainer:baseline"][0, 5] *= 0.5
    np.savez_compressed(path, **seconds)
    assert cli.main(["recompute", "--results", lenet_results]) == 1
    assert "error: " in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["export", "--results", "/nonexistent/folder"], "is not a folder"),
    (["time", "--results", "."], "manifest.json does not exist: export the B-net first"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_is_one_message_and_status_2(tmp_path, monkeypatch, capsys):
    import branchynet.datasets as datasets
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BRANCHYNET_DATA", raising=False)
    monkeypatch.setitem(datasets.LOADERS, "mnist",  # no download attempt
                        lambda data_dir=None, seed=0, **kw: datasets.load_mnist(
                            data_dir, mirrors=("http://127.0.0.1:9/",)))
    (tmp_path / "empty").mkdir()
    folder = os.path.join(os.path.dirname(__file__), "..", "results", "cpu-lenet_mnist-paper")
    before = sorted(os.listdir(folder))
    assert cli.main(["export", "--results", folder, "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err and "--data-dir" in err and "Traceback" not in err
    assert sorted(os.listdir(folder)) == before


def test_a_folder_without_weights_is_refused(lenet_results, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("config.json", "sweep_cpu.csv"):
        (folder / name).write_bytes(open(os.path.join(lenet_results, name), "rb").read())
    assert cli.main(["export", "--results", str(folder)]) == 2
    assert "baseline.npz is missing: train there first" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        cli.main(["time", "--results", str(folder), "--samples", "0"])
    assert err.value.code == 2


def test_cuda_provider_is_refused_clearly_without_it():
    import onnxruntime as ort
    from branchynet.deploy import providers_for
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("cuda")[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(DeployError, match="no CUDAExecutionProvider"):
            providers_for("cuda")


def test_onnx_mapping_shim_gives_onnx_chainer_its_tables():
    import onnx
    from onnx import TensorProto
    import branchynet._onnx_compat  # noqa: F401
    assert onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[np.dtype("float32")] == TensorProto.FLOAT
    assert onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[np.dtype("int64")] == TensorProto.INT64
    assert onnx.mapping.STORAGE_TENSOR_TYPE_TO_FIELD[TensorProto.FLOAT] == "float_data"


def test_a_reshape_across_the_batch_axis_is_refused(tmp_path):
    """The batch size can be freed only where every Reshape keeps axis 0 as the batch."""
    import chainer.functions as F
    from branchynet.deploy import export_link
    flatten_all = chainer.Sequential(lambda h: F.reshape(h, (-1,)))
    x = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(DeployError, match="axis 0 is not the batch axis"):
        export_link(flatten_all, x, str(tmp_path / "bad.onnx"))
    assert not os.path.exists(tmp_path / "bad.onnx")


def test_paper_thresholds_and_exit_subsets_on_both_runtimes(lenet_results, capsys):
    """``time --paper-t`` times Table I's T as a point; ``subsets`` times B-LeNet with both
    exits and with exit 2 alone (exit 1's head never runs) at the baseline's accuracy."""
    from branchynet.sweep import evaluate_grid
    from experiments.experiment import Experiment
    if not os.path.isfile(os.path.join(lenet_results, "onnx", "manifest.json")):
        assert cli.main(["export", "--results", lenet_results, "--check-samples", "20"]) == 0
    assert cli.main(["time", "--results", lenet_results, "--samples", "8", "--rounds", "1",
                     "--block", "4", "--knee-only", "--paper-t", "--no-progress"]) == 0
    with open(os.path.join(lenet_results, "deploy_cpu.json")) as f:
        record = json.load(f)
    exp = Experiment.from_results(lenet_results, log=lambda *a: None)
    exp.load_cached_outputs()
    expected = evaluate_grid(exp.outputs, [[0.025]])
    paper = record["summaries"]["paper's T"]
    assert paper["exit_fractions"] == pytest.approx(expected.exit_fractions[0].tolist())
    assert "T=0.025" in record["points"]
    assert cli.main(["recompute", "--results", lenet_results]) == 0
    capsys.readouterr()

    assert cli.main(["subsets", "--results", lenet_results, "--samples", "8", "--rounds", "1",
                     "--block", "4", "--candidates", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| 1+2 | Chainer |" in printed and "| 2 | ONNX Runtime |" in printed
    with open(os.path.join(lenet_results, "exit_subsets_cpu.json")) as f:
        subsets = json.load(f)
    assert subsets["decisions_differ"] == []
    assert set(subsets["subsets"]) == {"exits 1+2", "exits 2"}
    base = subsets["baseline_accuracy"]
    for name, sub in subsets["subsets"].items():
        for key in ("chainer", "ort"):
            r = sub["runtimes"][key]
            assert len(r["path_ms"]) == len(sub["exits"])
            for c in r["candidates"]:
                assert c["accuracy"] >= base - 1e-12
                assert c["predicted_ms"] == pytest.approx(
                    sum(c["exit_fractions"][e - 1] * m for e, m in zip(sub["exits"], r["path_ms"])))
            best = r["fastest"]
            if best is not None:
                assert best["measured_ms"] == min(c["measured_ms"] for c in r["candidates"])
                if name == "exits 2":
                    assert best["exit_fractions"][0] == 0
    assert os.path.isfile(os.path.join(lenet_results, "onnx", "subsets", "exits-2",
                                       "early_exit.onnx"))
    assert cli.main(["subsets", "--results", lenet_results, "--subsets", "1"]) == 2
    assert "keeps the last exit" in capsys.readouterr().err
